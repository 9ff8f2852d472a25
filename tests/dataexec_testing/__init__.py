"""Helpers that DataExec's tests share, importable as ``dataexec_testing`` (pytest puts
``tests/`` on the path: ``pythonpath`` in pyproject.toml).

- ``api``: servers over real sockets and the calls tests make against them (import it);
- ``fixtures``: the shared server, a client and a session id (a pytest plugin);
- ``database``: the embedded PostgreSQL of the whole run (a pytest plugin);
- ``plain_kernel``: a plain ipykernel outside DataExec, with the client package installed;
- ``guard_cases``: the SQL the guard must refuse, with its reason (the guard's own tests
  and the end-to-end ones share it);
- ``serve``: ``dataexec serve`` in a process of its own, as an operator starts it;
- ``external_databases``: "the client's own database" (a plugin): a PostgreSQL with TLS
  (``external_pg``), a MariaDB (``external_mariadb``), the Sakila sample on both
  (``sakila``), their certificates (``tls``), sample rows (``sample_tables``), the
  docs' role SQL (``role_sql``) and what the servers share (``servers``).

``tests/conftest.py`` registers the plugins, so every test module has their fixtures.
"""
