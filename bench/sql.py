"""SQL into a DataFrame: DataExec's ``sql()`` in a session kernel against the alternatives.

All read ``SELECT * FROM flights`` (336,776 rows, 19 columns) from the server's embedded
PostgreSQL, in one run:

- ``copy``: PostgreSQL's own ``COPY (SELECT * FROM flights) TO STDOUT (FORMAT binary)``,
  read and dropped by psycopg2 in this process: the anchor, the database's own pace;
- ``dataexec``: ``flights = sql("SELECT * FROM flights")`` in a warm session kernel, timed
  until the DataFrame exists in the kernel (the kernel round trip the server reports), and
  the same step answering the frame (``flights = sql(...)`` then ``flights``: preview,
  statistics, cache key; client wall time over HTTP). Each two ways: spaced (after the
  previous step's checkpoint pass and a second of quiet) and back-to-back (the next POST
  as soon as the answer is in, as a platform sends the steps of an analysis);
- ``psycopg2``: ``pandas.read_sql`` over a psycopg2 connection in this process, what the
  replaced system did;
- ``adbc``: ADBC's ``fetch_arrow_table().to_pandas()`` in this process (no sandbox, no socket,
  no guard).

Targets (issue 14): ``sql()`` into a kernel frame <= 1.3x COPY, the step answered over HTTP
<= 1.5x COPY, spaced and back-to-back (ratios of medians of one run); >= 3x faster than
psycopg2 + read_sql. ``GET /schema`` and ``GET /schema/flights/profile`` each <= 1 s.
"""

from __future__ import annotations

import statistics
import time
import warnings

import httpx
from harness import BenchServer, Figure, Target, ms_since

from server.embedded.postgres import EmbeddedPostgres

POOLS = """
[pools.default]
min_idle = 1
max_kernels = 2
"""
QUERY = "SELECT * FROM flights"
FLIGHTS = 336_776
SPEEDUP_TARGET = Target(">=", 3.0)
FRAME_TARGET = Target("<=", 1.3)  # x COPY
ANSWER_TARGET = Target("<=", 1.5)  # x COPY
SCHEMA_TARGET = Target("<=", 1000.0)
SPACED_S = 1.0
FRAME_STEP = f"flights = sql({QUERY!r})\nlen(flights)"
ANSWER_STEP = f"flights = sql({QUERY!r})\nflights"


def _step(client: httpx.Client, session: str, code: str) -> tuple[float, float]:
    """(kernel ms, wall ms) of one step of ``code`` in the session."""
    started = time.perf_counter()
    response = client.post(f"/sessions/{session}/execute", json={"code": code})
    wall = ms_since(started)
    answer = response.json()
    if response.status_code != 200 or answer["metadata"]["row_count"] not in (1, FLIGHTS):
        raise RuntimeError(f"sql() in the kernel failed: {response.text[:500]}")
    return answer["metadata"]["execution_time_ms"], wall


def _settle(client: httpx.Client, session: str) -> None:
    """Wait for the previous step's checkpoint pass (the variables wait for it), then rest."""
    client.get(f"/sessions/{session}/variables").raise_for_status()
    time.sleep(SPACED_S)


def _copy(url: str) -> float:
    import psycopg2

    class Dropped:
        def write(self, data: bytes) -> None:
            pass

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cursor:
            started = time.perf_counter()
            cursor.copy_expert(f"COPY ({QUERY}) TO STDOUT (FORMAT binary)", Dropped())
            return ms_since(started)
    finally:
        conn.close()


def _psycopg2(url: str) -> float:
    import pandas as pd
    import psycopg2

    started = time.perf_counter()
    with psycopg2.connect(url) as conn, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas warns about raw DBAPI connections
        frame = pd.read_sql(QUERY, conn)
    elapsed = ms_since(started)
    assert len(frame) == FLIGHTS
    return elapsed


def _adbc(url: str) -> float:
    import adbc_driver_postgresql.dbapi as adbc

    started = time.perf_counter()
    with adbc.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute(QUERY)
        frame = cursor.fetch_arrow_table().to_pandas()
    elapsed = ms_since(started)
    assert len(frame) == FLIGHTS
    return elapsed


