"""One session: its identity, its kernel, its frames and its turn-taking state.

A session is keyed by (tenant, client id); ``id`` is the internal UUID used in the store,
on disk and in labels, never the client's string. The manager owns the lifecycle; this is
the value it keeps per session.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server import clock
from server.broker.caller import Caller
from server.errors import Cancelled, ValidationError
from server.kernels.kernel import Kernel
from server.kernels.pool import KernelPool
from server.sessions.history import ExecutionRecord, FrameRecord, StepWrite

if TYPE_CHECKING:
    from server.sessions.replay import Replay

SESSION_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

# Why work of a session was stopped under a request, by the reason its kernel was let go
# for (``Kernel.lost``): what the request's CANCELLED answer says.
STOPPED_BECAUSE = {
    "session_deleted": "the session was deleted",
    "session_expired": "the session expired",
    "restart": "the session was restarted",
    "server_shutdown": "the server is shutting down",
    "session_terminated": "an operator ended the session",
}


def check_id(client_id: Any) -> str:
    """A client's session id, or ValidationError."""
    if not isinstance(client_id, str) or not SESSION_ID.match(client_id):
        raise ValidationError("session_id must be 1-128 characters of A-Z a-z 0-9 . _ -")
    return client_id


def cancelled(reason: str, when: str, **extra: Any) -> Cancelled:
    """The CANCELLED answer of a request whose session was let go ``when`` (e.g. "while the
    cell ran"); ``reason`` as ``Kernel.lost`` names it."""
    why = STOPPED_BECAUSE.get(reason, f"its kernel was shut down ({reason})")
    return Cancelled(f"{why} {when}", reason=reason, **extra)


@dataclass(frozen=True)
class Replacement:
    """A session got a fresh kernel: why, and which frames came back into it."""

    reason: str
    restored: list[str]
    failed: dict[str, str]

    def describe(self) -> dict[str, Any]:
        return {
            "kernel_replaced": True,
            "replaced_reason": self.reason,
            "restored_frames": self.restored,
            "unrestored_frames": self.failed,
        }


@dataclass
class Session:
    """One analysis: a kernel when it has one, its named frames, its queue of requests."""

    tenant: str
    client_id: str  # "" for the throwaway session of a session-less request
    pool: KernelPool
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.time)
    execution_count: int = 0
    kernel: Kernel | None = None
    caller: Caller | None = None
    lost_reason: str | None = None  # why the last kernel went, until a new one serves
    # A replacement done outside a step (restart) that the next step's record shows.
    replacement: Replacement | None = None
    frames: dict[str, FrameRecord] = field(default_factory=dict)
    frames_as_of: int = 0  # the execution count after which they were last checkpointed
    frames_changed: bool = True  # whether the last step may have changed them
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0
    running: ExecutionRecord | None = None
    after_step: asyncio.Future[None] | None = None  # the checkpoint pass after a step
    store_write: asyncio.Future[None] | None = None  # writes ``unwritten`` to the store
    unwritten: list[StepWrite] = field(default_factory=list)  # steps not yet in the store
    write_now: bool = False  # someone waits for ``unwritten`` to be written
    replay: Replay | None = None  # an imported notebook being replayed into the session
    ended: str | None = None  # "deleted" or "expired" once the manager has let it go

    @property
    def persistent(self) -> bool:
        """Throwaway sessions (no client id) are neither stored nor checkpointed."""
        return bool(self.client_id)

    @property
    def store_id(self) -> str | None:
        """The session's id in the store, for the lineage of its frames (None: throwaway)."""
        return self.id if self.persistent else None

    def busy(self) -> bool:
        """A request runs or waits, or the last step's pass or store write is unfinished."""
        return self.lock.locked() or any(
            task is not None and not task.done() for task in (self.after_step, self.store_write)
        )

    def describe(self) -> dict[str, Any]:
        """The session as ``GET /sessions/{id}`` shows it."""
        if self.running is not None:
            state = "busy"
        elif self.kernel is not None:
            state = "idle"
        else:
            state = "no_kernel"
        return {
            "session_id": self.client_id,
            "state": state,
            "pool": self.pool.name,
            "kernel": {
                "status": "ready" if self.kernel else "none",
                "lost_reason": self.lost_reason,
            },
            "created": clock.iso(self.created),
            "last_activity": clock.iso(self.last_activity),
            "execution_count": self.execution_count,
            "queued": self.waiting,
            "frames": sorted(self.frames),
        }
