"""Checkpoints: what lets a session outlive its kernel.

After each step, once the client has its answer, a checkpoint pass (when the step's answer
says a named frame changed) sends the session's changed DataFrames to the cache within
``checkpoint_budget_bytes``, and the step is written to the store. The next step waits for
the pass only (it needs the kernel, not the store); the notebook export waits for the
writes too.

A session's steps are written in order, once the session is quiet (no request running or
queued, no new step for ``WRITE_QUIET_S``) or ``WRITE_DEFER_S`` after the first unwritten
one: back-to-back steps share one transaction, instead of each step's write running beside
the next step (on two cores it cost a back-to-back ``1+1`` about 3 ms of its 10). A reader
of the store's history (the notebook) has them written at once. A server that dies loses at
most ``WRITE_DEFER_S`` of a session's steps from its history; its kernels it loses anyway.

When a session gets a fresh kernel, ``restore`` loads the checkpointed frames back into it
before anything runs there.

The kernel reports the checkpoint keys, and a kernel runs untrusted code: ``minted`` keeps
only keys the cache made for the session's tenant (the same check guards a step's result
key); any other is dropped with a warning, so neither ``GET .../variables`` nor a restore
ever names it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from dataexec_kernel import protocol

from server import clock
from server.cache.cache import KEY
from server.kernels.kernel import Kernel
from server.sessions import execution
from server.sessions.history import ExecutionRecord, FrameRecord, StepWrite
from server.sessions.records import SessionRecords
from server.sessions.session import Session

log = logging.getLogger(__name__)

WRITE_QUIET_S = 0.02
WRITE_DEFER_S = 1.0
FORGED_KEY = "the kernel reported a cache key the server did not make for this tenant"


class Checkpoints:
    """The checkpoint passes, restores and store writes of every session."""

    def __init__(self, records: SessionRecords, budget_bytes: int, output_limit: int) -> None:
        self.records = records
        self.budget_bytes = budget_bytes
        self.output_limit = output_limit

    async def settled(self, session: Session, written: bool = False) -> None:
        """Wait for the previous step's checkpoint pass (and, if ``written``, its store write)."""
        if session.after_step is not None:
            await asyncio.shield(session.after_step)
        if written and session.store_write is not None and not session.store_write.done():
            session.write_now = True
            await asyncio.shield(session.store_write)

    def after(self, session: Session, record: ExecutionRecord) -> None:
        """Start the pass and the store write of a step whose answer is on its way."""
        session.after_step = asyncio.ensure_future(
            self._after_step(session, record, session.frames_changed)
        )

    async def _after_step(
        self, session: Session, record: ExecutionRecord, checkpoint: bool
    ) -> None:
        frames = None
        kernel = session.kernel
        try:
            if checkpoint and kernel is not None and await kernel.usable():
                frames = await self._checkpoint(session, kernel)
            else:
                session.frames_as_of = session.execution_count
        except Exception as exc:  # the step's answer is out; keep the session going
            if session.kernel is kernel:  # not merely dropped meanwhile (delete, shutdown)
                log.warning("session %s: checkpoint failed: %s", session.id, exc)
        session.unwritten.append(StepWrite(record, frames, session.lost_reason))
        # A writer that is still running takes it (its last look at ``unwritten`` and its
        # end happen in one step of the loop); a finished one is replaced.
        if session.store_write is None or session.store_write.done():
            session.store_write = asyncio.ensure_future(self._write_steps(session))

    async def _write_steps(self, session: Session) -> None:
        """Write the session's unwritten steps, in batches, each once the session is quiet."""
        while session.unwritten:
            await self._quiet(session)
            steps, session.unwritten = session.unwritten, []
            try:
                await asyncio.to_thread(self.records.record_steps, session.id, steps)
            except Exception:
                log.exception(
                    "session %s: recording steps %d-%d failed",
                    session.id,
                    steps[0].record.execution_count,
                    steps[-1].record.execution_count,
                )
        session.write_now = False

    @staticmethod
    async def _quiet(session: Session) -> None:
        """Until the session is quiet, ``WRITE_DEFER_S`` passed, or a reader waits."""
        deadline = time.monotonic() + WRITE_DEFER_S
        seen = None
        while not session.write_now and time.monotonic() < deadline:
            now = (session.execution_count, session.lock.locked() or session.running is not None)
            if now == seen and not now[1]:
                return
            seen = now
            await asyncio.sleep(WRITE_QUIET_S)

    async def minted(self, session: Session, keys: list[Any]) -> set[str]:
        """Those of ``keys`` (as a kernel reported them) that the cache made for the
        session's tenant; the others are logged as forged."""
        wellformed = [k for k in keys if isinstance(k, str) and KEY.match(k)]
        found = (
            await asyncio.to_thread(self.records.minted, session.tenant, wellformed)
            if wellformed
            else set()
        )
        for key in keys:
            if not (isinstance(key, str) and key in found):
                log.warning("session %s: %s (%.12r); dropped", session.id, FORGED_KEY, key)
        return found

    async def is_minted(self, session: Session, key: Any) -> bool:
        """Whether ``key``, as a kernel reported it, is one the cache made for the tenant."""
        return isinstance(key, str) and key in await self.minted(session, [key])

    async def _checkpoint(self, session: Session, kernel: Kernel) -> list[FrameRecord]:
        answer: protocol.CheckpointPayload = await execution.ask(
            kernel, protocol.checkpoint_expression(self.budget_bytes), self.output_limit
        )
        now = clock.now()
        previous = session.frames
        reported = [f["cache_key"] for f in answer["frames"] if f["cache_key"] is not None]
        minted = await self.minted(session, reported) if reported else set()
        for f in answer["frames"]:
            key = f["cache_key"]
            if key is not None and not (isinstance(key, str) and key in minted):
                f["cache_key"], f["note"] = None, f"{FORGED_KEY}: not restorable"
        frames = [
            FrameRecord(
                name=f["name"],
                rows=f["rows"],
                columns=f["columns"],
                dtypes=f["dtypes"],
                bytes=f["bytes"],
                cache_key=f["cache_key"],
                updated=now
                if f["changed"] or f["name"] not in previous
                else previous[f["name"]].updated,
                note=f["note"],
            )
            for f in answer["frames"]
        ]
        session.frames = {f.name: f for f in frames}
        session.frames_as_of = session.execution_count
        return frames

    async def restore(self, session: Session, kernel: Kernel) -> tuple[list[str], dict[str, str]]:
        """Load the session's checkpoints into ``kernel``; which came back, which did not."""
        keys = {f.name: f.cache_key for f in session.frames.values() if f.cache_key}
        failed = {
            f.name: f.note or "never checkpointed"
            for f in session.frames.values()
            if not f.cache_key
        }
        if not keys:
            return [], failed
        answer: protocol.RestorePayload = await execution.ask(
            kernel, protocol.restore_expression(keys), self.output_limit
        )
        failed.update(answer["failed"])
        for name in failed:
            session.frames.pop(name, None)
        return answer["restored"], failed
