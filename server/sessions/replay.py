"""Importing a notebook: its cells replayed, in order, as the steps of a new session.

``POST /sessions`` may carry a notebook (or a list of cells); ``server.notebook`` reads it
into cells, and the session manager starts a ``Replay`` that runs them through the session
like any client's steps, so the
session's history, cache keys, checkpoints and export are as if they had been sent one by
one. Each cell's outcome is kept: ``ok`` (with its execution count, cache key, row count),
``failed`` (with the error as the API would have answered it) or ``skipped``. A failure stops
the replay unless the cell is tagged ``raises-exception`` or the request said
``"stop_on_error": false``.

The import answers when the replay is done, or after ``import_wait_s`` with 202: then the
client polls ``GET /sessions/{id}/import``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from server.errors import DataExecError
from server.notebook.importer import ImportedCell
from server.sessions.execution import ExecutionRequest

Execute = Callable[[ExecutionRequest], Awaitable[dict[str, Any]]]

log = logging.getLogger(__name__)


@dataclass
class Replay:
    """The replay of one imported notebook into one session."""

    cells: list[ImportedCell]
    stop_on_error: bool
    max_rows: int
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Future[None] | None = None

    def start(self, execute: Execute, live: Callable[[], bool]) -> None:
        """Run the cells as steps with ``execute`` while ``live()`` says the session is."""
        self.task = asyncio.ensure_future(self._run(execute, live))

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; whether the replay is done."""
        assert self.task is not None
        done, _ = await asyncio.wait({self.task}, timeout=timeout)
        return bool(done)

    @property
    def state(self) -> str:
        if self.task is None or not self.task.done():
            return "running"
        failed = any(o["status"] == "failed" and not o["allowed"] for o in self.outcomes)
        return "failed" if failed else "done"

    def describe(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "total": len(self.cells),
            "finished": len(self.outcomes),
            "cells": self.outcomes,
        }

    async def _run(self, execute: Execute, live: Callable[[], bool]) -> None:
        stopped = False
        for cell in self.cells:
            if not live():  # deleted, expired, or the server is stopping
                stopped = True
            outcome: dict[str, Any] = {
                "cell_index": cell.cell_index,
                "language": cell.language,
                "allowed": cell.allow_error,
            }
            if stopped:
                self.outcomes.append({**outcome, "status": "skipped"})
                continue
            request = ExecutionRequest(cell.code, self.max_rows, cell.language, cell.result_name)
            try:
                answer = await execute(request)
            except DataExecError as exc:
                detail = exc.detail()
                outcome.update(
                    status="failed",
                    execution_count=detail.get("execution_count"),
                    error={
                        k: detail[k] for k in ("type", "message", "ename", "evalue") if k in detail
                    },
                )
                stopped = self.stop_on_error and not cell.allow_error
            except Exception:
                log.exception("replay of an imported notebook failed")
                outcome.update(
                    status="failed", error={"type": "INTERNAL", "message": "internal error"}
                )
                stopped = True
            else:
                outcome.update(
                    status="ok",
                    execution_count=answer["execution_count"],
                    cache_key=answer["cache_key"],
                    row_count=answer["metadata"]["row_count"],
                    result_name=answer.get("result_name"),
                )
            self.outcomes.append(outcome)
