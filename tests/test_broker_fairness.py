"""One tenant's flood of queries cannot starve another: the query gate, end to end.

A kernel of tenant acme opens 64 heavy queries at once (threads in one cell) while acme also
sends heavy SQL without a session; tenant globex's ``SELECT 1`` answers while the flood still
runs, and PostgreSQL never sees more of the query role's backends at work than the gate's
bounds (``db_pool_size`` in all, ``max_queries_per_tenant`` of acme,
``max_queries_per_kernel`` of the kernel), counted in ``pg_stat_activity`` throughout.
Without the gate the same flood held 33 backends and globex waited 10.7 s. A query that
waits past ``sql_queue_wait_s`` is refused ``RATE_LIMITED``, in a kernel and without one,
and so are ``/schema`` and its profiles, which read the database as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from dataexec_testing.api import CONFIG, TOKEN_B, assert_error, ok, run, server_on, wait_for

from server.embedded.postgres import QUERY_ROLE, EmbeddedPostgres

TOTAL, PER_TENANT, PER_KERNEL = 4, 3, 2
FLOOD = 64
# About a tenth of a second of work each: a count over flights three times over. The mark
# (a literal: the guard drops comments) tells whose backend pg_stat_activity shows.
HEAVY = "SELECT count(*) AS n, '{mark}' AS mark FROM flights CROSS JOIN generate_series(1, 3)"
LONG = "SELECT count(*) AS n, '{mark}' AS mark FROM generate_series(1, 2000000000)"


def limits(total: int, per_tenant: int, per_kernel: int, wait_s: float) -> str:
    """The test CONFIG with the gate's settings (top-level keys go before its tables)."""
    return (
        f"db_pool_size = {total}\nmax_queries_per_tenant = {per_tenant}\n"
        f"max_queries_per_kernel = {per_kernel}\nsql_queue_wait_s = {wait_s}\n" + CONFIG
    )


@dataclass
class Backends:
    """Query-role backends at work, sampled from ``pg_stat_activity``: in all and by mark.

    Client backends, one per connection; a query's parallel workers are PostgreSQL's own
    (``max_parallel_workers`` bounds them for the whole server).
    """

    marks: tuple[str, ...]
    most: dict[str, int] = field(default_factory=dict)
    now: dict[str, int] = field(default_factory=dict)

    def sample(self, conn: sa.Connection) -> None:
        queries = list(
            conn.execute(
                sa.text(
                    "SELECT query FROM pg_stat_activity WHERE usename = :role "
                    "AND state = 'active' AND backend_type = 'client backend'"
                ),
                {"role": QUERY_ROLE},
            ).scalars()
        )
        marked = {m: sum(m in q for q in queries) for m in self.marks}
        self.now = {"all": len(queries), "marked": sum(marked.values()), **marked}
        for name, count in self.now.items():
            self.most[name] = max(self.most.get(name, 0), count)


@contextlib.contextmanager
def watching(embedded_pg: EmbeddedPostgres, *marks: str) -> Iterator[Backends]:
    """Sample the backends every 10 ms in a thread of its own while the block runs."""
    backends = Backends(marks)
    stop = threading.Event()
    engine = sa.create_engine(embedded_pg.superuser_url)

    def sampler() -> None:
        with engine.connect() as conn:
            while not stop.is_set():
                backends.sample(conn)
                conn.rollback()  # a fresh snapshot of pg_stat_activity each time
                stop.wait(0.01)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        yield backends
    finally:
        stop.set()
        thread.join()
        engine.dispose()


def flood_cell(mark: str, count: int) -> str:
    """A cell running ``count`` heavy queries at once; what became of them, by kind."""
    return f"""
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

def one(_):
    try:
        return int(sql({HEAVY.format(mark=mark)!r}).n[0])
    except Exception as exc:
        return type(exc).__name__

with ThreadPoolExecutor({count}) as threads:
    outcomes = Counter(threads.map(one, range({count})))
", ".join(f"{{k}}: {{v}}" for k, v in sorted(outcomes.items(), key=str))
"""


