"""The client's own databases, as session fixtures (a plugin): issue 11's real servers.

This module owns the fixtures ``db_tls`` (the test PKI: ``tls.TlsFiles``),
``external_pg`` (a PostgreSQL cluster with TLS, ``external_pg.ExternalPostgres``),
``external_mariadb`` (a MariaDB server with TLS, ``external_mariadb.ExternalMariaDB``),
``sakila_mariadb`` and ``sakila_postgres`` (Sakila loaded into each, ``sakila.Sakila``).
Each server holds the small ``analytics`` database of ``sample_tables`` and the reader
docs/databases.md tells operators to make. Like ``database.py``, nothing starts until a test
asks, each starts once per run, and each server is stopped at the end of the run; a server
that leaves a process behind fails its teardown (``servers.leftover_pids``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dataexec_testing.servers import READER, leftover_pids
from dataexec_testing.tls import TlsFiles, make_tls_files

# The server modules are imported by the fixtures that use them: registering this plugin
# (every run, tests/unit too) then needs neither MySQLdb nor the servers' binaries.
if TYPE_CHECKING:
    from dataexec_testing.external_mariadb import ExternalMariaDB
    from dataexec_testing.external_pg import ExternalPostgres
    from dataexec_testing.sakila import Sakila


@pytest.fixture(scope="session")
def db_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A test CA, server certificate (localhost, 127.0.0.1), client certificate (CN
    ``dataexec_reader``) and a wrong CA with its own client certificate."""
    return make_tls_files(tmp_path_factory.mktemp("db-tls"), client_cn=READER)


@pytest.fixture(scope="session")
def external_pg(
    tmp_path_factory: pytest.TempPathFactory, db_tls: TlsFiles
) -> Iterator[ExternalPostgres]:
    """A started PostgreSQL cluster (not the embedded one) with ``analytics`` and the reader."""
    from dataexec_testing.external_pg import start_external_pg

    directory = tmp_path_factory.mktemp("external-pg")
    pg = start_external_pg(directory, db_tls)
    try:
        yield pg
    finally:
        pg.stop()
        _no_leftovers("external PostgreSQL", directory)


@pytest.fixture(scope="session")
def external_mariadb(
    tmp_path_factory: pytest.TempPathFactory, db_tls: TlsFiles
) -> Iterator[ExternalMariaDB]:
    """A started MariaDB server with ``analytics`` and the reader."""
    from dataexec_testing.external_mariadb import start_external_mariadb

    directory = tmp_path_factory.mktemp("external-mariadb")
    db = start_external_mariadb(directory, db_tls)
    try:
        yield db
    finally:
        db.stop()
        _no_leftovers("external MariaDB", directory)


@pytest.fixture(scope="session")
def sakila_mariadb(external_mariadb: ExternalMariaDB) -> Sakila:
    """Sakila in the MariaDB server (database ``sakila``), the reader granted SELECT."""
    from dataexec_testing.sakila import load_mariadb

    return load_mariadb(external_mariadb)


@pytest.fixture(scope="session")
def sakila_postgres(
    tmp_path_factory: pytest.TempPathFactory,
    external_pg: ExternalPostgres,
    sakila_mariadb: Sakila,
) -> Sakila:
    """Sakila in the PostgreSQL cluster (database and schema ``sakila``, copied from the
    MariaDB one by pgloader, with PostgreSQL versions of its views), the reader granted
    SELECT."""
    from dataexec_testing.external_mariadb import ExternalMariaDB
    from dataexec_testing.sakila import load_postgres

    assert isinstance(sakila_mariadb.server, ExternalMariaDB)
    return load_postgres(external_pg, sakila_mariadb.server, tmp_path_factory.mktemp("pgloader"))


def _no_leftovers(what: str, directory: Path) -> None:
    pids = leftover_pids(directory)
    if pids:
        raise AssertionError(f"the {what} left processes running: {pids}")
