"""The client's-own-database fixtures do what they promise (``external_databases.py``).

The reader that docs/databases.md makes can read and cannot write on both servers; TLS is
on (PostgreSQL: ``require`` shows in ``pg_stat_ssl``, ``verify-full`` passes with the test CA
and fails with another; MariaDB: ``VERIFY_CA``/``VERIFY_IDENTITY`` give a cipher); the
certificate users log in only with the right client certificate; Sakila holds its rows,
tables, views and foreign keys on both, and the views answer alike; servers stop leaving no
process behind, and a second pair starts beside the first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import MySQLdb
import psycopg2
import pytest
import sqlalchemy as sa
from dataexec_testing.external_mariadb import ExternalMariaDB, start_external_mariadb
from dataexec_testing.external_pg import ExternalPostgres, start_external_pg
from dataexec_testing.sakila import COUNTS, FOREIGN_KEYS, TABLES, VIEW_NAMES, VIEWS, Sakila
from dataexec_testing.servers import leftover_pids
from dataexec_testing.tls import TlsFiles

PG_DRIVER = "postgresql+psycopg2"  # a bare postgresql:// means psycopg 3 to SQLAlchemy 2.1
FOREIGN_KEYS_SQL = {
    "mysql": "SELECT count(*) FROM information_schema.referential_constraints"
    " WHERE constraint_schema = %s",
    # PostgreSQL's information_schema.table_constraints hides the constraints of tables on
    # which a role has SELECT only: the catalog shows them
    "postgresql": "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n"
    " ON n.oid = c.connamespace WHERE c.contype = 'f' AND n.nspname = %s",
}


@contextmanager
def connected(url: sa.URL) -> Iterator[sa.Connection]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def scalar(url: sa.URL, sql: str) -> Any:
    with connected(url) as conn:
        return conn.exec_driver_sql(sql).scalar()


def test_pg_reader_reads_and_cannot_write(external_pg: ExternalPostgres) -> None:
    with connected(external_pg.reader_url(drivername=PG_DRIVER)) as conn:
        assert conn.exec_driver_sql('SELECT count(*) FROM sales."Orders"').scalar() == 8
        assert conn.exec_driver_sql("SELECT count(*) FROM vip_customers").scalar() == 2
        assert conn.exec_driver_sql("SHOW default_transaction_read_only").scalar() == "on"
        assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "UTC"
        assert [r["usename"] for r in external_pg.activity(external_pg.reader.user)] == [
            external_pg.reader.user
        ]
        with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
            conn.exec_driver_sql("INSERT INTO products VALUES (9, 'x', 1, false)")
        conn.rollback()
        # a read-write transaction asked for explicitly: the privileges still say no
        conn.exec_driver_sql("SET TRANSACTION READ WRITE")
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            conn.exec_driver_sql("INSERT INTO products VALUES (9, 'x', 1, false)")
    assert external_pg.admin("SELECT count(*) FROM products") == [(4,)]


def test_pg_tls_require_and_verify_full(external_pg: ExternalPostgres, db_tls: TlsFiles) -> None:
    own_ssl = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    assert scalar(external_pg.reader_url("require", drivername=PG_DRIVER), own_ssl) is True
    assert scalar(external_pg.reader_url("disable", drivername=PG_DRIVER), own_ssl) is False
    verified = external_pg.reader_url("verify-full", drivername=PG_DRIVER)
    assert verified.query["sslrootcert"] == str(db_tls.ca_cert)
    assert scalar(verified, own_ssl) is True
    wrong = external_pg.reader_url("verify-full", ca=db_tls.wrong_ca_cert, drivername=PG_DRIVER)
    with pytest.raises(sa.exc.OperationalError, match="certificate verify failed"):
        scalar(wrong, "SELECT 1")
    # the certificate user: the test client certificate, no password
    assert scalar(external_pg.certuser_url(drivername=PG_DRIVER), "SELECT current_user") == (
        "dataexec_certuser"
    )
    with pytest.raises(psycopg2.OperationalError):
        with external_pg.connect(external_pg.certuser, sslmode="require"):
            pass  # no client certificate


def test_mariadb_reader_reads_and_cannot_write(external_mariadb: ExternalMariaDB) -> None:
    db = external_mariadb
    with connected(db.reader_url()) as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM `Orders`").scalar() == 8
        assert conn.exec_driver_sql("SELECT count(*) FROM vip_customers").scalar() == 2
        note = conn.exec_driver_sql("SELECT note FROM `Orders` WHERE order_id = 106").scalar()
        assert note == "Ünïcødé ✓"
        assert conn.exec_driver_sql("SELECT @@time_zone").scalar() == "UTC"
        assert conn.exec_driver_sql("SELECT @@max_statement_time").scalar() == 100
        grants = [row[0] for row in conn.exec_driver_sql("SHOW GRANTS")]
        assert "GRANT SELECT, SHOW VIEW ON `analytics`.* TO `dataexec_reader`@`%`" in grants
        assert [p["user"] for p in db.processlist(db.reader.user)] == [db.reader.user]
        with pytest.raises(sa.exc.OperationalError, match="INSERT command denied"):
            conn.exec_driver_sql("INSERT INTO products VALUES (9, 'x', 1, 0)")
    assert db.admin("SELECT count(*) FROM products") == [(4,)]


@pytest.mark.parametrize("ssl_mode", ["VERIFY_CA", "VERIFY_IDENTITY"])
def test_mariadb_tls(external_mariadb: ExternalMariaDB, db_tls: TlsFiles, ssl_mode: str) -> None:
    db = external_mariadb
    cipher = "SHOW STATUS LIKE 'Ssl_cipher'"
    with connected(db.reader_url(ssl_mode)) as conn:
        assert conn.exec_driver_sql(cipher).one()[1]
    with connected(db.reader_url()) as conn:  # TLS is offered, not required
        assert not conn.exec_driver_sql(cipher).one()[1]
    with pytest.raises(sa.exc.OperationalError, match="(?i)certificate|SSL|TLS"):
        scalar(db.reader_url(ssl_mode, ca=db_tls.wrong_ca_cert), "SELECT 1")
    assert scalar(db.certuser_url(ssl_mode), "SELECT current_user()").startswith(
        "dataexec_certuser@"
    )
    with pytest.raises(MySQLdb.OperationalError, match="Access denied"):
        with db.connect(db.certuser, ssl_mode=ssl_mode):
            pass  # no client certificate


def test_reader_env_names_the_replaced_systems_settings(
    external_pg: ExternalPostgres, external_mariadb: ExternalMariaDB
) -> None:
    keys = {"DB_DIALECT", "DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME"}
    pg, maria = external_pg.reader_env(), external_mariadb.reader_env("VERIFY_IDENTITY")
    assert set(pg) == keys and pg["DB_DIALECT"] == "postgresql"
    assert set(maria) == keys | {"DB_SSL_MODE", "DB_SSL_ROOT_CERT"}
    assert maria["DB_DIALECT"] == "mysql" and maria["DB_PORT"] == str(external_mariadb.port)
    assert external_pg.reader_env("verify-full")["DB_SSL_ROOT_CERT"] == str(external_pg.tls.ca_cert)


@pytest.mark.parametrize("fixture", ["sakila_mariadb", "sakila_postgres"])
def test_sakila_as_the_reader_sees_it(request: pytest.FixtureRequest, fixture: str) -> None:
    sakila: Sakila = request.getfixturevalue(fixture)
    kwargs = {"drivername": PG_DRIVER} if sakila.dialect == "postgresql" else {}
    with connected(sakila.reader_url(**kwargs)) as conn:
        for table, rows in COUNTS.items():
            assert conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar() == rows
        found = conn.exec_driver_sql(
            "SELECT table_type, count(*) FROM information_schema.tables"
            f" WHERE table_schema = '{sakila.schema}' GROUP BY table_type"
        )
        assert dict(found.all()) == {"BASE TABLE": TABLES, "VIEW": VIEWS}
        assert conn.exec_driver_sql(
            FOREIGN_KEYS_SQL[sakila.dialect], (sakila.schema,)
        ).scalar() == (FOREIGN_KEYS)
        assert conn.exec_driver_sql("SELECT count(*) FROM actor_info").scalar() == 200
    assert sakila.reader_env()["DB_NAME"] == "sakila"


def test_sakila_views_answer_alike(sakila_mariadb: Sakila, sakila_postgres: Sakila) -> None:
    queries = {view: f"SELECT count(*) FROM {view}" for view in VIEW_NAMES}
    queries["sales"] = "SELECT store, manager, total_sales FROM sales_by_store ORDER BY 1"
    queries["actor 1"] = "SELECT film_info FROM actor_info WHERE actor_id = 1"
    queries["film 1"] = "SELECT actors, category, price FROM film_list WHERE fid = 1"
    answers = []
    for sakila, kwargs in ((sakila_mariadb, {}), (sakila_postgres, {"drivername": PG_DRIVER})):
        with connected(sakila.reader_url(**kwargs)) as conn:
            answers.append({k: conn.exec_driver_sql(q).all() for k, q in queries.items()})
    assert answers[0] == answers[1]


def test_second_servers_start_beside_the_first_and_stop_clean(
    tmp_path: Path,
    db_tls: TlsFiles,
    external_pg: ExternalPostgres,
    external_mariadb: ExternalMariaDB,
) -> None:
    pg = start_external_pg(tmp_path / "pg", db_tls)
    try:
        maria = start_external_mariadb(tmp_path / "mariadb", db_tls)
        try:
            assert len({pg.port, maria.port, external_pg.port, external_mariadb.port}) == 4
            assert leftover_pids(tmp_path / "pg") and leftover_pids(tmp_path / "mariadb")
            assert scalar(maria.reader_url("VERIFY_IDENTITY"), "SELECT count(*) FROM products")
            assert scalar(pg.reader_url("verify-full", drivername=PG_DRIVER), "SELECT 1") == 1
        finally:
            maria.stop()
    finally:
        pg.stop()
    assert leftover_pids(tmp_path / "pg") == []
    assert leftover_pids(tmp_path / "mariadb") == []
