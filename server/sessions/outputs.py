"""The outputs of one streaming request's cell, handed over as they happen.

A request that asks for a stream gives the session manager an ``OutputFeed``. The manager
marks it ``start``-ed when the request's cell begins (in the kernel, or a query in the
server): what failed before that (a full queue, a lost session, no kernel to be had) is
answered as a plain error, what follows comes through the feed. The kernel client ``put``s
every output it keeps for the answer (an nbformat v4 output; stream chunks one by one, not
merged), and the reader takes them with ``outputs`` until the request is ``finish``-ed.

Nothing is dropped and nothing waits for the reader: the kernel client never blocks on a
slow one. What a feed can hold is bounded by the output limit the client already applies
to the cell (past it the cell ends with OUTPUT_TOO_LARGE), so a feed holds at most about
``output_limit_bytes`` of outputs. A request without a feed pays nothing for it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any


class OutputFeed:
    """One request's outputs, from the kernel client (``put``) to the HTTP answer."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self._outputs: deque[dict[str, Any]] = deque()
        self._ready = asyncio.Event()
        self._finished = False

    def start(self) -> None:
        """The request's cell begins: from now on its outcome belongs to the stream."""
        self.started.set()

    def put(self, output: dict[str, Any]) -> None:
        """Called by the kernel client with each output as it arrives (never blocks)."""
        self._outputs.append(output)
        self._ready.set()

    def finish(self) -> None:
        """The request is over (answered, failed or cancelled): no more outputs come."""
        self._finished = True
        self._ready.set()

    async def wait_started(self, request: asyncio.Future[Any]) -> bool:
        """Wait until the cell starts (True) or ``request`` ends before it did (False)."""
        started = asyncio.ensure_future(self.started.wait())
        try:
            await asyncio.wait({started, request}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            started.cancel()
        return self.started.is_set()

    async def outputs(self, quiet_s: float) -> AsyncIterator[dict[str, Any] | None]:
        """Each output in order, and None after every ``quiet_s`` without one, until the
        request is finished and every output is taken."""
        while True:
            if self._outputs:
                yield self._outputs.popleft()
                continue
            if self._finished:
                return
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), quiet_s)
            except TimeoutError:
                yield None
