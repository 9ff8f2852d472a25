"""A session's history as the store keeps it: what ran, how it went, what it produced.

These records are what outlives kernels and server restarts, and what the notebook export
reads. They are plain values: ``server.sessions.records`` reads and writes them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ExecutionRecord:
    """One step of a session.

    ``code`` is what the client sent (for SQL: the query alone); ``cell`` is what the kernel
    ran (``%%sql name`` plus the query for SQL; the whole prepared cell for execute-on-data).
    ``status`` is ``ok``, ``failed`` or ``cancelled``; a failed step has ``error_type`` (the
    API's error type, e.g. ``EXECUTION_ERROR``, ``TIMEOUT``) and ``error`` (``message``,
    and for user-code errors ``ename``, ``evalue``). ``outputs`` are nbformat v4 output
    dicts as the kernel sent them (an error output included). ``kernel_replaced`` is why the
    kernel was replaced just before this step (``culled``, ``out_of_memory``, ``timeout``,
    ``restart``, ``server_restart``, ...), with the frames brought back in
    ``restored_frames``.
    """

    execution_count: int
    language: str
    code: str
    cell: str
    started: dt.datetime
    kind: str = "execute"  # or "execute_on_data"
    result_name: str | None = None
    status: str = "running"
    error_type: str | None = None
    error: dict[str, Any] | None = None
    elapsed_ms: float | None = None
    row_count: int | None = None
    cache_key: str | None = None
    kernel_replaced: str | None = None
    restored_frames: list[str] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, error_type: str, message: str, extra: dict[str, Any] | None = None) -> None:
        """The step failed with an API error (for user-code errors: ename and evalue too)."""
        self.status, self.error_type = "failed", error_type
        self.error = {"message": message}
        self.error.update({k: v for k, v in (extra or {}).items() if k in ("ename", "evalue")})


@dataclass
class FrameRecord:
    """A named DataFrame of a session, as the last checkpoint pass saw it.

    ``cache_key`` is its checkpoint (None when it did not fit the session's checkpoint
    budget, and then it cannot be restored into a fresh kernel).
    """

    name: str
    rows: int
    columns: list[str]
    dtypes: dict[str, str]
    bytes: int
    cache_key: str | None
    updated: dt.datetime
    note: str | None = None


@dataclass(frozen=True)
class StepWrite:
    """A step as the store gets it: its record, the frames its checkpoint pass found (None:
    no pass ran) and why its kernel was lost, if it was."""

    record: ExecutionRecord
    frames: list[FrameRecord] | None
    lost_reason: str | None
