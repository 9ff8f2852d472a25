"""The server's memory for whole frames: one byte budget for every frame it holds at once.

A frame comes whole into the server in two places: a kernel's ``put`` (a result, a
``save()``, a checkpoint) and a query the server runs itself (SQL without a session). Each is
held until its Parquet file is written. One such frame is bounded by
``sql_max_result_bytes``; many at once, from many kernels and tenants, were bounded by
nothing but the server's memory. ``FrameMemory`` is that bound (``frame_memory_bytes``): a
frame takes its bytes from it before it is read (a ``put`` says its size first) or as its
batches arrive (a query), and gives them back when the cache has written it. A frame that
finds no room waits up to ``capacity_wait_s`` for the writes before it, then is refused
``CAPACITY``; a frame larger than the whole budget is refused ``OUTPUT_TOO_LARGE`` at once.
"""

from __future__ import annotations

import asyncio
import math

from server.errors import Capacity, OutputTooLarge


class FrameMemory:
    """A byte budget shared by every frame the server holds whole."""

    def __init__(self, limit: int, wait_s: float) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self.used = 0
        self._waiters: list[asyncio.Future[None]] = []

    def hold(self) -> Hold:
        """An empty hold, grown as its frame arrives and released once it is written."""
        return Hold(self)

    async def _take(self, size: int, held: int) -> None:
        if held + size > self.limit:
            raise OutputTooLarge(
                f"the frame is over {self.limit:,} bytes, the most the server holds in memory "
                "at once (frame_memory_bytes); make it smaller"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while self.used + size > self.limit:
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            except TimeoutError:
                error = Capacity(
                    f"the server holds {self.used:,} bytes of frames waiting to be written, "
                    f"near its frame_memory_bytes ({self.limit:,}); try again shortly"
                )
                error.retry_after = max(1, math.ceil(self.wait_s))
                raise error from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.used += size

    def _give(self, size: int) -> None:
        self.used -= size
        # Every waiter looks again: a small frame may fit where the first in line does not.
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


class Hold:
    """The bytes one frame holds of a ``FrameMemory``; ``release`` may be called twice."""

    def __init__(self, memory: FrameMemory) -> None:
        self.memory = memory
        self.bytes = 0

    async def grow(self, size: int) -> None:
        """Take ``size`` more bytes: waits for room, or raises Capacity / OutputTooLarge."""
        await self.memory._take(size, self.bytes)
        self.bytes += size

    def try_grow(self, size: int) -> bool:
        """Take ``size`` more bytes only if they are free now (never waits, never raises)."""
        memory = self.memory
        if memory.used + size > memory.limit:
            return False
        memory.used += size
        self.bytes += size
        return True

    def release(self) -> None:
        self.memory._give(self.bytes)
        self.bytes = 0
