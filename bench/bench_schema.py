"""Time GET /schema and GET /schema/flights/profile at their source, on the embedded database.

    python bench/bench_schema.py [--repeat N] [--tables N] [--json PATH]

Makes a fresh embedded PostgreSQL with the demo data in a temporary state dir (timing
initdb + start, the demo load and a restart), then times, as the SELECT-only query role,
``describe_schema`` (the /schema answer) and ``profile_table("flights")`` (from pg_stats),
each the median of ``--repeat`` runs after one warm-up. Report-only figures: /schema on a
catalog of ``--tables`` more tables, and a flights profile that has to sample (a copy of
flights that was never analysed). Exits 1 when a median misses its target.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.embedded.postgres import EmbeddedPostgres  # noqa: E402
from server.sql.introspect import describe_schema  # noqa: E402
from server.sql.profile import profile_table  # noqa: E402

TARGET_S = 1.0


def _time(fn: Callable[[], Any], repeat: int) -> list[float]:
    fn()  # warm-up: connection, catalog caches
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def _figure(what: str, samples: list[float], target: float | None) -> dict[str, Any]:
    median = statistics.median(samples)
    p90 = statistics.quantiles(samples, n=10, method="inclusive")[8] if len(samples) > 1 else median
    return {
        "what": what,
        "unit": "s",
        "median": median,
        "p90": p90,
        "samples": len(samples),
        "target": f"<= {target}" if target is not None else None,
        "passed": None if target is None else median <= target,
    }


def _wide_catalog(engine: sa.Engine, tables: int) -> None:
    columns = ", ".join(f"c{i} integer" for i in range(10))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA wide")
        for i in range(tables):
            conn.exec_driver_sql(f"CREATE TABLE wide.t{i} (id integer PRIMARY KEY, {columns})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--tables", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="bench-schema-"))
    figures: list[dict[str, Any]] = []
    pg = EmbeddedPostgres(state / "state", demo_data=True)
    try:
        pg.start()
        setup = dict(pg.timings)
        pg.stop()
        start = time.perf_counter()
        pg = EmbeddedPostgres(state / "state", demo_data=True)
        pg.start()
        setup["restart_s"] = time.perf_counter() - start
        figures.append(_figure("initdb + start (first start)", [setup["ready_s"]], None))
        figures.append(_figure("demo load (COPY + keys + ANALYZE)", [setup["demo_load_s"]], None))
        figures.append(
            _figure("restart (stop, start: reuse cluster and data)", [setup["restart_s"]], None)
        )

        query = sa.create_engine(pg.query_url)
        admin = sa.create_engine(pg.admin_url)
        tables = len(describe_schema(query)["schema"]["tables"])
        samples = _time(lambda: describe_schema(query), args.repeat)
        figures.append(_figure(f"/schema, demo data ({tables} tables)", samples, TARGET_S))
        source = profile_table(query, "flights")["source"]
        samples = _time(lambda: profile_table(query, "flights"), args.repeat)
        figures.append(_figure(f"profile of flights ({source})", samples, TARGET_S))

        with admin.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE flights_unanalyzed WITH (autovacuum_enabled = false) "
                "AS SELECT * FROM flights"
            )
        source = profile_table(query, "flights_unanalyzed")["source"]
        samples = _time(
            lambda: profile_table(query, "flights_unanalyzed"), max(3, args.repeat // 2)
        )
        figures.append(_figure(f"profile of flights without statistics ({source})", samples, None))

        _wide_catalog(admin, args.tables)
        tables = len(describe_schema(query)["schema"]["tables"])
        samples = _time(lambda: describe_schema(query), args.repeat)
        figures.append(_figure(f"/schema, wide catalog ({tables} tables)", samples, TARGET_S))
        query.dispose()
        admin.dispose()
    finally:
        pg.stop()
        shutil.rmtree(state, ignore_errors=True)

    for f in figures:
        verdict = "" if f["passed"] is None else ("  ok" if f["passed"] else "  MISSED")
        target = f" (target {f['target']} s)" if f["target"] else ""
        print(
            f"{f['what']:<58} median {f['median'] * 1000:8.1f} ms  p90 {f['p90'] * 1000:8.1f} ms"
            f"{target}{verdict}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 1 if any(f["passed"] is False for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
