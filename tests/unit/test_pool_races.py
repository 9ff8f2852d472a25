"""The races of ``KernelPool`` (server/kernels/pool.py): counting, waiters, failures, close.

The pool gets a fake starter instead of a sandbox: each start it asks for stays pending
until the test finishes (or fails) it, so the test decides when each start completes and
can put a kernel's arrival exactly where a race needs it (before, after or while a waiter
gives up). Real kernels take a second to start and finish when they like; these tests take
milliseconds and are deterministic.

After every scenario the books are checked: each kernel the starter made is in exactly one
place (handed out, idle in the pool, or shut down), and the pool's counts agree.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from server.config import PoolSettings
from server.errors import Capacity, DataExecError, KernelDied
from server.kernels.pool import KernelPool

LONG = 30.0  # a wait that no test reaches


class FakeKernel:
    """What the pool calls on a kernel: usable(), alive(), shutdown(), warm_up_charts(),
    kernel_id."""

    def __init__(self, number: int, check_yields: bool = False) -> None:
        self.kernel_id = f"fake-kernel-{number:04d}-0123456789"
        self.works = True
        self.shutdowns = 0
        self.check_yields = check_yields  # usable() asks the sandbox (an await)
        self.charts_warm = False

    def warm_up_charts(self) -> None:
        self.charts_warm = True

    async def usable(self) -> bool:
        if self.check_yields:
            await asyncio.sleep(0)
        return self.works and not self.shutdowns

    async def alive(self) -> bool:
        return self.works and not self.shutdowns

    async def shutdown(self) -> None:
        self.shutdowns += 1


class FakeStarter:
    """A starter whose starts finish (or fail) only when the test says so."""

    def __init__(self, check_yields: bool = False) -> None:
        self.pending: list[asyncio.Future[FakeKernel]] = []
        self.made: list[FakeKernel] = []
        self.calls = 0
        self.check_yields = check_yields

    async def __call__(self, settings: PoolSettings) -> Any:
        self.calls += 1
        start: asyncio.Future[FakeKernel] = asyncio.get_running_loop().create_future()
        self.pending.append(start)
        return await start

    def finish(self, index: int = 0) -> Any:  # a FakeKernel, standing in for a Kernel
        start = self.pending.pop(index)
        kernel = FakeKernel(len(self.made), self.check_yields)
        self.made.append(kernel)
        start.set_result(kernel)
        return kernel

    def fail(self, error: BaseException, index: int = 0) -> None:
        self.pending.pop(index).set_exception(error)


def make_pool(
    starter: FakeStarter,
    min_idle: int = 0,
    max_kernels: int = 2,
    capacity_wait_s: float = LONG,
    start_timeout_s: float = LONG,
) -> KernelPool:
    settings = PoolSettings(name="races", min_idle=min_idle, max_kernels=max_kernels)
    return KernelPool(settings, starter, capacity_wait_s, start_timeout_s)  # type: ignore[arg-type]


async def settle(rounds: int = 10) -> None:
    """Let every ready callback and task step run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def check_books(pool: KernelPool, starter: FakeStarter, held: list[Any]) -> None:
    """Every kernel made is handed out, idle or shut down (exactly one); counts agree."""
    idle = list(pool.idle)
    for kernel in starter.made:
        places = [kernel in held, kernel in idle, kernel.shutdowns > 0]
        assert places.count(True) == 1, (kernel.kernel_id, places)
    assert all(kernel.shutdowns <= 1 for kernel in starter.made)
    assert pool.in_use == len(held)
    assert pool.starting == len(starter.pending)
    assert pool.total == len(idle) + pool.starting + pool.in_use
    assert pool.total <= pool.settings.max_kernels


async def test_kernels_still_starting_count_toward_max_kernels() -> None:
    starter = FakeStarter()
    pool = make_pool(starter, max_kernels=2)
    acquires = [asyncio.ensure_future(pool.acquire()) for _ in range(5)]
    await settle()
    assert starter.calls == 2
    assert pool.stats()["starting"] == 2 and pool.stats()["waiting"] == 5
    for _ in range(2):
        starter.finish()
        await settle()
    held = [a.result() for a in acquires if a.done()]
    assert len(held) == 2 and starter.calls == 2
    pool.release(held.pop())
    await settle()
    assert starter.calls == 3, "a release makes room for exactly one more start"
    check_books(pool, starter, held)
    for waiting in acquires:
        waiting.cancel()
    await settle()


