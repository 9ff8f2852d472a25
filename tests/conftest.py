"""Registers the shared fixtures; the helpers themselves live in ``dataexec_testing``.

``dataexec_testing.fixtures`` gives ``api`` (one real server per sandbox, shared by the whole
run), ``client`` and ``session_id``; ``dataexec_testing.database`` gives the embedded
PostgreSQL (``embedded_pg``, ``query_engine``, ``admin_engine``);
``dataexec_testing.external_databases`` gives the client's own databases (``db_tls``,
``external_pg``, ``external_mariadb``, ``sakila_mariadb``, ``sakila_postgres``). Test
modules import what they call from ``dataexec_testing.api``. Tests under ``tests/unit`` use
none of these: they need no root, no PostgreSQL, no kernels and no Docker.
"""

pytest_plugins = [
    "dataexec_testing.fixtures",
    "dataexec_testing.database",
    "dataexec_testing.external_databases",
]
