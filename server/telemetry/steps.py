"""One execution seen from outside: its metrics and its log line.

``observe_step`` wraps a step (a cell in a session, a throwaway kernel's run, SQL run in
the server): it times it, counts it by language, pool and status (``ok`` or the error
type the client got; ``cancelled`` when the request went away) and writes one line to the
``server.execution`` logger with the request id, tenant, session, execution count,
duration, status and error type. The code is in the line only when the operator turned
``log_code`` on: code may hold literals a tenant would not want in a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from server.telemetry.logs import REQUEST_ID
from server.telemetry.metrics import Metrics

log = logging.getLogger("server.execution")


@dataclass
class Step:
    """What the wrapped code learns while the step runs (count, why a kernel was replaced)."""

    tenant: str
    session: str | None
    language: str
    kind: str
    pool: str
    code: str | None  # None unless log_code
    execution_count: int | None = None
    kernel_replaced: str | None = None


@contextlib.contextmanager
def observe_step(metrics: Metrics, step: Step) -> Iterator[Step]:
    """Time ``step``, then count it and log its line, whatever its outcome."""
    started = time.perf_counter()
    status = "INTERNAL"
    try:
        yield step
        status = "ok"
    except asyncio.CancelledError:
        status = "cancelled"
        raise
    except Exception as exc:
        status = str(getattr(exc, "type", "INTERNAL"))
        raise
    finally:
        seconds = time.perf_counter() - started
        metrics.execution(step.language, step.pool, status, seconds)
        _log_line(step, status, seconds)


def _log_line(step: Step, status: str, seconds: float) -> None:
    event: dict[str, Any] = {
        "event": "execution",
        "request_id": REQUEST_ID.get(),
        "tenant": step.tenant,
        "session": step.session,
        "execution_count": step.execution_count,
        "language": step.language,
        "kind": step.kind,
        "pool": step.pool,
        "status": status if status in ("ok", "cancelled") else "error",
        "error_type": None if status in ("ok", "cancelled") else status,
        "duration_ms": round(seconds * 1000, 3),
        "kernel_replaced": step.kernel_replaced,
    }
    if step.code is not None:
        event["code"] = step.code
    count = "-" if step.execution_count is None else step.execution_count
    log.log(
        logging.ERROR if status == "INTERNAL" else logging.INFO,
        "execution %s/%s #%s %s in %s: %s %.1fms",
        step.tenant,
        step.session or "-",
        count,
        step.language,
        step.pool,
        status,
        seconds * 1000,
        extra={"event": event},
    )
