"""SQL end to end on the flights data: through the API, through sql()/conn/%%sql in kernels,
and the walls around it (guard, read-only, credentials, byte cap, cancellation)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import sqlalchemy as sa
from dataexec_testing.api import (
    RunningServer,
    assert_error,
    connect_from_kernel,
    ok,
    run,
    value_of,
    wait_for,
)
from dataexec_testing.guard_cases import REJECTED

from server.embedded.postgres import EmbeddedPostgres

FLIGHTS = 336_776


def count_rows(admin_url: sa.URL, table: str) -> int:
    engine = sa.create_engine(admin_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


async def test_sql_without_session_runs_in_the_server(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/execute",
        json={
            "language": "sql",
            "code": "SELECT carrier, count(*) AS n FROM flights GROUP BY carrier ORDER BY n DESC",
            "max_rows": 3,
        },
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "success" and answer["session_id"] is None
    assert answer["data"]["columns"] == ["carrier", "n"]
    assert answer["data"]["rows"][0] == ["UA", 58665]
    assert answer["metadata"]["row_count"] == 16 and answer["metadata"]["truncated"] is True
    schema = {c["name"]: c for c in answer["metadata"]["result_schema"]}
    assert schema["n"]["type"] == "int64"
    assert schema["n"]["stats"]["max"] == 58665 and schema["n"]["stats"]["null_count"] == 0
    assert schema["carrier"]["stats"]["distinct_count"] == 16


async def test_sql_result_types_and_stats(client: httpx.AsyncClient) -> None:
    answer = (
        await client.post(
            "/execute",
            json={
                "language": "sql",
                "code": "SELECT dep_delay, time_hour, carrier = 'UA' AS ua "
                "FROM flights WHERE month = 1 AND day = 1",
            },
        )
    ).json()
    schema = {c["name"]: c for c in answer["metadata"]["result_schema"]}
    assert schema["dep_delay"]["type"] == "float64"
    assert schema["dep_delay"]["stats"]["null_count"] > 0
    assert schema["time_hour"]["type"].startswith("datetime64")
    assert schema["time_hour"]["stats"]["min"].startswith("2013-01-01")
    assert set(schema["ua"]["stats"]) == {"true_count", "false_count", "null_count"}
    assert answer["metadata"]["row_count"] == 842


async def test_sql_in_a_session_lands_in_the_kernel(
    client: httpx.AsyncClient, session_id: str
) -> None:
    answer = await ok(client, session_id, "SELECT * FROM airlines ORDER BY carrier", language="sql")
    assert answer["result_name"] == "df_1"
    assert answer["metadata"]["row_count"] == 16
    named = await ok(
        client,
        session_id,
        "SELECT origin, count(*) AS n FROM flights GROUP BY origin",
        language="sql",
        result_name="by_origin",
    )
    assert named["result_name"] == "by_origin"
    total = await value_of(client, session_id, "int(by_origin.n.sum()) + len(df_1)")
    assert total == FLIGHTS + 16
    assert_error(
        await run(client, session_id, "SELECT 1", language="sql", result_name="not valid"),
        400,
        "VALIDATION_ERROR",
    )


async def test_sql_parameters_over_http_with_and_without_a_session(
    client: httpx.AsyncClient, session_id: str
) -> None:
    query = "SELECT count(*) AS n FROM flights WHERE month = :m AND carrier = :c"
    params = {"m": 2, "c": "UA"}
    served = await client.post(
        "/execute", json={"language": "sql", "code": query, "params": params}
    )
    assert served.status_code == 200, served.text
    in_session = await ok(
        client, session_id, query, language="sql", params=params, result_name="ua_feb"
    )
    assert served.json()["data"] == in_session["data"]
    assert in_session["data"]["rows"][0][0] == await value_of(
        client, session_id, "int(ua_feb.n[0])"
    )
    meta = (await client.get(f"/cache/{served.json()['cache_key']}/meta")).json()
    assert meta["lineage"]["params"] == params
    for bad in ({"m": [1]}, {"not a name": 1}, [1]):
        refused = await client.post(
            "/execute", json={"language": "sql", "code": query, "params": bad}
        )
        assert_error(refused, 400, "VALIDATION_ERROR")
    python = await run(client, session_id, "1", params={"m": 1})
    assert_error(python, 400, "VALIDATION_ERROR")


async def test_sql_and_conn_and_magic_inside_python(
    client: httpx.AsyncClient, session_id: str
) -> None:
    frame = await ok(
        client, session_id, "flights = sql('SELECT * FROM flights')\nlen(flights), flights.shape[1]"
    )
    assert frame["data"] is None  # a tuple is not a frame
    assert await value_of(client, session_id, "len(flights)") == FLIGHTS
    assert await value_of(client, session_id, "flights.shape[1]") == 19
    params = await value_of(
        client,
        session_id,
        "len(sql('SELECT * FROM flights WHERE carrier = :c AND month = :m', {'c': 'AA', 'm': 1}))",
    )
    assert params == 2794
    read_sql = await ok(
        client,
        session_id,
        """
