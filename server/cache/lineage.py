"""Lineage: what produced a cached frame, kept with its key (``GET /cache/{key}/meta``).

A step's lineage is its code or SQL (with ``params``), the session and execution count,
``kind`` (``result``, ``save``, ``checkpoint``, ``upload``, ``sql``: a frame ``sql()``
returned, kept by the broker), the frame's ``name`` and the
``inputs``: the keys the step read through ``load()`` before it put the frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NAME_LIMIT = 200


@dataclass
class StepLineage:
    """The lineage of the step a kernel runs now; the session updates it before each step."""

    session: str | None  # the client's session id (None: no session)
    step: dict[str, Any] = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list)

    def begin(self, step: dict[str, Any]) -> None:
        """A new step: its code or SQL and execution count; nothing read yet."""
        self.step, self.loaded = step, []

    def read(self, key: str) -> None:
        """The step read ``key`` (through ``load()``)."""
        self.loaded.append(key)

    def of(self, kind: str, name: str | None) -> dict[str, Any]:
        """The lineage of a frame of ``kind`` the step puts now."""
        return {
            **self.step,
            "session": self.session,
            "kind": kind,
            "name": name[:NAME_LIMIT] if name else None,
            "inputs": list(dict.fromkeys(self.loaded)),
        }


def upload_lineage(name: str | None) -> dict[str, Any]:
    """The lineage of a frame uploaded over HTTP (``save()`` outside DataExec)."""
    return StepLineage(None).of("upload", name)
