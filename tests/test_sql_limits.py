"""What one query may take of the server and of the database: memory, answer size, disk.

The server runs as ``dataexec serve`` in a process of its own, on its own embedded
PostgreSQL, so that its memory (``VmHWM``, the peak resident size, in /proc) is the
server's alone. ``SELECT repeat('x', 500000000)`` without a session grew the server by
4.7 GB and held ``/health`` for 3.9 s (in a session by 0.9 GB): now PostgreSQL refuses the
row over ``sql_max_row_bytes`` before it leaves the database, and the answer is
``OUTPUT_TOO_LARGE``. Preview rows over ``output_limit_bytes`` are refused before any JSON
is built. The query role's ``temp_file_limit`` (``sql_temp_file_limit_mb``, 1 MB here)
ends a huge sort with a typed error instead of spilling until the statement timeout; the
role docs/databases.md gives operators carries one too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from dataexec_testing.api import assert_error
from dataexec_testing.external_pg import ExternalPostgres
from dataexec_testing.serve import ServeProcess, serve_env, start_serve

HUGE_VALUE = "SELECT repeat('x', 500000000) AS big"
# The server's peak may grow this much for a query refused for its size (it grew 4.7 GB).
MEMORY_BOUND = 256 * 1024 * 1024
# Sorting every flight by a text key spills far more than 1 MB past work_mem.
HUGE_SORT = (
    "SELECT max(k) AS k FROM (SELECT tailnum || dest || origin AS k FROM flights "
    "ORDER BY 1 OFFSET 1) AS sorted"
)


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServeProcess]:
    """``dataexec serve`` on its own embedded PostgreSQL, the query role's temp files at 1 MB."""
    env = serve_env(tmp_path_factory.mktemp("sql-limits"))
    env["DATAEXEC_SQL_TEMP_FILE_LIMIT_MB"] = "1"
    server = await start_serve(env)
    try:
        yield server
    finally:
        await server.stop()


async def health_while(http: httpx.AsyncClient, running: asyncio.Future[object]) -> list[int]:
    """``GET /health`` over and over until ``running`` is done: the statuses answered while
    it still ran."""
    statuses = []
    while not running.done():
        response = await http.get("/health")
        if not running.done():
            statuses.append(response.status_code)
        await asyncio.sleep(0.05)
    return statuses


async def test_a_huge_value_without_a_session_is_refused_before_the_server_holds_it(
    served: ServeProcess,
) -> None:
    async with served.client(timeout=300) as http:
        assert (
            await http.post("/execute", json={"language": "sql", "code": "SELECT 1"})
        ).is_success
        before = memory(served.process.pid)["VmRSS"]
        query = asyncio.ensure_future(
            http.post("/execute", json={"language": "sql", "code": HUGE_VALUE})
        )
        health = await health_while(http, query)
        detail = assert_error(await query, 400, "OUTPUT_TOO_LARGE")
        assert "sql_max_row_bytes" in detail["message"] and "500,000,0" in detail["message"]
        grown = memory(served.process.pid)["VmHWM"] - before
        assert grown < MEMORY_BOUND, f"the server grew by {grown:,} bytes"
        assert health and set(health) == {200}  # /health answered while the query ran


async def test_a_huge_value_in_a_session_is_refused_and_the_broker_holds_nothing(
    served: ServeProcess,
) -> None:
    async with served.client(timeout=300) as http:
        session = "huge-value"
        code = f"big = sql({HUGE_VALUE!r})"
        before = memory(served.process.pid)["VmRSS"]
        detail = assert_error(
            await http.post(f"/sessions/{session}/execute", json={"code": code}),
            400,
            "OUTPUT_TOO_LARGE",
        )
        assert detail["ename"] == "ResultTooLarge" and "sql_max_row_bytes" in detail["message"]
        grown = memory(served.process.pid)["VmHWM"] - before
        assert grown < MEMORY_BOUND, f"the server grew by {grown:,} bytes"
        # The session goes on; a value under the cap comes whole.
        fine = await http.post(
            f"/sessions/{session}/execute",
            json={"code": "len(sql(\"SELECT repeat('x', 1000000) AS v\").v[0])"},
        )
        assert fine.json()["data"]["rows"] == [[1_000_000]]
        await http.delete(f"/sessions/{session}")


async def test_preview_rows_over_the_output_limit_are_refused_before_json(
    served: ServeProcess,
) -> None:
    # Ten rows of 2 MB each: every row is under sql_max_row_bytes (16 MiB), the ten of them
    # over output_limit_bytes (8 MiB).
    query = "SELECT g, repeat('y', 2000000) AS v FROM generate_series(1, 10) AS g"
    async with served.client(timeout=300) as http:
        refused = await http.post("/execute", json={"language": "sql", "code": query})
        assert "output_limit_bytes" in assert_error(refused, 400, "OUTPUT_TOO_LARGE")["message"]
        kept = await http.post("/execute", json={"language": "sql", "code": query, "max_rows": 2})
        assert kept.status_code == 200, kept.text[:500]
        assert kept.json()["metadata"]["row_count"] == 10 and kept.json()["cache_key"]


async def test_a_huge_sort_answers_a_typed_error_at_the_temp_file_limit(
    served: ServeProcess,
) -> None:
    async with served.client(timeout=300) as http:
        served_sql = await http.post("/execute", json={"language": "sql", "code": HUGE_SORT})
        detail = assert_error(served_sql, 400, "EXECUTION_ERROR")
        assert detail["ename"] == "TempFileLimitExceeded"
        assert "temp_file_limit" in detail["message"]
        in_session = await http.post(
            "/sessions/huge-sort/execute", json={"code": f"sql({HUGE_SORT!r})"}
        )
        detail = assert_error(in_session, 400, "EXECUTION_ERROR")
        assert "temp_file_limit" in detail["message"]
        # A sort that fits in memory is unaffected.
        small = await http.post(
            "/execute",
            json={"language": "sql", "code": "SELECT * FROM airlines ORDER BY name"},
        )
        assert small.status_code == 200, small.text
        await http.delete("/sessions/huge-sort")


def test_the_documented_role_for_client_databases_has_a_temp_file_limit(
    external_pg: ExternalPostgres,
) -> None:
    # external_pg made its reader with docs/databases.md's role SQL, as an operator would.
    [[limit]] = external_pg.admin("SHOW temp_file_limit", login=external_pg.reader)
    assert limit == "1GB"
