"""Warm pools: kernels started before anyone asks, each handed out once.

A ``KernelPool`` serves one profile (``[pools.<name>]``). It keeps ``min_idle`` ready kernels
that no session has touched; ``acquire`` hands one out (or, when none is idle, waits for one
that is starting) and the pool refills in the background. A kernel that leaves the pool never
comes back: ``release`` destroys it.

Counting is what keeps ``max_kernels`` honest: kernels still starting count toward the
limit, alongside idle and handed-out ones, so fast clients cannot slip past it while a start
is in flight. Past the limit a request waits up to ``capacity_wait_s``, then gets
``Capacity`` (503 with Retry-After); one that a start in flight will serve (a refill for
``min_idle`` counts) waits for that start.

A pool sizes its idle kernels to the demand (``idle_target``): while kernels are taken faster
than one start covers, it keeps enough idle ones for the requests that arrive during a start,
twice over (the rate over the last ``demand_window_s``, times a start's moving-average wall
time), between ``min_idle`` and ``max_kernels``; when demand falls, the surplus idle kernels
are destroyed one per check. A pool with ``min_idle = 0`` keeps none, whatever the demand.

Waiters are served first come, first served: a kernel that becomes ready goes to the oldest
waiter, and only when nobody waits does it join the idle queue.

With ``warm_charts``, idle kernels draw a chart (``Kernel.warm_up_charts``) once the pool
has nothing starting and nobody waiting: on a busy server the cpu goes to starts (drawn
during every start, it cut a soak's throughput by a third); a kernel that goes straight to
a waiter leaves the chart to its session.

Tenants that share a pool each get a fair share of it: ``max_kernels`` divided by the number
of tenants that may use the pool (at least one). A tenant holding (or waiting for) its share
is refused at once with ``RateLimited``, so the shares together never exceed ``max_kernels``
and a tenant under its share always gets a kernel, however many another one asks for. A pool
of one tenant is all its share: past ``max_kernels`` it waits, then gets ``Capacity``.

A configuration reload (``reconfigure``) changes a pool in place: its sizes at once (idle
kernels past the new ``min_idle`` or ``max_kernels`` are destroyed, missing ones started),
its limits for kernels started from then on (idle kernels started with other limits are
replaced, and so is a start in flight), ``warm_charts`` at once (idle kernels are kept and
draw their chart when it is turned on). Handed-out kernels keep running as they started. A
pool removed from the configuration is ``retire``d: it keeps no warm kernels and serves only
the sessions it already has.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from server.config import PoolSettings
from server.errors import Capacity, DataExecError, KernelDied, RateLimited
from server.kernels.kernel import Kernel

log = logging.getLogger(__name__)

DEMAND_WINDOW_S = 30.0
START_AVERAGING = 0.3  # weight of the newest start in the moving average

Starter = Callable[[PoolSettings], Awaitable[Kernel]]


class KernelPool:
    """Warm kernels of one profile; see the module docstring."""

    def __init__(
        self,
        settings: PoolSettings,
        start_kernel: Starter,
        capacity_wait_s: float,
        start_timeout_s: float,
        tenants_sharing: int = 1,
    ) -> None:
        self.settings = settings
        self.tenant_share = max(1, settings.max_kernels // max(1, tenants_sharing))
        self.held: collections.Counter[str] = collections.Counter()  # tenant -> held or awaited
        self.owners: dict[str, str] = {}  # kernel id -> the tenant it was handed to
        self.start_kernel = start_kernel
        self.capacity_wait_s = capacity_wait_s
        self.start_timeout_s = start_timeout_s
        self.idle: collections.deque[Kernel] = collections.deque()
        self.waiters: collections.deque[asyncio.Future[Kernel]] = collections.deque()
        self.starting = 0
        self.in_use = 0
        self.started_total = 0
        self.start_failures = 0
        self.hits = 0  # kernels handed out warm, from the idle ones
        self.cold_starts = 0  # kernels a request had to wait for (none was idle)
        self.closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.demand_window_s = DEMAND_WINDOW_S
        self.taken: collections.deque[float] = collections.deque()  # when kernels were asked for
        self.start_s = 1.0  # moving average of a start's wall time (seconds)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def total(self) -> int:
        return len(self.idle) + self.starting + self.in_use

    def stats(self) -> dict[str, Any]:
        return {
            "idle": len(self.idle),
            "starting": self.starting,
            "in_use": self.in_use,
            "waiting": len(self.waiters),
            "max_kernels": self.settings.max_kernels,
            "tenant_share": self.tenant_share,
            "min_idle": self.settings.min_idle,
            "idle_target": self.idle_target(),
            "start_ms": round(self.start_s * 1000),
            "started_total": self.started_total,
            "start_failures": self.start_failures,
            "hits": self.hits,
            "cold_starts": self.cold_starts,
        }

    def reconfigure(self, settings: PoolSettings, tenants_sharing: int) -> None:
        """Take new settings (a configuration reload); see the module docstring."""
        relaunch = _launch(settings) != _launch(self.settings)
        self.settings = settings
        self.tenant_share = max(1, settings.max_kernels // max(1, tenants_sharing))
        if relaunch:
            while self.idle:
                self._destroy(self.idle.popleft())
        surplus = max(len(self.idle) - settings.min_idle, self.total - settings.max_kernels)
        for _ in range(min(surplus, len(self.idle))):
            self._destroy(self.idle.popleft())
        self.fill()
        self._warm_up_charts()

    def retire(self) -> None:
        """The pool left the configuration: no warm kernels any more; the sessions that use
        it keep it (a kernel they lose is replaced from it, with its last settings)."""
        self.settings = dataclasses.replace(self.settings, min_idle=0)
        while self.idle:
            self._destroy(self.idle.popleft())

    def idle_target(self) -> int:
        """How many idle kernels to keep now; see the module docstring."""
        now = time.monotonic()
        while self.taken and self.taken[0] < now - self.demand_window_s:
            self.taken.popleft()
        if self.settings.min_idle == 0:
            return 0
        covering = math.ceil(2 * len(self.taken) / self.demand_window_s * self.start_s)
        return max(self.settings.min_idle, min(covering, self.settings.max_kernels))

    def fill(self) -> None:
        """Start kernels until idle + starting covers the waiters and ``idle_target``, within
        max."""
        if self.closed:
            return
        wanted = len(self.waiters) + self.idle_target() - len(self.idle) - self.starting
        room = self.settings.max_kernels - self.total
        for _ in range(max(0, min(wanted, room))):
            self.starting += 1
            task = asyncio.ensure_future(self._start_one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _start_one(self) -> None:
        settings = self.settings
        began = time.monotonic()
        try:
            kernel = await self.start_kernel(settings)
        except Exception as exc:
            self.starting -= 1
            self.start_failures += 1
            log.error("pool %s: kernel start failed: %s", self.name, exc)
            error = (
                exc if isinstance(exc, DataExecError) else KernelDied("a kernel failed to start")
            )
            # Fail one waiter rather than let it hang; the others get a start of their own.
            self._fail_one_waiter(error)
            if self.waiters:
                self.fill()
            self._warm_up_charts()
            return
        self.starting -= 1
        self.started_total += 1
        self.start_s += START_AVERAGING * (time.monotonic() - began - self.start_s)
        if self.closed:
            await kernel.shutdown()
            return
        if _launch(settings) != _launch(self.settings) or self.total >= self.settings.max_kernels:
            # Reconfigured while it started: other limits now, or no room for it any more.
            self._destroy(kernel)
            return
        self._hand_out(kernel)
        self._warm_up_charts()

    def _warm_up_charts(self) -> None:
        """Draw the chart of ``warm_charts`` in idle kernels, but only once nothing of the
        pool starts and nobody waits: under load its cpu goes to starting kernels instead."""
        if self.settings.warm_charts and not self.starting and not self.waiters:
            for kernel in self.idle:
                kernel.warm_up_charts()

    def _fail_one_waiter(self, error: Exception) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
                return

    def _hand_out(self, kernel: Kernel) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(kernel)
                return
        self.idle.append(kernel)

    async def acquire(self, tenant: str = "") -> Kernel:
        """A ready kernel that no session has used, for ``tenant`` within its share of the
        pool; waits for one within the limits."""
        if self.tenant_share < self.settings.max_kernels and self.held[tenant] >= self.tenant_share:
            refused = RateLimited(
                f"this tenant holds its share of pool {self.name!r} ({self.tenant_share} of "
                f"{self.settings.max_kernels} kernels); end a session or retry later",
                pool=self.name,
                tenant_share=self.tenant_share,
            )
            refused.retry_after = math.ceil(self.capacity_wait_s) or 1
            raise refused
        self.held[tenant] += 1
        try:
            kernel = await self._acquire()
        except BaseException:
            self._let_go(tenant)
            raise
        self.owners[kernel.kernel_id] = tenant
        return kernel

    def _let_go(self, tenant: str) -> None:
        self.held[tenant] -= 1
        if self.held[tenant] <= 0:
            del self.held[tenant]

    async def _acquire(self) -> Kernel:
        self.taken.append(time.monotonic())
        while self.idle:
            kernel = self.idle.popleft()
            # Counted while it is checked (the check may ask the sandbox): a concurrent
            # acquire must not start a kernel past max_kernels meanwhile.
            self.in_use += 1
            if await kernel.usable():
                self.hits += 1
                self.fill()
                return kernel
            self.release(kernel)
        waiter: asyncio.Future[Kernel] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        self.fill()
        # Starts in flight serve the waiters in order, a refill for min_idle included: one
        # left for this waiter is worth its whole start. Past them, a full pool only frees
        # room when a kernel is given back, and that is what capacity_wait_s bounds.
        covered = len(self.waiters) <= self.starting
        timeout = self.start_timeout_s + self.capacity_wait_s if covered else self.capacity_wait_s
        try:
            kernel = await asyncio.wait_for(asyncio.shield(waiter), timeout)
            self.cold_starts += 1
            return kernel
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # A kernel reached us just as we gave up (timeout, client gone): pass it on.
                self.in_use -= 1
                self._hand_out(waiter.result())
            waiter.cancel()
            if waiter in self.waiters:
                self.waiters.remove(waiter)
            if isinstance(exc, asyncio.TimeoutError):
                raise Capacity(
                    f"all {self.settings.max_kernels} kernels of pool {self.name!r} "
                    "are busy; retry later"
                ) from None
            raise

    def release(self, kernel: Kernel) -> None:
        """Take back a handed-out kernel: it is destroyed, and the pool refills."""
        self.in_use -= 1
        tenant = self.owners.pop(kernel.kernel_id, None)
        if tenant is not None:
            self._let_go(tenant)
        self._destroy(kernel)

    def _destroy(self, kernel: Kernel) -> None:
        task = asyncio.ensure_future(self._shutdown(kernel))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shutdown(self, kernel: Kernel) -> None:
        try:
            await kernel.shutdown()
        except Exception:
            log.exception("pool %s: could not remove kernel %s", self.name, kernel.kernel_id[:12])
        self.fill()

    async def check_idle(self) -> None:
        """Drop idle kernels that died while waiting (and start replacements), and one idle
        kernel past ``idle_target`` once demand has fallen."""
        for kernel in list(self.idle):
            if not await kernel.alive():
                log.warning("pool %s: idle kernel %s died", self.name, kernel.kernel_id[:12])
                self.idle.remove(kernel)
                self._destroy(kernel)
        if len(self.idle) > self.idle_target() and not self.waiters:
            self._destroy(self.idle.popleft())

    async def close(self) -> None:
        """Destroy idle kernels and wait for starts in flight (their kernels are destroyed)."""
        self.closed = True
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(Capacity("the server is shutting down"))
        while self.idle:
            self._destroy(self.idle.popleft())
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _launch(settings: PoolSettings) -> PoolSettings:
    """What a kernel is started with (its limits), without the pool's sizes and without
    ``warm_charts`` (idle kernels draw their chart whenever it is on)."""
    return dataclasses.replace(
        settings, min_idle=0, max_kernels=1, idle_timeout_s=1.0, warm_charts=False
    )