async def test_a_kernel_being_checked_at_acquire_still_counts_toward_max_kernels() -> None:
    # usable() asks the sandbox when a channel dropped (an engine round trip with Docker):
    # while it does, a second acquire must still see the kernel as part of the pool.
    starter = FakeStarter(check_yields=True)
    pool = make_pool(starter, min_idle=1, max_kernels=1, capacity_wait_s=0.05)
    pool.fill()
    await settle()
    starter.finish()
    await settle()
    assert len(pool.idle) == 1
    first = asyncio.ensure_future(pool.acquire())
    second = asyncio.ensure_future(pool.acquire())
    await settle()
    assert starter.calls == 1, "a kernel was started past max_kernels = 1"
    assert pool.total <= 1
    with pytest.raises(Capacity):
        await second
    check_books(pool, starter, [await first])


async def test_waiters_are_served_first_come_first_served() -> None:
    starter = FakeStarter()
    pool = make_pool(starter, max_kernels=3)
    acquires = []
    for _ in range(3):
        acquires.append(asyncio.ensure_future(pool.acquire()))
        await settle()
    ready_order = [starter.finish(2), starter.finish(0), starter.finish(0)]
    got = [await a for a in acquires]
    assert got == ready_order, "the first kernel ready goes to the oldest waiter"
    check_books(pool, starter, got)


async def test_a_released_kernel_makes_room_for_the_oldest_waiter() -> None:
    starter = FakeStarter()
    pool = make_pool(starter, max_kernels=1)
    first = asyncio.ensure_future(pool.acquire())
    await settle()
    kernel = starter.finish()
    assert await first is kernel
    later = [asyncio.ensure_future(pool.acquire()) for _ in range(2)]
    await settle()
    pool.release(kernel)
    await settle()
    replacement = starter.finish()
    await settle()
    assert later[0].done() and await later[0] is replacement
    assert not later[1].done()
    check_books(pool, starter, [replacement])
    later[1].cancel()
    await settle()


async def test_a_full_pool_answers_capacity_after_capacity_wait_s() -> None:
    starter = FakeStarter()
    pool = make_pool(starter, max_kernels=1, capacity_wait_s=0.1)
    first = asyncio.ensure_future(pool.acquire())
    await settle()
    kernel = starter.finish()
    assert await first is kernel
    began = time.monotonic()
    with pytest.raises(Capacity) as refused:
        await pool.acquire()
    waited = time.monotonic() - began
    assert 0.09 <= waited < 2.0
    assert refused.value.status == 503 and refused.value.retry_after
    assert "races" in refused.value.message
    assert pool.stats()["waiting"] == 0 and starter.calls == 1
    check_books(pool, starter, [kernel])


async def test_a_full_pool_refilling_for_min_idle_waits_for_that_start_in_full() -> None:
    # One kernel handed out, the refill for min_idle = 1 starting: the pool is at
    # max_kernels, but the start in flight goes to the next waiter, however slow it is.
    starter = FakeStarter()
    pool = make_pool(starter, min_idle=1, max_kernels=2, capacity_wait_s=0.05)
    pool.fill()
    await settle()
    starter.finish()
    await settle()
    first = await pool.acquire()
    assert pool.total == 2 and pool.starting == 1
    second = asyncio.ensure_future(pool.acquire())
    third = asyncio.ensure_future(pool.acquire())  # no start left for it: capacity_wait_s
    await asyncio.sleep(0.2)  # four times capacity_wait_s
    assert not second.done()
    with pytest.raises(Capacity):
        await third
    kernel = starter.finish()
    assert await second is kernel
    check_books(pool, starter, [first, kernel])


@pytest.mark.parametrize("order", ["give_up_then_ready", "ready_then_give_up"])
async def test_a_kernel_that_arrives_as_its_waiter_is_cancelled_goes_to_the_next_waiter(
    order: str,
) -> None:
    starter = FakeStarter()
    pool = make_pool(starter, max_kernels=1)
    gone = asyncio.ensure_future(pool.acquire())
    await settle()
    staying = asyncio.ensure_future(pool.acquire())
    await settle()
    # Both in the same step of the loop: the client goes away as its kernel becomes ready.
    if order == "give_up_then_ready":
        gone.cancel()
        kernel = starter.finish()
    else:
        kernel = starter.finish()
        gone.cancel()
    await settle()
    if gone.cancelled():
        assert staying.done() and await staying is kernel
    else:  # the kernel reached its waiter before the cancellation did: held, not lost
        assert gone.result() is kernel
        staying.cancel()
    check_books(pool, starter, [kernel])
    await settle()