def bench_sql(server: BenchServer, repeat: int) -> list[Figure]:
    """sql() in a kernel, spaced and back-to-back, against COPY, read_sql and ADBC in this
    process; /schema; profile."""
    cluster = EmbeddedPostgres(server.root / "state", demo_data=True)
    cluster.start()  # adopts the server's running cluster
    url = cluster.query_url.set(drivername="postgresql").render_as_string(hide_password=False)
    series: dict[str, list[float]] = {
        name: []
        for name in (
            "copy",
            "frame",
            "frame wall",
            "answer",
            "answer kernel",
            "read_sql",
            "adbc",
            "schema",
            "profile",
            "frame b2b",
            "answer b2b",
        )
    }
    try:
        with server.client() as client:
            session = client.post("/sessions").json()["session_id"]
            _step(client, session, ANSWER_STEP)  # warm: first connection, caches
            _copy(url)
            _psycopg2(url)
            _adbc(url)
            for _ in range(repeat):
                # Interleaved, so that noise on this shared machine hits all of them alike.
                series["copy"].append(_copy(url))
                _settle(client, session)
                kernel, wall = _step(client, session, FRAME_STEP)
                series["frame"].append(kernel)
                series["frame wall"].append(wall)
                _settle(client, session)
                kernel, wall = _step(client, session, ANSWER_STEP)
                series["answer"].append(wall)
                series["answer kernel"].append(kernel)
                series["read_sql"].append(_psycopg2(url))
                series["adbc"].append(_adbc(url))
                started = time.perf_counter()
                assert client.get("/schema").status_code == 200
                series["schema"].append(ms_since(started))
                started = time.perf_counter()
                assert client.get("/schema/flights/profile").status_code == 200
                series["profile"].append(ms_since(started))
            _settle(client, session)
            for _ in range(repeat):  # back-to-back: each POST as soon as the last answered
                series["frame b2b"].append(_step(client, session, FRAME_STEP)[0])
            for _ in range(repeat):
                series["answer b2b"].append(_step(client, session, ANSWER_STEP)[1])
            client.delete(f"/sessions/{session}")
    finally:
        cluster.stop()
    return _figures(server.sandbox, series)


def _figures(sandbox: str, series: dict[str, list[float]]) -> list[Figure]:
    def ms(what: str, name: str, target: Target | None = None) -> Figure:
        return Figure("sql", what, sandbox, "ms", series[name], target)

    copy = statistics.median(series["copy"])

    def versus_copy(what: str, name: str, target: Target) -> Figure:
        ratio = statistics.median(series[name]) / copy
        return Figure("sql", what, sandbox, "x", [ratio], target)

    speedup = [b / k for b, k in zip(series["read_sql"], series["frame"], strict=True)]
    return [
        ms("COPY (SELECT * FROM flights) TO STDOUT binary (host, the anchor)", "copy"),
        ms("sql() into a kernel frame, spaced (kernel round trip)", "frame"),
        ms("  same, client wall time over HTTP", "frame wall"),
        ms("sql() into a kernel frame, back-to-back (kernel round trip)", "frame b2b"),
        ms("step answering the frame (preview, stats, key), spaced, wall", "answer"),
        ms("  same, kernel round trip", "answer kernel"),
        ms("step answering the frame, back-to-back, wall", "answer b2b"),
        ms("psycopg2 + pandas.read_sql (host)", "read_sql"),
        ms("ADBC to pandas (host)", "adbc"),
        ms("GET /schema", "schema", SCHEMA_TARGET),
        ms("GET /schema/flights/profile", "profile", SCHEMA_TARGET),
        versus_copy("kernel frame / COPY, spaced", "frame", FRAME_TARGET),
        versus_copy("kernel frame / COPY, back-to-back", "frame b2b", FRAME_TARGET),
        versus_copy("answered step / COPY, spaced", "answer", ANSWER_TARGET),
        versus_copy("answered step / COPY, back-to-back", "answer b2b", ANSWER_TARGET),
        Figure("sql", "speedup over psycopg2 + read_sql", sandbox, "x", speedup, SPEEDUP_TARGET),
    ]
