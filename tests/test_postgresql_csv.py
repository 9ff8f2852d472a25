"""PostgreSQL results over CSV COPY (``server.sql.dialects.postgresql_csv``), on the real
embedded PostgreSQL.

The CSV path must give exactly what ADBC gives for every type it takes, hand every other
type to ADBC, and never turn a COPY that failed part-way (the timeout, the row cap, a
cancel, a reader that stopped) into a short result or a connection left mid-COPY; and the
pooled connection it runs on must come back as it was, or be replaced when it died.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterator
from typing import Any

import adbc_driver_postgresql.dbapi as adbc_pg
import pyarrow as pa
import pytest
import sqlalchemy as sa

from server.config import load_settings
from server.embedded.postgres import EmbeddedPostgres
from server.errors import ExecutionError, ExecutionTimeout, OutputTooLarge
from server.sql.database import QueryDatabase
from server.sql.dialects import postgresql_csv
from server.sql.dialects.generic import PING_AFTER_IDLE_S
from server.sql.errors import QueryCancelled
from server.sql.streaming import ClosingReader, QueryStream

# Every type the CSV path takes, with the values whose text is easy to get wrong.
EVERY_TYPE = """
SELECT * FROM (VALUES
  (1, true, 2::int2, 3::int4, '-9223372036854775808'::int8, 1.5::float4, 0.1::float8,
   'a,b "quoted"'::text, 'two
lines'::varchar, 'ab'::char(4), 'pg_class'::name, date '2024-02-29',
   timestamp '2024-03-01 12:00:00.123456', timestamptz '2024-03-01 12:00:00.5+02'),
  (2, false, '-32768'::int2, 2147483647::int4, 9223372036854775807::int8,
   'NaN'::float4, '-0'::float8, ''::text, 'ünï ✓'::varchar, ''::char(4), ''::name,
   date '0001-01-01', timestamp '1970-01-01 00:00:00', timestamptz '9999-12-31 23:59:59+00'),
  (3, NULL, NULL, NULL, NULL, '-Infinity'::float4, 'Infinity'::float8, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL),
  (4, NULL, NULL, NULL, NULL, NULL, 1e308::float8, '\\N'::text, 'NULL', ' ', 'x', NULL,
   NULL, NULL)
) AS t(n, b, i2, i4, i8, f4, f8, t, v, c, nm, d, ts, tstz)
ORDER BY n
"""


@pytest.fixture
def database(embedded_pg: EmbeddedPostgres) -> Iterator[QueryDatabase]:
    settings = load_settings(env={"DATAEXEC_SQL_TIMEOUT_S": "2"})
    database = QueryDatabase(settings, embedded_pg.query_url.render_as_string(hide_password=False))
    yield database
    database.close()


def adbc_table(embedded_pg: EmbeddedPostgres, query: str) -> pa.Table:
    url = embedded_pg.query_url.set(drivername="postgresql")
    with adbc_pg.connect(url.render_as_string(hide_password=False)) as conn:
        with conn.cursor() as cursor:
            cursor.execute(query)
            return cursor.fetch_arrow_table()


def csv_read(database: QueryDatabase, query: str) -> ClosingReader | None:
    """``postgresql_csv.read`` as the dialect calls it, but taking every result it can
    (whether or not ADBC would read it faster)."""
    raw = database.engine.raw_connection()
    copies = database.dialect.copies  # type: ignore[attr-defined]
    return postgresql_csv.read(raw, query, QueryStream(), 1 << 24, copies, lambda _: True)


def csv_table(database: QueryDatabase, query: str) -> pa.Table:
    """``query`` read through the CSV path itself (failing if it would not take it)."""
    reader = csv_read(database, query)
    assert reader is not None
    try:
        table = pa.Table.from_batches(list(reader), schema=reader.schema)
    except BaseException as exc:
        reader.close(exc)
        raise
    reader.close(None)
    return table


def assert_pool_idle(database: QueryDatabase) -> None:
    assert database.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def still_answers(database: QueryDatabase) -> None:
    table = await database.table("SELECT count(*)::int AS n FROM airlines")
    assert table.column("n").to_pylist() == [16]
    assert_pool_idle(database)


async def test_every_csv_type_reads_exactly_what_adbc_reads(
    database: QueryDatabase, embedded_pg: EmbeddedPostgres
) -> None:
    csv = csv_table(database, EVERY_TYPE)
    adbc = adbc_table(embedded_pg, EVERY_TYPE)
    assert csv.schema == adbc.schema
    for name in csv.column_names:
        ours, theirs = csv.column(name).to_pylist(), adbc.column(name).to_pylist()
        for mine, reference in zip(ours, theirs, strict=True):
            if isinstance(reference, float) and math.isnan(reference):
                assert math.isnan(mine), name
            else:
                assert mine == reference and type(mine) is type(reference), name
                if isinstance(reference, float):  # -0.0 == 0.0: the sign must survive too
                    assert math.copysign(1, mine) == math.copysign(1, reference), name
    assert csv.column("t").to_pylist()[1:] == ["", None, "\\N"]  # NULL is not ""
    assert_pool_idle(database)


async def test_flights_read_through_csv_equal_adbc(
    database: QueryDatabase, embedded_pg: EmbeddedPostgres
) -> None:
    query = "SELECT * FROM flights ORDER BY year, month, day, carrier, flight, sched_dep_time"
    csv = csv_table(database, query)
    assert csv.num_rows == 336_776
    assert csv.equals(adbc_table(embedded_pg, query))


async def test_odd_shapes_of_results(database: QueryDatabase) -> None:
    single = csv_table(database, "SELECT NULL::int AS x FROM generate_series(1, 3)")
    assert single.column("x").to_pylist() == [None, None, None]  # three empty lines
    empty = await database.table("SELECT carrier, 1 AS n FROM airlines WHERE false")
    assert empty.num_rows == 0 and empty.column_names == ["carrier", "n"]
    twice = csv_table(database, "SELECT 1 AS a, 'x' AS a, 2.5::float8 AS a")
    assert twice.column_names == ["a", "a", "a"]
    assert [c.to_pylist() for c in twice.columns] == [[1], ["x"], [2.5]]
    assert_pool_idle(database)


async def test_other_types_go_to_adbc_and_give_the_connection_back(
    database: QueryDatabase,
) -> None:
    query = "SELECT 1.25::numeric(10, 2) AS dec, 1 AS n"
    assert csv_read(database, query) is None
    assert_pool_idle(database)
    table = await database.table("SELECT 1.25::numeric(10, 2) AS dec, interval '1 day' AS i")
    assert str(table.column("dec")[0]) == "1.25"
    assert pa.types.is_duration(table.schema.field("i").type)
    await still_answers(database)


def describe(database: QueryDatabase, query: str) -> Any:
    with contextlib.closing(database.engine.raw_connection()) as raw:
        cursor = raw.cursor()
        cursor.execute(f"SELECT * FROM ({query}) AS r LIMIT 0")
        description = cursor.description
        raw.rollback()
    return description


async def test_results_read_faster_by_adbc_stay_on_adbc(
    database: QueryDatabase, embedded_pg: EmbeddedPostgres
) -> None:
    # flights (integers and text) is cheaper as CSV; weather (floats with decimals and a
    # timestamptz) is not: 1.29x ADBC's time.
    assert postgresql_csv.faster_than_adbc(describe(database, "SELECT * FROM flights"))
    weather = describe(database, "SELECT * FROM weather")
    assert postgresql_csv.csv_types(weather) is not None
    assert not postgresql_csv.faster_than_adbc(weather)
    raw = database.engine.raw_connection()
    copies = database.dialect.copies  # type: ignore[attr-defined]
    assert postgresql_csv.read(raw, "SELECT * FROM weather", QueryStream(), 1 << 24, copies) is None
    assert_pool_idle(database)
    query = "SELECT * FROM weather ORDER BY origin, time_hour"
    assert (await database.table(query)).equals(adbc_table(embedded_pg, query))


async def test_a_value_pyarrow_cannot_read_names_its_column(database: QueryDatabase) -> None:
    with pytest.raises(ExecutionError, match="'far'") as failure:
        csv_table(database, "SELECT 1 AS n, 'infinity'::date AS far")
    assert failure.value.extra["ename"] == "ResultTypeError"
    await still_answers(database)


async def test_rows_wider_than_a_chunk_are_read_whole(database: QueryDatabase) -> None:
    table = await database.table(
        "SELECT g, CASE WHEN g % 400 = 0 THEN repeat('y', 3000000) ELSE 'a,\"b\"' END AS v "
        "FROM generate_series(1, 1000) g"
    )
    lengths = [len(v) for v in table.column("v").to_pylist()]
    assert lengths.count(3_000_000) == 2 and lengths.count(5) == 998
    alone = await database.table("SELECT repeat(E'z\\n', 6000000) AS v")
    assert alone.column("v")[0].as_py() == "z\n" * 6_000_000
    quotes = await database.table("SELECT repeat('\"', 5000000) AS v, 1 AS n")
    assert quotes.column("v")[0].as_py() == '"' * 5_000_000
    await still_answers(database)


async def test_a_row_over_the_cap_fails_the_query_not_shortens_it(
    embedded_pg: EmbeddedPostgres,
) -> None:
    settings = load_settings(env={"DATAEXEC_SQL_MAX_ROW_BYTES": str(1 << 20)})
    database = QueryDatabase(settings, embedded_pg.query_url.render_as_string(hide_password=False))
    try:
        with pytest.raises(OutputTooLarge, match="sql_max_row_bytes"):
            await database.table(
                "SELECT g, CASE WHEN g = 90000 THEN repeat(md5(g::text), 100000) END AS v "
                "FROM generate_series(1, 100000) g"
            )
        await still_answers(database)
    finally:
        database.close()


async def test_a_timeout_mid_copy_fails_the_query_and_frees_the_connection(
    database: QueryDatabase,
) -> None:
    # Rows arrive before the statement timeout (2 s) ends the COPY part-way.
    with pytest.raises(ExecutionTimeout):
        await database.table("SELECT g, pg_sleep(0.5)::text AS s FROM generate_series(1, 10) g")
    await still_answers(database)


async def test_a_cancel_mid_copy_stops_it_in_the_database(database: QueryDatabase) -> None:
    stream = database.start("SELECT g, pg_sleep(0.2)::text AS s FROM generate_series(1, 50) g")
    await stream.ready()
    await asyncio.sleep(0.5)
    stream.cancel()
    await asyncio.wait_for(stream.closed(), 5)
    running = await database.table(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE '%pg_sleep(0.2)%' "
        "AND state = 'active' AND pid <> pg_backend_pid()"
    )
    assert running.column("n").to_pylist() == [0]
    await still_answers(database)


async def test_a_reader_that_stops_early_ends_the_copy(embedded_pg: EmbeddedPostgres) -> None:
    # The byte cap stops reading flights after a few chunks; the COPY is still sending.
    settings = load_settings(env={"DATAEXEC_SQL_MAX_RESULT_BYTES": str(4 << 20)})
    database = QueryDatabase(settings, embedded_pg.query_url.render_as_string(hide_password=False))
    try:
        with pytest.raises(OutputTooLarge, match="sql_max_result_bytes"):
            await asyncio.wait_for(database.table("SELECT * FROM flights"), 30)
        await still_answers(database)
    finally:
        database.close()


async def test_a_consumer_waiting_for_rows_sees_the_cancel(database: QueryDatabase) -> None:
    # The schema comes before any row (the columns are asked for first): a consumer waiting
    # for the first batch must end when the query is cancelled, not wait forever (the
    # broker waited so, holding the query's slot, when a kernel hung up).
    stream = database.start("SELECT g, pg_sleep(0.5)::text AS s FROM generate_series(1, 20) g")
    await stream.ready()

    async def consume() -> list[pa.RecordBatch]:
        return [batch async for batch in stream]

    waiting = asyncio.ensure_future(consume())
    await asyncio.sleep(0.3)
    stream.cancel()
    with pytest.raises(QueryCancelled):
        await asyncio.wait_for(waiting, 10)
    await asyncio.wait_for(stream.closed(), 10)
    await still_answers(database)


def scan_filters(plan: dict[str, Any]) -> list[str]:
    """The conditions on each table scan of an ``EXPLAIN (FORMAT JSON)`` plan."""
    kind = plan["Node Type"]
    table_scan = kind.endswith("Scan") and kind != "Subquery Scan"
    found = [plan["Filter"]] if table_scan and "Filter" in plan else []
    for child in plan.get("Plans", []):
        found += scan_filters(child)
    return found


async def test_the_row_cap_is_checked_on_result_rows_not_on_every_row_scanned(
    database: QueryDatabase, embedded_pg: EmbeddedPostgres
) -> None:
    # Left to itself PostgreSQL moves a condition on grouped columns below the GROUP BY,
    # onto each of flights' 336,776 rows instead of the 16 groups (4-6 ms more).
    query = "SELECT carrier, count(*) AS n FROM flights GROUP BY 1"
    capped = postgresql_csv.copy_query(query, describe(database, query), 100)
    with contextlib.closing(database.engine.raw_connection()) as raw:
        cursor = raw.cursor()
        cursor.execute(f"EXPLAIN (FORMAT JSON) {capped}")
        plan = cursor.fetchone()[0][0]["Plan"]
        raw.rollback()
    assert scan_filters(plan) == []
    assert plan["Node Type"] == "Subquery Scan" and "pg_column_size" in plan["Filter"]
    # ... where it still refuses a group whose key is over the cap.
    settings = load_settings(env={"DATAEXEC_SQL_MAX_ROW_BYTES": "4096"})
    capped_db = QueryDatabase(settings, embedded_pg.query_url.render_as_string(hide_password=False))
    try:
        with pytest.raises(OutputTooLarge, match="sql_max_row_bytes"):
            await capped_db.table(
                "SELECT repeat(md5(carrier), 200) AS k, count(*) AS n FROM flights GROUP BY 1"
            )
        await still_answers(capped_db)
    finally:
        capped_db.close()


async def test_the_session_settings_are_gone_when_the_connection_is_pooled_again(
    embedded_pg: EmbeddedPostgres,
) -> None:
    # One pooled connection: the CSV query sets extra_float_digits for its session, and the
    # reset on return must undo it for whoever uses the connection next.
    one = {"DATAEXEC_DB_POOL_SIZE": "1", "DATAEXEC_MAX_QUERIES_PER_TENANT": "1"}
    settings = load_settings(env={**one, "DATAEXEC_MAX_QUERIES_PER_KERNEL": "1"})
    database = QueryDatabase(settings, embedded_pg.query_url.render_as_string(hide_password=False))
    state = "SELECT pg_backend_pid() AS pid, current_setting('extra_float_digits') AS digits"
    try:
        with contextlib.closing(database.engine.raw_connection()) as raw:
            cursor = raw.cursor()
            cursor.execute(state)
            before = cursor.fetchone()
        during = await database.table(state)  # a text column: the CSV path
        assert during.column("pid").to_pylist() == [before[0]]
        assert during.column("digits").to_pylist() == ["3"] != [before[1]]
        with contextlib.closing(database.engine.raw_connection()) as raw:
            cursor = raw.cursor()
            cursor.execute(state)
            assert cursor.fetchone() == before
    finally:
        database.close()


async def test_the_query_runs_in_the_sessions_time_zone_and_date_order(
    embedded_pg: EmbeddedPostgres,
) -> None:
    # A client's role or database may set TimeZone and DateStyle: the query must mean what
    # it means on ADBC (the local day of a timestamptz, the order of '02/01/2013').
    role = embedded_pg.query_url.username
    admin = sa.create_engine(embedded_pg.superuser_url, isolation_level="AUTOCOMMIT")
    local = f"ALTER ROLE {role} SET TimeZone = 'America/New_York'; "
    local += f"ALTER ROLE {role} SET DateStyle = 'ISO, DMY'"
    with admin.connect() as conn:
        conn.execute(sa.text(local))
    database = QueryDatabase(
        load_settings(env={}), embedded_pg.query_url.render_as_string(hide_password=False)
    )
    try:
        query = (
            "SELECT time_hour, time_hour::date AS day, '02/01/2013'::date AS d, "
            "timestamptz '2013-01-02 03:00+00' AS late, "
            "(timestamptz '2013-01-02 03:00+00')::date AS local_day, "
            "current_setting('TimeZone') AS tz, tailnum FROM flights "
            "ORDER BY time_hour, flight, tailnum LIMIT 200"
        )
        csv = csv_table(database, query)
        assert csv.equals(adbc_table(embedded_pg, query))
        assert csv.column("tz")[0].as_py() == "America/New_York"
        assert str(csv.column("d")[0]) == "2013-01-02"
        first = csv.to_pylist()[0]  # 03:00 UTC is 22:00 the day before in New York
        assert str(first["late"]) == "2013-01-02 03:00:00+00:00"
        assert str(first["local_day"]) == "2013-01-01"
    finally:
        database.close()
        with admin.connect() as conn:
            conn.execute(
                sa.text(f"ALTER ROLE {role} RESET TimeZone; ALTER ROLE {role} RESET DateStyle")
            )
        admin.dispose()


async def test_each_statement_of_the_csv_path_is_read_only(database: QueryDatabase) -> None:
    # The connection runs in autocommit for the CSV path: every statement is a transaction
    # of its own, read-only by the connection's default, which no statement can turn off.
    with pytest.raises(ExecutionError, match="read-write"):
        await database.table("SELECT set_config('transaction_read_only', 'off', true) AS x")
    assert_pool_idle(database)
    await still_answers(database)


def backends_of_the_query_role(embedded_pg: EmbeddedPostgres, terminate: set[int]) -> set[int]:
    """The query role's backends, after ending those in ``terminate`` as a restart would.

    Only this test's own: other tests' engines share the cluster and keep connections.
    """
    admin = sa.create_engine(embedded_pg.superuser_url)
    try:
        with admin.connect() as conn:
            for pid in terminate:
                conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            rows = conn.execute(
                sa.text("SELECT pid FROM pg_stat_activity WHERE usename = :role"),
                {"role": embedded_pg.query_url.username},
            )
            return {row.pid for row in rows}
    finally:
        admin.dispose()


async def test_pooled_connections_the_database_dropped_are_replaced(
    database: QueryDatabase, embedded_pg: EmbeddedPostgres
) -> None:
    others = backends_of_the_query_role(embedded_pg, set())
    await still_answers(database)
    # Given back just now: used without a ping, it fails at the describe, and the query
    # goes on with a new connection.
    ours = backends_of_the_query_role(embedded_pg, set()) - others
    assert ours
    backends_of_the_query_role(embedded_pg, ours)
    await still_answers(database)
    # Idle for longer: pinged first, and replaced (a restart, a proxy's idle kill), on
    # every path (one with parameters does not try again).
    ours = backends_of_the_query_role(embedded_pg, set()) - others
    backends_of_the_query_role(embedded_pg, ours)
    await asyncio.sleep(PING_AFTER_IDLE_S + 0.2)
    with_params = "SELECT count(*)::int AS n FROM airlines WHERE :one = 1"
    assert (await database.table(with_params, {"one": 1})).column("n").to_pylist() == [16]
    await still_answers(database)


@pytest.mark.parametrize(
    ("query", "few"),
    [
        ("SELECT * FROM flights LIMIT 10", True),
        ("select * from flights order by dep_delay limit 10000 offset 5;\n", True),
        ("SELECT * FROM flights LIMIT 10001", False),
        ("SELECT * FROM (SELECT * FROM flights LIMIT 5) AS s", False),
        ("SELECT * FROM flights WHERE tailnum = 'LIMIT 5'", False),
    ],
)
def test_a_small_limit_is_known_from_the_text(query: str, few: bool) -> None:
    assert postgresql_csv.few_rows(query) is few


async def test_a_result_limited_to_few_rows_goes_straight_to_adbc(database: QueryDatabase) -> None:
    # The CSV path sets extra_float_digits for its session; ADBC's session keeps its own.
    digits = "SELECT current_setting('extra_float_digits') AS d FROM airlines"
    assert (await database.table(digits)).column("d")[0].as_py() == "3"
    assert (await database.table(digits + " LIMIT 1")).column("d").to_pylist() == ["1"]