@pytest.mark.parametrize("delay_steps", range(4))
async def test_a_kernel_that_arrives_as_its_waiter_times_out_is_never_lost(
    delay_steps: int,
) -> None:
    # capacity_wait_s = 0: the waiter gives up at once, and the kernel is made ready at
    # each step of that giving up in turn; wherever it lands, it is accounted for.
    starter = FakeStarter()
    pool = make_pool(starter, min_idle=1, max_kernels=1, capacity_wait_s=0.0)
    pool.fill()  # a start in flight fills the pool
    await settle()
    gone = asyncio.ensure_future(pool.acquire())
    for _ in range(delay_steps):
        await asyncio.sleep(0)
    kernel = starter.finish()
    await settle()
    held = []
    if gone.exception() is None:
        held.append(gone.result())
    else:
        assert isinstance(gone.exception(), Capacity)
        assert list(pool.idle) == [kernel], "nobody waits: the kernel joins the idle queue"
    check_books(pool, starter, held)


async def test_a_failed_start_fails_exactly_one_waiter_and_the_others_keep_waiting() -> None:
    starter = FakeStarter()
    pool = make_pool(starter, max_kernels=3)
    acquires = []
    for _ in range(3):
        acquires.append(asyncio.ensure_future(pool.acquire()))
        await settle()
    starter.fail(KernelDied("the sandbox refused"), index=1)
    await settle()
    assert [a.done() for a in acquires] == [True, False, False]
    with pytest.raises(KernelDied, match="sandbox refused"):
        await acquires[0]
    assert pool.stats()["start_failures"] == 1 and pool.starting == 2
    held = [starter.finish(), starter.finish()]
    assert [await a for a in acquires[1:]] == held
    check_books(pool, starter, held)


async def test_a_start_failing_with_a_foreign_exception_answers_kernel_died() -> None:
    starter = FakeStarter()
    pool = make_pool(starter, max_kernels=1)
    waiting = asyncio.ensure_future(pool.acquire())
    await settle()
    starter.fail(RuntimeError("/secret/path/of/the/host"))
    with pytest.raises(DataExecError) as failed:
        await waiting
    assert type(failed.value) is KernelDied
    assert "/secret/path" not in failed.value.message
    check_books(pool, starter, [])


async def test_release_destroys_the_kernel_and_refills_to_min_idle() -> None:
    starter = FakeStarter()
    pool = make_pool(starter, min_idle=1, max_kernels=1)
    pool.fill()
    await settle()
    first = starter.finish()
    await settle()
    assert list(pool.idle) == [first]
    taken: Any = await pool.acquire()
    assert taken is first
    await settle()
    assert starter.calls == 1, "at max_kernels: no refill while the kernel is out"
    pool.release(first)
    await settle()
    assert first.shutdowns == 1 and first not in pool.idle
    assert starter.calls == 2, "the pool refills to min_idle once there is room"
    second = starter.finish()
    await settle()
    assert list(pool.idle) == [second]
    check_books(pool, starter, [])


async def test_an_idle_kernel_that_is_not_usable_is_destroyed_at_acquire() -> None:
    starter = FakeStarter()
    pool = make_pool(starter, min_idle=2, max_kernels=3)
    pool.fill()
    await settle()
    broken, healthy = starter.finish(), starter.finish()
    await settle()
    broken.works = False
    taken: Any = await pool.acquire()
    assert taken is healthy
    await settle()
    assert broken.shutdowns == 1 and broken not in pool.idle
    assert healthy.shutdowns == 0
    check_books(pool, starter, [healthy])


async def test_an_acquire_that_finds_only_unusable_kernels_waits_for_a_fresh_one() -> None:
    starter = FakeStarter()
    pool = make_pool(starter, min_idle=1, max_kernels=1)
    pool.fill()
    await settle()
    dead = starter.finish()
    await settle()
    dead.works = False
    waiting = asyncio.ensure_future(pool.acquire())
    await settle()
    assert dead.shutdowns == 1 and starter.calls == 2
    fresh = starter.finish()
    assert await waiting is fresh
    check_books(pool, starter, [fresh])


