"""How a session's steps reach the store (``Checkpoints``, server/sessions/checkpoints.py).

Back-to-back steps share one write once the session is quiet; a reader of the history has
them written at once; a failed write loses only its own steps. The store here is a fake
that keeps each batch it is given (the real one is under every session test); the session
is real, its steps simulated by holding its lock as a request does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

from server.sessions.checkpoints import WRITE_DEFER_S, WRITE_QUIET_S, Checkpoints
from server.sessions.history import ExecutionRecord, StepWrite
from server.sessions.session import Session


class KeptBatches:
    """What the session records are asked to write: the execution counts of each batch."""

    def __init__(self, fail_first: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail_first = fail_first

    def record_steps(self, session_id: str, steps: list[StepWrite]) -> None:
        if self.fail_first:
            self.fail_first = False
            raise RuntimeError("the store is down")
        self.batches.append([s.record.execution_count for s in steps])


def make(fail_first: bool = False) -> tuple[Checkpoints, KeptBatches, Session]:
    records = KeptBatches(fail_first)
    checkpoints = Checkpoints(records, budget_bytes=0, output_limit=0)  # type: ignore[arg-type]
    session = Session(tenant="t", client_id="s", pool=None)  # type: ignore[arg-type]
    session.frames_changed = False  # no checkpoint pass: no kernel needed
    return checkpoints, records, session


async def step(checkpoints: Checkpoints, session: Session, seconds: float) -> None:
    """One step as the manager runs it: under the session's lock, then its pass and write."""
    async with session.lock:
        session.execution_count += 1
        await asyncio.sleep(seconds)
    record = ExecutionRecord(
        session.execution_count, "python", "1+1", "1+1", dt.datetime.now(dt.UTC)
    )
    checkpoints.after(session, record)


async def written(session: Session) -> None:
    """Until the session's steps so far are written (or their write failed)."""
    assert session.after_step is not None
    await session.after_step
    assert session.store_write is not None
    await asyncio.wait_for(asyncio.shield(session.store_write), WRITE_DEFER_S + 1)


async def test_back_to_back_steps_share_one_write_once_the_session_is_quiet() -> None:
    checkpoints, records, session = make()
    for _ in range(5):
        await step(checkpoints, session, WRITE_QUIET_S / 4)
    assert records.batches == []
    await written(session)
    assert records.batches == [[1, 2, 3, 4, 5]]
    await step(checkpoints, session, 0)  # alone: written as soon as the session is quiet
    await written(session)
    assert records.batches == [[1, 2, 3, 4, 5], [6]]


async def test_a_session_that_never_rests_is_written_within_the_deferral() -> None:
    checkpoints, records, session = make()
    started = time.monotonic()
    while time.monotonic() - started < WRITE_DEFER_S + 0.3:
        await step(checkpoints, session, WRITE_QUIET_S / 4)
    assert records.batches, "nothing written while the steps kept coming"
    await written(session)
    flat = [count for batch in records.batches for count in batch]
    assert flat == list(range(1, session.execution_count + 1))


async def test_a_reader_of_the_history_has_the_steps_written_at_once() -> None:
    checkpoints, records, session = make()
    await step(checkpoints, session, 0)
    async with session.lock:  # the next request runs: the write would be deferred
        began = time.monotonic()
        await checkpoints.settled(session, written=True)
        assert time.monotonic() - began < WRITE_DEFER_S / 2
    assert records.batches == [[1]]
    assert not session.write_now


async def test_a_failed_write_loses_only_its_own_steps() -> None:
    checkpoints, records, session = make(fail_first=True)
    await step(checkpoints, session, 0)
    await written(session)
    await step(checkpoints, session, 0)
    await written(session)
    assert records.batches == [[2]]
