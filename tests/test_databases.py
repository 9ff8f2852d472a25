"""The database layer around the guard: read-only below it, other dialects, outages."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dataexec_testing.api import RunningServer, assert_error, make_settings, start_server

from server.config import load_settings, with_default_tenant
from server.embedded.postgres import EmbeddedPostgres
from server.errors import SqlNotAllowed
from server.sql.database import QueryDatabase

TOKEN = "databases-token-0123456789"
SMALL = """
[pools.default]
min_idle = 0
max_kernels = 2
"""


@pytest.fixture
async def sqlite_server(tmp_path: Path) -> AsyncIterator[tuple[RunningServer, Path]]:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, amount REAL, city TEXT)")
        conn.executemany(
            "INSERT INTO orders VALUES (?, ?, ?)",
            [(i, i * 1.5, "Oslo" if i % 2 else "Rome") for i in range(1, 101)],
        )
    settings = make_settings(
        tmp_path, SMALL, DATAEXEC_DATABASE_URL=f"sqlite:///{path}", DATAEXEC_TOKEN=TOKEN
    )
    server = await start_server(with_default_tenant(settings))
    yield server, path
    await server.stop()


async def test_sqlite_answers_queries_schema_and_kernel_sql(
    sqlite_server: tuple[RunningServer, Path],
) -> None:
    server, path = sqlite_server
    async with server.client(token=TOKEN) as http:
        answer = await http.post(
            "/execute",
            json={
                "language": "sql",
                "code": "SELECT city, sum(amount) AS total FROM orders GROUP BY city ORDER BY city",
            },
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["rows"] == [["Oslo", 3750.0], ["Rome", 3825.0]]
        schema = (await http.get("/schema")).json()
        assert schema["dialect"] == "sqlite"
        assert [t["name"] for t in schema["schema"]["tables"]] == ["orders"]
        in_kernel = await http.post(
            "/sessions/s/execute",
            json={"code": "len(sql('SELECT * FROM orders WHERE city = :c', {'c': 'Rome'}))"},
        )
        assert in_kernel.json()["data"]["rows"] == [[50]]
        refused = await http.post(
            "/execute", json={"language": "sql", "code": "DELETE FROM orders"}
        )
        assert_error(refused, 400, "SQL_NOT_ALLOWED")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (100,)


async def test_below_the_guard_writes_still_fail(
    sqlite_server: tuple[RunningServer, Path], embedded_pg: EmbeddedPostgres
) -> None:
    # The second layer on its own: a write that somehow passed the guard.
    server, _ = sqlite_server
    assert server.runtime.database is not None
    with pytest.raises(SqlNotAllowed):
        await server.runtime.database.table("DELETE FROM orders")
    postgres = QueryDatabase(
        load_settings(env={}), embedded_pg.query_url.render_as_string(hide_password=False)
    )
    try:
        for write in (
            "DELETE FROM airlines",
            "CREATE TEMP TABLE x (a int)",
            "SELECT set_config('default_transaction_read_only', 'off', false)",
        ):
            with pytest.raises(SqlNotAllowed):
                table = await postgres.table(write)
                # set_config is allowed by the database but must not make the next write work
                assert table.num_rows == 1
                await postgres.table("DELETE FROM airlines")
    finally:
        postgres.close()


async def test_an_outage_answers_database_unavailable_then_recovers(tmp_path: Path) -> None:
    cluster = EmbeddedPostgres(tmp_path / "pg", demo_data=False)
    cluster.start()
    url = cluster.query_url
    settings = make_settings(
        tmp_path,
        SMALL,
        DATAEXEC_TOKEN=TOKEN,
        DATAEXEC_DATABASE_URL=url.render_as_string(hide_password=False),
    )
    server = await start_server(with_default_tenant(settings))
    query = {"language": "sql", "code": "SELECT 1 AS one"}
    try:
        async with server.client(token=TOKEN) as http:
            assert (await http.post("/execute", json=query)).status_code == 200
            cluster.stop()
            down = await http.post("/execute", json=query)
            detail = assert_error(down, 503, "DATABASE_UNAVAILABLE")
            assert f"{url.host}:{url.port}/{url.database}" in detail["message"]
            assert url.password not in down.text
            assert "Retry-After" in down.headers
            cluster.start()
            again = await http.post("/execute", json=query)
            assert again.status_code == 200, again.text
            assert again.json()["data"]["rows"] == [[1]]
    finally:
        await server.stop()
        cluster.stop()
