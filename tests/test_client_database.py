"""The client's own database: a second PostgreSQL and a MariaDB, started by the tests.

Both hold the same small ``analytics`` database (``dataexec_testing.sample_tables``) and a
reader made with docs/databases.md's own SQL. DataExec reaches them the ways an operator
would: the replaced system's ``DB_*`` variables given to ``dataexec serve`` in a process of
its own (in both sandboxes), or ``database_url``; TLS through ``DB_SSL_*``. The checks: the
whole API and the in-kernel ``sql()``/``conn``/``%%sql``; TLS seen by the server
(``pg_stat_ssl``, MariaDB's session cipher); verification failures as DATABASE_UNAVAILABLE
that say why without the password; MariaDB's guard refusals with the rows unchanged, the
read-only transaction below the guard, and time limits and cancellation seen in the
server's process list.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dataexec_testing.api import (
    OPERATOR,
    SANDBOXES,
    assert_error,
    docker_missing,
    docker_ready,
    make_settings,
    ok,
    run,
    start_server,
    wait_for,
)
from dataexec_testing.external_mariadb import ExternalMariaDB
from dataexec_testing.external_pg import ExternalPostgres
from dataexec_testing.guard_cases import MYSQL_REJECTED
from dataexec_testing.serve import serve_env, start_serve
from dataexec_testing.tls import TlsFiles

from server.config import load_settings, with_default_tenant
from server.errors import SqlNotAllowed
from server.sql.database import QueryDatabase

TOKEN = "client-database-token-0123456789"
SMALL = """
[pools.default]
min_idle = 0
max_kernels = 2
"""
# Slow, and allowed by the guard: MariaDB's sequence engine, PostgreSQL's generate_series.
SLOW = {
    "mariadb": "SELECT SUM(a.seq * b.seq) AS s FROM seq_1_to_100000 a, seq_1_to_100000 b",
    "postgresql": "SELECT count(*) AS n FROM generate_series(1, 10000000000) g",
}
# How each database names the tables of the sample (PostgreSQL keeps Orders in "sales").
ORDERS = {"mariadb": "Orders", "postgresql": "sales.Orders"}
QUOTED_ORDERS = {"mariadb": "`Orders`", "postgresql": 'sales."Orders"'}


def database(request: pytest.FixtureRequest, dialect: str) -> Any:
    return request.getfixturevalue("external_mariadb" if dialect == "mariadb" else "external_pg")


def url_of(server: ExternalPostgres | ExternalMariaDB, **kwargs: Any) -> str:
    return server.reader_url(**kwargs).render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def dataexec(tmp_path: Path, **env: str) -> AsyncIterator[httpx.AsyncClient]:
    """A DataExec server in this process (bubblewrap) with ``env``; a client of it."""
    settings = make_settings(tmp_path, SMALL, DATAEXEC_TOKEN=TOKEN, **env)
    server = await start_server(with_default_tenant(settings))
    try:
        async with server.client(TOKEN) as client:
            yield client
    finally:
        await server.stop()


async def sql(client: httpx.AsyncClient, query: str, **extra: Any) -> httpx.Response:
    return await client.post("/execute", json={"language": "sql", "code": query, **extra})


async def check_whole_api(client: httpx.AsyncClient, dialect: str, session: str) -> None:
    """/health, /schema, a profile, SQL, and Python with sql(), conn and %%sql."""
    health = (await client.get("/health", headers=OPERATOR)).json()
    assert health["status"] == "ok"
    assert health["database"]["path"] == (
        "MariaDB and MySQL" if dialect == "mariadb" else "PostgreSQL"
    )
    tables = {t["name"]: t for t in (await client.get("/schema")).json()["schema"]["tables"]}
    orders = tables[ORDERS[dialect]]
    assert {"customers", "products", "vip_customers", ORDERS[dialect]} <= set(tables)
    assert tables["vip_customers"]["kind"] == "view"
    assert orders["primary_key"] == ["order_id"]
    assert {fk["references"]["table"] for fk in orders["foreign_keys"]} == {
        "customers",
        "products",
    }
    assert tables["customers"]["row_estimate"] is not None

    profile = (await client.get("/schema/customers/profile")).json()
    assert profile["row_count"] == 5
    referrals = next(c for c in profile["columns"] if c["name"] == "referrals")
    assert referrals["null_count"] == 2 and referrals["max"] == 7

    response = await sql(
        client,
        f"SELECT c.name, SUM(o.amount) AS total FROM {QUOTED_ORDERS[dialect]} o "
        "JOIN customers c ON c.id = o.customer_id GROUP BY c.name ORDER BY total DESC",
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["data"]["columns"] == ["name", "total"]
    assert answer["data"]["rows"][0] == ["Ken Thompson", 1234567.89]

    step = await ok(
        client,
        session,
        f"orders = sql('SELECT * FROM {QUOTED_ORDERS[dialect]} WHERE amount > :least "
        "ORDER BY order_id', {'least': 40})\n"
        "orders[['order_id', 'amount', 'note']]",
    )
    assert [row[0] for row in step["data"]["rows"]] == [101, 102, 104, 106]
    assert step["data"]["rows"][3][2] == "Ünïcødé ✓"
    step = await ok(
        client, session, "pd.read_sql('SELECT name FROM vip_customers ORDER BY id', conn)"
    )
    assert step["data"]["rows"] == [["Ada Lovelace"], ["Grace Hopper"]]
    step = await ok(client, session, "%%sql paid\nSELECT COUNT(*) AS n FROM customers")
    assert step["data"]["rows"] == [[5]]
    assert await value_of_step(client, session, "int(paid['n'][0]) + len(orders)") == 9


async def value_of_step(client: httpx.AsyncClient, session: str, expression: str) -> Any:
    return (await ok(client, session, expression))["data"]["rows"][0][0]


# --- the replaced system's settings, as an operator gives them ------------------------------


@pytest.mark.parametrize("sandbox", SANDBOXES)
@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
async def test_db_settings_as_the_replaced_system_documents_them(
    request: pytest.FixtureRequest, tmp_path: Path, dialect: str, sandbox: str
) -> None:
    server = database(request, dialect)
    name, _, runtime = sandbox.partition("-")  # "docker-runsc": gVisor's runtime
    env = {**serve_env(tmp_path), **server.reader_env(), "DATAEXEC_SANDBOX": name}
    env["DATAEXEC_POOLS__DEFAULT__MIN_IDLE"] = "0"
    if runtime:
        env["DATAEXEC_POOLS__DEFAULT__DOCKER_RUNTIME"] = runtime
    if name == "docker" and not docker_ready(load_settings(env=env)):
        # fails instead where Docker is required (CI, DATAEXEC_REQUIRE_DOCKER=1)
        docker_missing("no Docker engine or kernel image")
    served = await start_serve(env)
    try:
        async with served.client(timeout=60) as client:
            assert (await client.get("/health", headers=OPERATOR)).json()["sandbox"] == name
            await check_whole_api(client, dialect, f"db-{dialect}-{sandbox}")
    finally:
        assert await served.stop() == 0


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
async def test_database_url_reaches_the_same_database(
    request: pytest.FixtureRequest, tmp_path: Path, dialect: str
) -> None:
    server = database(request, dialect)
    url = url_of(server)
    if dialect == "mariadb":
        url = url.replace("mysql+mysqldb://", "mariadb://")  # a bare URL, the other name
    assert "+" not in url.split("://")[0]
    async with dataexec(tmp_path, DATAEXEC_DATABASE_URL=url) as client:
        await check_whole_api(client, dialect, f"url-{dialect}")


def test_a_driver_that_is_not_installed_is_a_config_error_not_a_traceback(
    tmp_path: Path,
) -> None:
    env = {**serve_env(tmp_path), "DATAEXEC_DATABASE_URL": "postgresql+psycopg://u:pw1@h/db"}
    for command in (["check-config"], ["serve"]):
        result = subprocess.run(
            [sys.executable, "-m", "server", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert "database_url: the driver of 'postgresql+psycopg' is not installed" in (
            result.stderr
        )
        assert "Traceback" not in result.stderr and "pw1" not in result.stderr


# --- TLS ------------------------------------------------------------------------------------


async def test_postgresql_require_encrypts_every_connection_of_ours(
    external_pg: ExternalPostgres, tmp_path: Path
) -> None:
    reader = external_pg.reader.user
    for mode, encrypted in (("require", True), ("disable", False)):
        env = {**external_pg.reader_env(), "DB_SSL_MODE": mode}
        async with dataexec(tmp_path, **env) as client:
            health = (await client.get("/health", headers=OPERATOR)).json()
            assert health["database"]["tls"] == mode
            # ADBC (no parameters), psycopg2 (parameters, /schema) and a kernel's sql()
            assert (await sql(client, "SELECT 1 AS one")).status_code == 200
            response = await sql(client, "SELECT :x AS x", params={"x": 1})
            assert response.status_code == 200
            assert (await client.get("/schema")).status_code == 200
            await ok(client, f"tls-{mode}", "sql('SELECT 2 AS two')")
            backends = external_pg.activity(user=reader)
            assert backends, "DataExec keeps its connections pooled"
            assert {b["ssl"] for b in backends} == {encrypted}, backends


async def test_postgresql_verify_full_right_and_wrong(
    external_pg: ExternalPostgres, db_tls: TlsFiles, tmp_path: Path
) -> None:
    password = external_pg.reader.password
    assert password
    right = {**external_pg.reader_env(), "DB_SSL_MODE": "verify-full"}
    right["DB_SSL_ROOT_CERT"] = str(db_tls.ca_cert)
    async with dataexec(tmp_path, **right) as client:
        assert (await sql(client, "SELECT 1 AS one")).json()["data"]["rows"] == [[1]]
        assert (await client.get("/schema")).status_code == 200

    wrong_ca = {**right, "DB_SSL_ROOT_CERT": str(db_tls.wrong_ca_cert)}
    # The certificate names localhost and 127.0.0.1; this name reaches the same address.
    wrong_host = (
        url_of(external_pg).replace("@127.0.0.1:", "@db.wrong-name.example:")
        + "?hostaddr=127.0.0.1"
    )
    cases = [
        (wrong_ca, "certificate verify failed"),
        (
            {
                "DATAEXEC_DATABASE_URL": wrong_host,
                "DB_SSL_MODE": "verify-full",
                "DB_SSL_ROOT_CERT": str(db_tls.ca_cert),
            },
            "does not match host name",
        ),
    ]
    for env, why in cases:
        async with dataexec(tmp_path, **env) as client:
            for response in (
                await sql(client, "SELECT 1 AS one"),
                await sql(client, "SELECT :x AS x", params={"x": 1}),
                await client.get("/schema"),
            ):
                detail = assert_error(response, 503, "DATABASE_UNAVAILABLE")
                assert why in detail["message"], detail
                assert password not in response.text
            step = await run(client, "tls-wrong", "sql('SELECT 1')")
            assert step.status_code == 503 and why in step.text and password not in step.text


async def test_postgresql_client_certificate_login(
    external_pg: ExternalPostgres, db_tls: TlsFiles, tmp_path: Path
) -> None:
    url = external_pg.certuser_url(sslmode="disable").render_as_string(hide_password=False)
    env = {
        "DATAEXEC_DATABASE_URL": url,
        "DB_SSL_MODE": "verify-full",
        "DB_SSL_ROOT_CERT": str(db_tls.ca_cert),
        "DB_SSL_CERT": str(db_tls.client_cert),
        "DB_SSL_KEY": str(db_tls.client_key),
    }
    async with dataexec(tmp_path, **env) as client:
        response = await sql(client, "SELECT current_user AS who")
        assert response.json()["data"]["rows"] == [[external_pg.certuser.user]]


async def test_mariadb_verify_full_encrypts_and_a_wrong_ca_is_refused(
    external_mariadb: ExternalMariaDB, db_tls: TlsFiles, tmp_path: Path
) -> None:
    env = {**external_mariadb.reader_env(), "DB_SSL_MODE": "verify-full"}
    env["DB_SSL_ROOT_CERT"] = str(db_tls.ca_cert)
    cipher = (
        "SELECT VARIABLE_VALUE AS cipher FROM information_schema.SESSION_STATUS "
        "WHERE VARIABLE_NAME = 'SSL_CIPHER'"
    )
    async with dataexec(tmp_path, **env) as client:
        [[value]] = (await sql(client, cipher)).json()["data"]["rows"]
        assert value, "the session is encrypted"
    async with dataexec(tmp_path, **external_mariadb.reader_env()) as client:
        health = (await client.get("/health", headers=OPERATOR)).json()
        assert health["database"]["tls"] == "driver default"
    password = external_mariadb.reader.password
    assert password
    async with dataexec(tmp_path, **{**env, "DB_SSL_ROOT_CERT": str(db_tls.wrong_ca_cert)}) as c:
        response = await sql(c, "SELECT 1 AS one")
        detail = assert_error(response, 503, "DATABASE_UNAVAILABLE")
        assert "TLS" in detail["message"] or "SSL" in detail["message"], detail
        assert password not in response.text


# --- MariaDB: the guard, read-only below it, time and cancel ----------------------------------


@pytest.fixture
def mariadb_t(external_mariadb: ExternalMariaDB) -> list[tuple[Any, ...]]:
    """A table ``t`` (the guard cases' target) in ``analytics``, with its rows."""
    external_mariadb.admin("DROP TABLE IF EXISTS t", database="analytics")
    external_mariadb.admin("CREATE TABLE t (a INT PRIMARY KEY, b TEXT)", database="analytics")
    external_mariadb.admin("INSERT INTO t VALUES (1, 'one'), (2, 'two')", database="analytics")
    return list(external_mariadb.admin("SELECT * FROM t ORDER BY a", database="analytics"))


async def test_mariadb_guard_refusals_leave_the_rows_unchanged(
    external_mariadb: ExternalMariaDB, mariadb_t: list[tuple[Any, ...]], tmp_path: Path
) -> None:
    async with dataexec(tmp_path, **external_mariadb.reader_env()) as client:
        for case in MYSQL_REJECTED:
            query, reason = case.values
            response = await sql(client, str(query))
            detail = assert_error(response, 400, "SQL_NOT_ALLOWED")
            assert str(reason).lower() in detail["message"].lower(), (query, detail)
        step = await run(client, "guard", "sql(\"SELECT * FROM t INTO OUTFILE '/tmp/x'\")")
        assert step.status_code == 400 and "OUTFILE" in step.text
        assert (await sql(client, "SELECT COUNT(*) AS n FROM t")).json()["data"]["rows"] == [[2]]
    rows = external_mariadb.admin("SELECT * FROM t ORDER BY a", database="analytics")
    assert list(rows) == mariadb_t


async def test_mariadb_read_only_transaction_holds_below_the_guard(
    external_mariadb: ExternalMariaDB, mariadb_t: list[tuple[Any, ...]]
) -> None:
    # The owner could write: only the session's READ ONLY transaction stops this one.
    owner = external_mariadb.owner_url().render_as_string(hide_password=False)
    settings = load_settings(env={"DATAEXEC_DATABASE_URL": owner})
    database = QueryDatabase(settings, settings.database_url)
    try:
        with pytest.raises(SqlNotAllowed, match="READ ONLY"):
            await database.table("INSERT INTO t VALUES (3, 'three')")
    finally:
        database.close()
    rows = external_mariadb.admin("SELECT * FROM t ORDER BY a", database="analytics")
    assert list(rows) == mariadb_t


def running(server: ExternalMariaDB, user: str) -> list[dict[str, Any]]:
    """The slow queries of ``user`` the server is running right now."""
    processes = server.processlist(user)
    return [p for p in processes if p["command"] == "Query" and "seq_1_to" in (p["info"] or "")]


async def test_mariadb_statement_time_ends_a_query_in_the_server(
    external_mariadb: ExternalMariaDB, tmp_path: Path
) -> None:
    reader = external_mariadb.reader.user
    env = {**external_mariadb.reader_env(), "DATAEXEC_SQL_TIMEOUT_S": "1.5"}
    async with dataexec(tmp_path, **env) as client:
        response = await sql(client, SLOW["mariadb"])
        detail = assert_error(response, 400, "TIMEOUT")
        assert "1.5 s" in detail["message"]
        assert not running(external_mariadb, reader)


async def test_mariadb_interrupt_and_cell_timeout_kill_the_query(
    external_mariadb: ExternalMariaDB, tmp_path: Path
) -> None:
    reader = external_mariadb.reader.user
    env = {**external_mariadb.reader_env(), "DATAEXEC_POOLS__DEFAULT__TIMEOUT_S": "4"}
    async with dataexec(tmp_path, **env) as client:
        # Interrupted: the query is seen running, then gone from the process list.
        cell = asyncio.ensure_future(run(client, "cancel", f"sql({SLOW['mariadb']!r})"))
        await wait_for(lambda: asyncio.to_thread(running, external_mariadb, reader), 20)
        assert (await client.post("/sessions/cancel/interrupt")).status_code in (200, 202)
        response = await cell
        assert response.status_code == 400, response.text
        await wait_for(lambda: asyncio.to_thread(lambda: not running(external_mariadb, reader)), 10)
        # The cell's own time limit (4 s, shorter than sql_timeout_s) does the same.
        response = await run(client, "cancel", f"sql({SLOW['mariadb']!r})")
        assert_error(response, 400, "TIMEOUT")
        await wait_for(lambda: asyncio.to_thread(lambda: not running(external_mariadb, reader)), 10)
        assert await value_of_step(client, "cancel", "len(sql('SELECT 1 AS one'))") == 1
