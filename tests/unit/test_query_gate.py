"""The query gate on its own: its bounds, whose turn comes next, and giving up in line.

The gate is pure bookkeeping on the event loop, so it is driven here by hand: slots held as
long as a test likes, released in the order the test picks. tests/test_broker_fairness.py
drives it through a real server, real kernels and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.config import load_settings
from server.errors import ConfigError, RateLimited
from server.sql.admission import QueryGate
from server.sql.errors import QueryCancelled


class Held:
    """Slots taken in tasks, each held until the test releases it."""

    def __init__(self, gate: QueryGate) -> None:
        self.gate = gate
        self.order: list[str] = []  # labels, in the order their slots were granted
        self.releases: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def take(self, label: str, tenant: str, kernel: str | None = None) -> None:
        release = self.releases[label] = asyncio.Event()

        async def hold() -> None:
            async with self.gate.slot(tenant, kernel):
                self.order.append(label)
                await release.wait()

        self.tasks[label] = asyncio.ensure_future(hold())

    async def release(self, label: str) -> None:
        self.releases[label].set()
        await self.tasks[label]
        await asyncio.sleep(0)  # let the next waiter run its block

    async def settle(self) -> None:
        for _ in range(3):
            await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def held(gate: QueryGate) -> AsyncIterator[Held]:
    slots = Held(gate)
    try:
        yield slots
    finally:
        for event in slots.releases.values():
            event.set()
        await asyncio.gather(*slots.tasks.values(), return_exceptions=True)


async def test_a_tenant_under_its_share_goes_before_the_flooding_one() -> None:
    gate = QueryGate(total=4, per_tenant=3, per_kernel=3, wait_s=10)
    async with held(gate) as slots:
        for i in range(8):
            slots.take(f"flood{i}", "acme", "k1")
        await slots.settle()
        assert slots.order == ["flood0", "flood1", "flood2"]  # its share; one slot stays free
        slots.take("other", "globex")
        await slots.settle()
        assert slots.order[-1] == "other"  # at once: the free slot
        slots.take("other2", "globex")
        await slots.settle()
        assert "other2" not in slots.order  # the database is full now
        await slots.release("flood0")
        # acme runs two, globex one: the slot goes to globex, though acme's came first.
        assert slots.order[-1] == "other2"
        await slots.release("other")
        await slots.release("other2")
        # globex runs none and waits for none: acme takes one, up to its share, not two.
        assert slots.order[-1] == "flood3"
        assert gate.stats() == {"running": 3, "waiting": 4}


async def test_tenants_running_as_many_take_turns() -> None:
    gate = QueryGate(total=2, per_tenant=2, per_kernel=2, wait_s=10)
    async with held(gate) as slots:
        slots.take("a0", "acme")
        slots.take("b0", "globex")
        for i in range(1, 4):
            slots.take(f"a{i}", "acme")
            slots.take(f"b{i}", "globex")
        await slots.settle()
        for first in ("a0", "b0", "a1", "b1"):
            await slots.release(first)
        assert slots.order == ["a0", "b0", "a1", "b1", "a2", "b2"]


async def test_a_kernel_waits_at_its_own_bound_while_its_tenant_runs_more() -> None:
    gate = QueryGate(total=4, per_tenant=3, per_kernel=1, wait_s=10)
    async with held(gate) as slots:
        slots.take("k1-a", "acme", "k1")
        slots.take("k1-b", "acme", "k1")
        slots.take("k2-a", "acme", "k2")
        slots.take("server", "acme")  # SQL without a session: no kernel bound
        await slots.settle()
        assert slots.order == ["k1-a", "k2-a", "server"]
        await slots.release("k1-a")
        assert slots.order[-1] == "k1-b"


async def test_waiting_past_the_bound_is_rate_limited_and_frees_the_place() -> None:
    gate = QueryGate(total=1, per_tenant=1, per_kernel=1, wait_s=0.05)
    async with held(gate) as slots:
        slots.take("first", "acme", "k1")
        await slots.settle()
        with pytest.raises(RateLimited) as refused:
            async with gate.slot("acme", "k1"):
                pass
        assert "max_queries_per_kernel" in refused.value.message
        assert refused.value.retry_after and refused.value.retry_after >= 1
        assert gate.stats() == {"running": 1, "waiting": 0}


async def test_a_waiter_that_hangs_up_leaves_the_line() -> None:
    gate = QueryGate(total=1, per_tenant=1, per_kernel=1, wait_s=10)
    async with held(gate) as slots:
        slots.take("first", "acme", "k1")
        await slots.settle()
        hangup: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(gate.slot("acme", "k2", abandon=hangup).__aenter__())
        await slots.settle()
        assert gate.stats()["waiting"] == 1
        hangup.set_result(b"")
        with pytest.raises(QueryCancelled):
            await waiting
        assert gate.stats() == {"running": 1, "waiting": 0}
        await slots.release("first")
        assert gate.stats() == {"running": 0, "waiting": 0}


async def test_a_cancelled_waiter_never_keeps_a_slot() -> None:
    gate = QueryGate(total=1, per_tenant=1, per_kernel=1, wait_s=10)
    async with held(gate) as slots:
        slots.take("first", "acme")
        slots.take("second", "acme")
        await slots.settle()
        slots.tasks["second"].cancel()
        await slots.release("first")
        await asyncio.gather(slots.tasks["second"], return_exceptions=True)
        assert gate.stats() == {"running": 0, "waiting": 0}
        slots.take("third", "globex")
        await slots.settle()
        assert slots.order == ["first", "third"]


@pytest.mark.parametrize(
    ("pool", "tenant", "kernel", "complaint"),
    [
        (2, 3, 1, "max_queries_per_tenant: larger than db_pool_size"),
        (4, 2, 3, "max_queries_per_kernel: larger than max_queries_per_tenant"),
    ],
)
def test_gate_settings_are_checked_against_each_other(
    tmp_path: Path, pool: int, tenant: int, kernel: int, complaint: str
) -> None:
    config = tmp_path / "dataexec.toml"
    config.write_text(
        f"db_pool_size = {pool}\nmax_queries_per_tenant = {tenant}\n"
        f"max_queries_per_kernel = {kernel}\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(env={}, config_file=config)
    assert complaint in refused.value.problems
