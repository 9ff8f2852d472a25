"""Who may run a query in the analysed database now, and who waits: the ``QueryGate``.

Every query takes a slot of the gate before it reaches the database (a kernel's ``sql()``
through the broker, and SQL without a session in the server), and holds it until its
database thread has let go of the connection. Three bounds hold at once:

- ``db_pool_size`` queries in all (each holds one connection, so the database never sees
  more of DataExec's query backends than that);
- ``max_queries_per_tenant`` of one tenant, its share of those connections;
- ``max_queries_per_kernel`` of one kernel (threads in a cell open many).

A query that finds no slot waits in its tenant's queue. When a slot frees it goes to the
tenant with the fewest queries running, among those with a waiter that may run (its tenant
and kernel under their bounds); ties go to the tenant served longest ago, and within a
tenant the first to come goes first. A tenant over its share therefore waits while one
under it goes first, and a flood from one tenant costs another at most the wait for one
query to end, never a place behind the flood. A query that waits ``sql_queue_wait_s`` is
refused with ``RateLimited`` (429, Retry-After) instead of piling up.

Everything here runs on the event loop, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from server.errors import RateLimited
from server.sql.errors import QueryCancelled


@dataclass(eq=False)
class _Waiter:
    tenant: str
    kernel: str | None
    granted: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class QueryGate:
    """Slots for running queries, shared fairly between tenants (see the module docstring)."""

    def __init__(self, total: int, per_tenant: int, per_kernel: int, wait_s: float) -> None:
        self.total = total
        self.per_tenant = min(per_tenant, total)
        self.per_kernel = min(per_kernel, self.per_tenant)
        self.wait_s = wait_s
        self.running = 0
        self.by_tenant: collections.Counter[str] = collections.Counter()
        self.by_kernel: collections.Counter[tuple[str, str]] = collections.Counter()
        self.queues: dict[str, collections.deque[_Waiter]] = {}
        self._served: dict[str, int] = {}  # tenant -> when it last got a slot (a tick)
        self._tick = 0

    def stats(self) -> dict[str, int]:
        """Queries running and waiting now (for logs and /metrics)."""
        return {"running": self.running, "waiting": sum(map(len, self.queues.values()))}

    @contextlib.asynccontextmanager
    async def slot(
        self,
        tenant: str,
        kernel: str | None = None,
        *,
        abandon: asyncio.Future[Any] | None = None,
    ) -> AsyncIterator[None]:
        """Hold a slot while the block runs; ``kernel`` None is the server's own path.

        Waits its turn; ``RateLimited`` after ``wait_s``, ``QueryCancelled`` when
        ``abandon`` (e.g. the kernel hanging up) completes first.
        """
        waiter = _Waiter(tenant, kernel)
        self.queues.setdefault(tenant, collections.deque()).append(waiter)
        self._dispatch()
        if not waiter.granted.done():
            await self._wait(waiter, abandon)
        try:
            yield
        finally:
            self._release(waiter)

    async def _wait(self, waiter: _Waiter, abandon: asyncio.Future[Any] | None) -> None:
        waits: set[asyncio.Future[Any]] = {waiter.granted}
        if abandon is not None:
            waits.add(abandon)
        try:
            await asyncio.wait(waits, timeout=self.wait_s, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._leave(waiter)
            raise
        if waiter.granted.done():
            return
        self._leave(waiter)
        if abandon is not None and abandon.done():
            raise QueryCancelled()
        raise self._refusal(waiter)

    def _refusal(self, waiter: _Waiter) -> RateLimited:
        if waiter.kernel is not None and self._kernel_full(waiter):
            why = f"this kernel already runs {self.per_kernel} (max_queries_per_kernel)"
        elif self.by_tenant[waiter.tenant] >= self.per_tenant:
            why = f"this tenant already runs {self.per_tenant} (max_queries_per_tenant)"
        else:
            why = f"the database runs {self.total} queries, its most (db_pool_size)"
        error = RateLimited(
            f"the query waited {self.wait_s:g} s for its turn and was not run: {why}; "
            "run fewer queries at once",
            limit=self.per_tenant,
        )
        error.retry_after = max(1, math.ceil(self.wait_s / 4))
        return error

    def _leave(self, waiter: _Waiter) -> None:
        """A waiter gives up: out of its queue, or, granted meanwhile, its slot back."""
        if waiter.granted.done():
            self._release(waiter)
            return
        waiter.granted.cancel()
        queue = self.queues.get(waiter.tenant)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
            if not queue:
                del self.queues[waiter.tenant]
        self._dispatch()  # it may have stood in front of others

    def _kernel_full(self, waiter: _Waiter) -> bool:
        if waiter.kernel is None:
            return False
        return self.by_kernel[(waiter.tenant, waiter.kernel)] >= self.per_kernel

    def _dispatch(self) -> None:
        """Give free slots to waiters, the least served tenant first."""
        while self.running < self.total:
            best: tuple[tuple[int, int], _Waiter] | None = None
            for tenant, queue in self.queues.items():
                if self.by_tenant[tenant] >= self.per_tenant:
                    continue
                waiter = next((w for w in queue if not self._kernel_full(w)), None)
                if waiter is None:
                    continue
                rank = (self.by_tenant[tenant], self._served.get(tenant, 0))
                if best is None or rank < best[0]:
                    best = (rank, waiter)
            if best is None:
                return
            self._grant(best[1])

    def _grant(self, waiter: _Waiter) -> None:
        queue = self.queues[waiter.tenant]
        queue.remove(waiter)
        if not queue:
            del self.queues[waiter.tenant]
        self.running += 1
        self.by_tenant[waiter.tenant] += 1
        if waiter.kernel is not None:
            self.by_kernel[(waiter.tenant, waiter.kernel)] += 1
        self._tick += 1
        self._served[waiter.tenant] = self._tick
        waiter.granted.set_result(None)

    def _release(self, waiter: _Waiter) -> None:
        self.running -= 1
        self.by_tenant[waiter.tenant] -= 1
        if not self.by_tenant[waiter.tenant]:
            del self.by_tenant[waiter.tenant]
        if waiter.kernel is not None:
            key = (waiter.tenant, waiter.kernel)
            self.by_kernel[key] -= 1
            if not self.by_kernel[key]:
                del self.by_kernel[key]
        self._dispatch()
