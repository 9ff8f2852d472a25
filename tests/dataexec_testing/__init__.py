"""Helpers that DataExec's tests share, importable as ``dataexec_testing`` (pytest puts
``tests/`` on the path: ``pythonpath`` in pyproject.toml).

- ``api``: servers over real sockets and the calls tests make against them (import it);
- ``fixtures``: the shared server, a client and a session id (a pytest plugin);
- ``database``: the embedded PostgreSQL of the whole run (a pytest plugin);
- ``plain_kernel``: a plain ipykernel outside DataExec, with the client package installed;
- ``guard_cases``: the SQL the guard must refuse, with its reason (the guard's own tests
  and the end-to-end ones share it).

``tests/conftest.py`` registers the two plugins, so every test module has their fixtures.
"""