async def test_close_fails_every_waiter_with_capacity() -> None:
    starter = FakeStarter()
    pool = make_pool(starter, max_kernels=1)
    waiting = [asyncio.ensure_future(pool.acquire()) for _ in range(3)]
    await settle()
    closing = asyncio.ensure_future(pool.close())
    await settle()
    for task in waiting:
        assert task.done()
        with pytest.raises(Capacity, match="shutting down"):
            await task
    late = starter.finish()  # the start in flight finishes after close: destroyed
    await closing
    assert late.shutdowns == 1 and not pool.idle
    check_books(pool, starter, [])


async def test_close_shuts_down_idle_kernels_and_waits_for_starts_in_flight() -> None:
    starter = FakeStarter()
    pool = make_pool(starter, min_idle=2, max_kernels=3)
    pool.fill()
    await settle()
    idle = starter.finish()
    await settle()
    held = await pool.acquire()  # the idle one; a refill starts
    await settle()
    idle_now = starter.finish()
    await settle()
    assert list(pool.idle) == [idle_now] and pool.starting == 1
    closing = asyncio.ensure_future(pool.close())
    await settle()
    assert not closing.done(), "close waits for the start in flight"
    assert idle_now.shutdowns == 1
    late = starter.finish()
    await closing
    assert late.shutdowns == 1 and late not in pool.idle
    assert idle.shutdowns == 0 and held is idle, "a handed-out kernel is its session's"
    pool.fill()
    await settle()
    assert starter.calls == 3, "a closed pool starts nothing"
    check_books(pool, starter, [held])


async def test_idle_kernels_draw_their_warm_up_chart_only_once_nothing_starts_or_waits() -> None:
    starter = FakeStarter()
    pool = make_pool(starter, min_idle=2, max_kernels=3)
    pool.fill()
    await settle()
    first = starter.finish()
    await settle()
    assert first in pool.idle and not first.charts_warm, "a start is still in flight"
    second = starter.finish()
    await settle()
    assert first.charts_warm and second.charts_warm
    held = [await pool.acquire()]  # a refill starts: the next idle kernel waits for it
    await settle()
    third = starter.finish()
    await settle()
    assert third.charts_warm
    check_books(pool, starter, held)
    # A kernel that goes to a waiter is the waiter's: its chart is left to its session.
    cold_starter = FakeStarter()
    cold = make_pool(cold_starter, min_idle=0, max_kernels=1)
    waiting = asyncio.ensure_future(cold.acquire())
    await settle()
    kernel = cold_starter.finish()
    await settle()
    assert waiting.result() is kernel and not kernel.charts_warm
    check_books(cold, cold_starter, [kernel])


async def test_idle_kernels_follow_demand_between_min_idle_and_max_kernels() -> None:
    starter = FakeStarter()
    pool = make_pool(starter, min_idle=1, max_kernels=8)
    pool.demand_window_s = 10.0
    pool.fill()
    await settle()
    starter.finish()
    await settle()
    # Ten kernels taken (and given back) within the window...
    for _ in range(10):
        taking = asyncio.ensure_future(pool.acquire())
        await settle()
        while starter.pending:
            starter.finish()
            await settle()
        pool.release(await taking)
        await settle()
    # ... while a start takes 2 s: the requests of a start's time, twice over, stay idle.
    pool.start_s = 2.0
    assert pool.idle_target() == 4  # ceil(2 * 10 / 10 s * 2 s)
    pool.fill()
    await settle()
    while starter.pending:
        starter.finish()
        await settle()
    assert len(pool.idle) == 4
    pool.start_s = 2.0  # the fake starts took no time, and the average moved towards that
    assert pool.stats()["idle_target"] == 4 and pool.stats()["start_ms"] == 2000
    check_books(pool, starter, [])
    # Demand gone: back to min_idle, one idle kernel destroyed per check.
    pool.demand_window_s = 0.001
    await asyncio.sleep(0.01)
    for expected in (3, 2, 1, 1):
        await pool.check_idle()
        await settle()
        assert len(pool.idle) == expected
    assert not starter.pending, "a kernel destroyed for falling demand is not replaced"
    check_books(pool, starter, [])


async def test_a_pool_without_warm_kernels_keeps_none_whatever_the_demand() -> None:
    starter = FakeStarter()
    pool = make_pool(starter, min_idle=0, max_kernels=8)
    for _ in range(10):
        taking = asyncio.ensure_future(pool.acquire())
        await settle()
        starter.finish()
        pool.release(await taking)
        await settle()
    pool.start_s = 2.0
    assert pool.idle_target() == 0
    pool.fill()
    await settle()
    assert not starter.pending and not pool.idle
    check_books(pool, starter, [])
