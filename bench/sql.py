"""SQL into a DataFrame: DataExec's ``sql()`` in a session kernel against the alternatives.

All three read ``SELECT * FROM flights`` (336,776 rows, 19 columns) from the server's
embedded PostgreSQL, in one run:

- ``dataexec``: ``flights = sql("SELECT * FROM flights")`` in a warm session kernel, timed
  until the DataFrame exists in the kernel (the kernel round trip the server reports; the
  client's wall time beside it);
- ``psycopg2``: ``pandas.read_sql`` over a psycopg2 connection in this process, what the
  replaced system did;
- ``adbc``: ADBC's ``fetch_arrow_table().to_pandas()`` in this process: the ceiling, no
  sandbox, no socket, no guard.

Targets: DataExec >= 3x faster than psycopg2 + read_sql, and within 1.5x of the ceiling.
Also ``GET /schema`` and ``GET /schema/flights/profile`` over HTTP, each <= 1 s.
"""

from __future__ import annotations

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
CEILING_TARGET = Target("<=", 1.5)
SCHEMA_TARGET = Target("<=", 1000.0)


def _in_kernel(client: httpx.Client, session: str) -> tuple[float, float]:
    """(kernel ms, wall ms) of one ``sql()`` into a DataFrame in the session's kernel."""
    started = time.perf_counter()
    response = client.post(
        f"/sessions/{session}/execute", json={"code": f"flights = sql({QUERY!r})\nlen(flights)"}
    )
    wall = ms_since(started)
    answer = response.json()
    if response.status_code != 200 or answer["data"]["rows"] != [[FLIGHTS]]:
        raise RuntimeError(f"sql() in the kernel failed: {response.text[:500]}")
    return answer["metadata"]["execution_time_ms"], wall


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
    """sql() in a kernel vs psycopg2 + read_sql vs ADBC in this process; /schema; profile."""
    cluster = EmbeddedPostgres(server.root / "state", demo_data=True)
    cluster.start()  # adopts the server's running cluster
    url = cluster.query_url.set(drivername="postgresql").render_as_string(hide_password=False)
    kernel, wall, baseline, ceiling, schema, profile = [], [], [], [], [], []
    try:
        with server.client() as client:
            session = client.post("/sessions").json()["session_id"]
            _in_kernel(client, session)  # warm: first connection, caches
            _psycopg2(url)
            _adbc(url)
            for _ in range(repeat):
                # Interleaved, so that noise on this shared machine hits all three alike.
                k, w = _in_kernel(client, session)
                kernel.append(k)
                wall.append(w)
                baseline.append(_psycopg2(url))
                ceiling.append(_adbc(url))
                started = time.perf_counter()
                assert client.get("/schema").status_code == 200
                schema.append(ms_since(started))
                started = time.perf_counter()
                assert client.get("/schema/flights/profile").status_code == 200
                profile.append(ms_since(started))
            client.delete(f"/sessions/{session}")
    finally:
        cluster.stop()
    sandbox = server.sandbox
    figures = [
        Figure("sql", "sql() into a DataFrame in the kernel", sandbox, "ms", kernel, None),
        Figure("sql", "  same, client wall time over HTTP", sandbox, "ms", wall, None),
        Figure("sql", "psycopg2 + pandas.read_sql (host)", sandbox, "ms", baseline, None),
        Figure("sql", "ADBC to pandas (host, the ceiling)", sandbox, "ms", ceiling, None),
        Figure("sql", "GET /schema", sandbox, "ms", schema, SCHEMA_TARGET),
        Figure("sql", "GET /schema/flights/profile", sandbox, "ms", profile, SCHEMA_TARGET),
    ]
    speedup = [b / k for b, k in zip(baseline, kernel, strict=True)]
    versus_ceiling = [k / c for k, c in zip(kernel, ceiling, strict=True)]
    figures.append(
        Figure("sql", "speedup over psycopg2 + read_sql", sandbox, "x", speedup, SPEEDUP_TARGET)
    )
    figures.append(
        Figure("sql", "kernel time / ADBC ceiling", sandbox, "x", versus_ceiling, CEILING_TARGET)
    )
    return figures