import warnings
with warnings.catch_warnings():
    warnings.simplefilter('error')
    planes = pd.read_sql('SELECT * FROM planes', conn)
len(planes)""",
    )
    assert read_sql["data"]["rows"] == [[3322]]
    magic = await ok(
        client,
        session_id,
        "%%sql airports_ny\nSELECT * FROM airports WHERE tzone = 'America/New_York'",
    )
    assert magic["metadata"]["row_count"] > 100
    assert await value_of(client, session_id, "type(airports_ny).__name__") == "DataFrame"


async def test_rejected_writes_leave_rows_unchanged(
    api: RunningServer, client: httpx.AsyncClient, session_id: str, embedded_pg: EmbeddedPostgres
) -> None:
    before = count_rows(embedded_pg.admin_url, "airlines")
    writes = [
        "DELETE FROM airlines",
        "WITH d AS (DELETE FROM airlines RETURNING *) SELECT * FROM d",
        "UPDATE airlines SET name = 'x'",
        "DROP TABLE airlines",
        "INSERT INTO airlines VALUES ('ZZ', 'Zed')",
        "TRUNCATE airlines",
    ]
    for query in writes:
        detail = assert_error(
            await client.post("/execute", json={"language": "sql", "code": query}),
            400,
            "SQL_NOT_ALLOWED",
        )
        assert detail["message"]
        detail = assert_error(
            await run(client, session_id, query, language="sql"), 400, "SQL_NOT_ALLOWED"
        )
        detail = assert_error(
            await run(client, session_id, f"sql({query!r})"), 400, "SQL_NOT_ALLOWED"
        )
    assert count_rows(embedded_pg.admin_url, "airlines") == before


async def test_database_errors_are_execution_errors(
    client: httpx.AsyncClient, session_id: str
) -> None:
    detail = assert_error(
        await client.post(
            "/execute", json={"language": "sql", "code": "SELECT no_such_column FROM flights"}
        ),
        400,
        "EXECUTION_ERROR",
    )
    assert "no_such_column" in detail["message"]
    detail = assert_error(
        await run(client, session_id, "SELECT nope FROM flights", language="sql"),
        400,
        "EXECUTION_ERROR",
    )
    assert "nope" in detail["evalue"]


async def test_kernel_has_no_credentials_and_no_route_to_the_database(
    client: httpx.AsyncClient, session_id: str, embedded_pg: EmbeddedPostgres
) -> None:
    url = embedded_pg.query_url
    await ok(client, session_id, "x = 1")
    leaks = await value_of(
        client,
        session_id,
        f"""
import os
secrets = [{url.password!r}, {str(url.port)!r} + '/', 'dataexec_query']
found = [k for k, v in os.environ.items() if any(s in v for s in secrets)]
for root, dirs, files in os.walk('/dataexec'):
    for name in files:
        try:
            text = open(os.path.join(root, name), errors='ignore').read()
        except OSError:
            continue
        if any(s in text for s in secrets[:1]):
            found.append(os.path.join(root, name))
for pid in [p for p in os.listdir('/proc') if p.isdigit()]:
    try:
        text = open(f'/proc/{{pid}}/environ', errors='ignore').read() + open(
            f'/proc/{{pid}}/cmdline', errors='ignore').read()
    except OSError:
        continue
    if secrets[0] in text:
        found.append(pid)