async def test_a_flood_from_one_tenant_leaves_another_its_share(
    embedded_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    kernel_mark, server_mark = "kflood-" + secrets.token_hex(4), "sflood-" + secrets.token_hex(4)
    config = limits(TOTAL, PER_TENANT, PER_KERNEL, wait_s=300)
    async with server_on(embedded_pg, tmp_path, config) as server:
        acme, globex = server.client(timeout=300), server.client(TOKEN_B, timeout=300)
        expected = await acme.post(
            "/execute", json={"language": "sql", "code": HEAVY.format(mark="warm-up")}
        )
        assert expected.status_code == 200, expected.text
        [[flights_times_three, _]] = expected.json()["data"]["rows"]
        session = "flood-" + secrets.token_hex(4)
        await ok(acme, session, "1")
        with watching(embedded_pg, kernel_mark, server_mark) as backends:
            flood = asyncio.ensure_future(run(acme, session, flood_cell(kernel_mark, FLOOD)))
            served = [
                asyncio.ensure_future(
                    acme.post(
                        "/execute",
                        json={"language": "sql", "code": HEAVY.format(mark=server_mark)},
                    )
                )
                for _ in range(8)
            ]

            async def flooding() -> bool:
                return backends.now.get(kernel_mark, 0) > 0

            await wait_for(flooding, timeout=60)
            answer = await globex.post("/execute", json={"language": "sql", "code": "SELECT 1"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["data"]["rows"] == [[1]]
            # Answered while acme's flood was still running, not after it.
            assert not flood.done()
            flooded = await flood
            for response in await asyncio.gather(*served):
                assert response.status_code == 200, response.text
        assert flooded.status_code == 200, flooded.text
        assert flooded.json()["data"]["rows"] == [[f"{flights_times_three}: {FLOOD}"]]
        assert backends.most[kernel_mark] <= PER_KERNEL, backends.most
        assert backends.most["marked"] <= PER_TENANT, backends.most  # all of acme's
        assert backends.most["all"] <= TOTAL, backends.most
        await acme.delete(f"/sessions/{session}")
        await acme.aclose()
        await globex.aclose()


async def test_a_query_that_waits_too_long_is_rate_limited(
    embedded_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    mark = "held-" + secrets.token_hex(4)
    async with server_on(embedded_pg, tmp_path, limits(2, 1, 1, wait_s=0.5)) as server:
        acme, globex = server.client(), server.client(TOKEN_B)
        session = "held-" + secrets.token_hex(4)
        with watching(embedded_pg, mark) as backends:
            # A query that runs for minutes, from a thread that outlives its cell.
            await ok(
                acme,
                session,
                "import threading\n"
                f"held = threading.Thread(target=sql, args=({LONG.format(mark=mark)!r},))\n"
                "held.start()",
            )

            async def holding() -> bool:
                return backends.now.get(mark, 0) == 1

            await wait_for(holding, timeout=30)
            in_kernel = await run(acme, session, "sql('SELECT 1')")
            detail = assert_error(in_kernel, 429, "RATE_LIMITED")
            assert detail["ename"] == "TooManyQueries"
            assert "max_queries_per_kernel" in detail["message"]
            assert int(in_kernel.headers["Retry-After"]) >= 1
            caught = await ok(
                acme,
                session,
                "from dataexec_kernel import TooManyQueries\n"
                "try:\n    sql('SELECT 1')\nexcept TooManyQueries as exc:\n"
                "    refused = exc.type\nrefused",
            )
            assert caught["data"]["rows"] == [["RATE_LIMITED"]]
            sessionless = await acme.post("/execute", json={"language": "sql", "code": "SELECT 1"})
            assert (
                "max_queries_per_tenant"
                in assert_error(sessionless, 429, "RATE_LIMITED")["message"]
            )
            other = await globex.post("/execute", json={"language": "sql", "code": "SELECT 1"})
            assert other.status_code == 200, other.text
            # The schema and its profiles read the database too: they wait their turn.
            for path in ("/schema", "/schema/flights/profile"):
                refused = await acme.get(path)
                assert (
                    "max_queries_per_tenant"
                    in assert_error(refused, 429, "RATE_LIMITED")["message"]
                ), path
                served = await globex.get(path)
                assert served.status_code == 200, served.text
            # Ending the session kills the kernel: its query is cancelled, its slot freed.
            await acme.delete(f"/sessions/{session}")

            async def released() -> bool:
                return backends.now.get(mark, 0) == 0

            await wait_for(released, timeout=30)

        async def served_again() -> bool:
            again = await acme.post("/execute", json={"language": "sql", "code": "SELECT 1"})
            return again.status_code == 200

        await wait_for(served_again, timeout=30)
        await acme.aclose()
        await globex.aclose()