str(found)""",
    )
    assert leaks == "[]"
    reach = await connect_from_kernel(client, session_id, url.port)
    assert reach != "connected"


async def test_sql_cannot_read_the_store(
    client: httpx.AsyncClient, session_id: str, embedded_pg: EmbeddedPostgres
) -> None:
    store = embedded_pg.store_url.database
    for query in (
        f"SELECT * FROM dblink('dbname={store}', 'SELECT 1') AS t(x int)",
        "SELECT * FROM pg_catalog.pg_database",
    ):
        response = await run(client, session_id, f"sql({query!r})")
        if response.status_code == 200:
            # Listing database names is harmless; reading the store's tables is not.
            assert query.endswith("pg_database")
        else:
            assert response.json()["detail"]["type"] in ("SQL_NOT_ALLOWED", "EXECUTION_ERROR")
    engine = sa.create_engine(embedded_pg.query_url.set(database=store))
    with pytest.raises(sa.exc.OperationalError, match="permission denied|not permitted"):
        with engine.connect():
            pass
    engine.dispose()


async def test_interrupt_cancels_the_running_query(
    api: RunningServer, client: httpx.AsyncClient, session_id: str, embedded_pg: EmbeddedPostgres
) -> None:
    await ok(client, session_id, "x = 1")
    running = asyncio.ensure_future(
        run(
            client,
            session_id,
            "sql('SELECT count(*) FROM generate_series(1, 2000000000)')",
        )
    )
    admin = sa.create_engine(embedded_pg.superuser_url)

    def backends() -> int:
        with admin.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'dataexec_query' "
                    "AND state = 'active' AND query LIKE '%generate_series%'"
                )
            ).scalar_one()

    async def started() -> bool:
        return await asyncio.get_running_loop().run_in_executor(None, backends) > 0

    await wait_for(started)
    await client.post(f"/sessions/{session_id}/interrupt")
    detail = assert_error(await running, 400, "EXECUTION_ERROR")
    assert detail["ename"] == "KeyboardInterrupt"

    async def gone() -> bool:
        return await asyncio.get_running_loop().run_in_executor(None, backends) == 0

    await wait_for(gone)
    admin.dispose()
    assert await value_of(client, session_id, "x") == 1


async def test_results_over_the_byte_cap_fail_cleanly(
    client: httpx.AsyncClient, session_id: str
) -> None:
    # The test server caps results at 64 MiB; flights times airlines is about 640 MB.
    detail = assert_error(
        await run(client, session_id, "big = sql('SELECT * FROM flights a CROSS JOIN airlines')"),
        400,
        "OUTPUT_TOO_LARGE",
    )
    assert "sql_max_result_bytes" in detail["message"]
    assert await value_of(client, session_id, "'big' in globals()") is False
    other = await client.post(
        "/execute", json={"language": "sql", "code": "SELECT count(*) AS n FROM weather"}
    )
    assert other.status_code == 200


async def test_schema_and_profile_over_http(api: RunningServer, client: httpx.AsyncClient) -> None:
    schema = (await client.get("/schema")).json()
    assert schema["dialect"] == "postgresql"
    tables = {t["name"]: t for t in schema["schema"]["tables"]}
    assert {"flights", "weather", "planes", "airports", "airlines"} <= set(tables)
    carrier = next(c for c in tables["airlines"]["columns"] if c["name"] == "carrier")
    assert carrier["is_primary_key"] is True and carrier["type"].startswith("VARCHAR")
    profile = (await client.get("/schema/flights/profile")).json()
    assert profile["table_name"] == "flights"
    columns = {c["name"]: c for c in profile["columns"]}
    assert columns["carrier"]["top_values"][0]["value"] == "UA"
    assert "histogram" in columns["dep_delay"] and "top_values" not in columns["dep_delay"]
    for bad in ("nope", "flights%3B%20DROP%20TABLE%20flights", "public.flights"):
        assert_error(await client.get(f"/schema/{bad}/profile"), 404, "NOT_FOUND")
    async with api.client(token=None) as anonymous:
        assert_error(await anonymous.get("/schema"), 401, "UNAUTHORIZED")


def _on_airlines(sql: str) -> str:
    """A guard case aimed at a real table (the guard tests write against ``t``)."""
    import re

    return re.sub(r"\bt\b", "airlines", sql)


# Empty code is refused earlier, as a VALIDATION_ERROR of the request.
REJECTED_END_TO_END = [case for case in REJECTED if case.values[0].strip()]


@pytest.mark.parametrize(("sql", "reason"), REJECTED_END_TO_END)
async def test_every_refused_query_is_refused_end_to_end_and_changes_nothing(
    client: httpx.AsyncClient, admin_engine: sa.Engine, sql: str, reason: str
) -> None:
    def counts() -> tuple[int, int]:
        with admin_engine.connect() as conn:
            return (
                conn.execute(sa.text("SELECT count(*) FROM airlines")).scalar_one(),
                conn.execute(sa.text("SELECT count(*) FROM flights")).scalar_one(),
            )

    before = counts()
    response = await client.post("/execute", json={"language": "sql", "code": _on_airlines(sql)})
    detail = assert_error(response, 400, "SQL_NOT_ALLOWED")
    assert reason.lower() in detail["message"].lower()
    assert counts() == before


async def test_awkward_sql_values_become_json(client: httpx.AsyncClient) -> None:
    query = (
        "SELECT 1.25::numeric(10, 2) AS dec, '\\x0102ff'::bytea AS raw, ARRAY[1, 2] AS arr, "
        "'{\"k\": [1, null]}'::jsonb AS doc, interval '1 day 2 hours' AS span, "
        "timestamptz '2024-03-01 12:00:00+02' AS at, 'NaN'::float8 AS nan, "
        "'infinity'::float8 AS inf, NULL::int AS nothing, date '2024-02-29' AS day"
    )
    response = await client.post("/execute", json={"language": "sql", "code": query})
    assert response.status_code == 200, response.text
    answer = response.json()
    row = dict(zip(answer["data"]["columns"], answer["data"]["rows"][0], strict=True))
    assert float(row["dec"]) == 1.25
    assert row["raw"] == "0102ff"
    assert row["arr"] == [1, 2]
    assert "k" in str(row["doc"])
    assert row["span"] and isinstance(row["span"], str)
    assert row["at"].startswith("2024-03-01T10:00:00")
    assert row["nan"] is None and row["inf"] is None and row["nothing"] is None
    assert row["day"] == "2024-02-29"
