"""A session's history as a Jupyter notebook an analyst can read and re-run.

``build_notebook`` turns a session's steps (``Step``: what the history records) into an
nbformat v4.5 notebook; ``percent`` writes it as a script, ``importer`` reads notebooks
back into steps.

The notebook, top to bottom:

- a markdown cell saying what it is (session id, creation time, dialect, pool, DataExec
  version, steps), the helpers the code uses, and how to re-run it elsewhere. It holds only
  what ``NotebookSession`` holds: no token, password, database URL, host path or internal id;
- a setup code cell doing what warm kernels did before the session began (imports and
  ``%load_ext dataexec_kernel``), marked ``{"dataexec": {"role": "setup"}}``;
- one code cell per step, in the order given, as the kernel ran it (``%%sql name`` cells for
  SQL, the whole prepared cell for execute-on-data), numbered as in the session, with the
  step's facts under ``metadata.dataexec``. A step that did not end ``ok`` is tagged
  ``dataexec-<status>``; a failed one also ``raises-exception``, so that nbclient (and
  "Run All" tools that honour the tag) go on past it. A markdown note follows a step that
  did not end ``ok`` unless its own error output already tells what happened;
- a markdown cell before each step that ran in a replacement kernel, saying why the kernel
  was replaced and which frames were restored.

The same input always gives the same notebook: cell ids are derived from positions and step
numbers, never random.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import nbformat

from server import clock

SETUP_LINES = ("import numpy as np", "import pandas as pd", "%load_ext dataexec_kernel")
SETUP_ROLE = "setup"
FAILED_TAG = "dataexec-failed"
RAISES_TAG = "raises-exception"  # nbclient lets a cell with this tag raise and runs on
# Errors the user's code caused in a kernel that lived on: the kernel's own error output says
# what happened. Other failures (limits, crashes) cost the kernel and need a word from us.
USER_CODE_ERRORS = frozenset({"EXECUTION_ERROR", "SQL_NOT_ALLOWED"})
# Mimetypes of ours that carry data for the server, not for readers.
INTERNAL_MIMETYPE_PREFIX = "application/vnd.dataexec."
CLIENT_INSTALL = (
    "Install the client package `dataexec-kernel` into the environment of your Jupyter "
    "kernel. It is not on PyPI: your DataExec server hands it out (`GET /client` names the "
    "wheel; `pip install <server>/client/<wheel>`), or install it from the `kernel_image` "
    "directory of DataExec (`pip install './kernel_image[postgresql]'` to query PostgreSQL "
    "directly)."
)

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
LANGUAGE_INFO = {
    "name": "python",
    "codemirror_mode": {"name": "ipython", "version": 3},
    "file_extension": ".py",
    "mimetype": "text/x-python",
    "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3",
}

REPLACEMENT_REASONS = {
    "culled": "was shut down after being idle for longer than its pool allows",
    "out_of_memory": "ran out of memory and was killed",
    "timeout": "was stopped after a step ran past the time limit",
    "output_too_large": "was dropped after a step sent more output than DataExec accepts",
    "kernel_died": "crashed",
    "restart": "was restarted on request",
    "server_restart": "was lost when the DataExec server restarted",
    "shut_down": "was shut down",
}
FAILURE_EXPLANATIONS = {
    "TIMEOUT": "DataExec stopped it at the time limit of its pool; run elsewhere, it may "
    "take as long again.",
    "OUT_OF_MEMORY": "Its kernel ran out of memory and was killed; running it needs more "
    "memory than the pool allowed.",
    "OUTPUT_TOO_LARGE": "It sent more output than DataExec accepts, and its kernel was dropped.",
    "KERNEL_DIED": "Its kernel died while running it.",
    "SQL_NOT_ALLOWED": "DataExec's read-only check refused the query.",
}


class Step(Protocol):
    """A step of a session as the export reads it (``sessions.history.Step``)."""

    execution_count: int
    language: str
    cell: str  # what the kernel ran
    started: dt.datetime
    kind: str
    result_name: str | None
    status: str  # ok, failed, cancelled, running
    error_type: str | None
    error: dict[str, Any] | None
    elapsed_ms: float | None
    row_count: int | None
    cache_key: str | None
    kernel_replaced: str | None
    restored_frames: list[str]
    outputs: list[dict[str, Any]]


@dataclass(frozen=True)
class NotebookSession:
    """What the notebook may say about its session; nothing else about it reaches the file."""

    session_id: str  # the client's session id
    created: dt.datetime
    dialect: str  # e.g. "postgresql"
    server_version: str
    pool: str


# --- building --------------------------------------------------------------------------


def build_notebook(
    session: NotebookSession, executions: Sequence[Step], *, outputs: bool = True
) -> nbformat.NotebookNode:
    """The session's steps as an nbformat v4.5 notebook; ``outputs=False`` gives a clean one."""
    ids = _CellIds()
    cells = [
        _markdown(ids.take("dataexec-intro"), _intro(session, executions, outputs=outputs)),
        _code(ids.take("dataexec-setup"), "\n".join(SETUP_LINES), {"dataexec": {"role": "setup"}}),
    ]
    for record in executions:
        cells.extend(_step_cells(record, ids, outputs=outputs))
    notebook = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": dict(KERNELSPEC),
            "language_info": dict(LANGUAGE_INFO),
            "dataexec": {
                "session_id": session.session_id,
                "created": clock.iso(session.created),
                "dialect": session.dialect,
                "pool": session.pool,
                "server_version": session.server_version,
                "steps": len(executions),
                "outputs": outputs,
            },
        },
        "cells": cells,
    }
    return nbformat.from_dict(notebook)


class _CellIds:
    """Deterministic, unique cell ids (nbformat 4.5: 1-64 of ``[a-zA-Z0-9-_]``)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def take(self, wanted: str) -> str:
        candidate, n = wanted, 1
        while candidate in self.used:
            n += 1
            candidate = f"{wanted}-{n}"
        self.used.add(candidate)
        return candidate


def _markdown(cell_id: str, text: str) -> dict[str, Any]:
    return {"id": cell_id, "cell_type": "markdown", "metadata": {}, "source": text}


def _code(
    cell_id: str,
    source: str,
    metadata: dict[str, Any],
    execution_count: int | None = None,
    outputs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "id": cell_id,
        "cell_type": "code",
        "metadata": metadata,
        "execution_count": execution_count,
        "source": source,
        "outputs": outputs or [],
    }


def _step_cells(record: Step, ids: _CellIds, *, outputs: bool) -> Iterator[dict[str, Any]]:
    """The replacement note (if any), the step's code cell, and its note (if any)."""
    n = record.execution_count
    if record.kernel_replaced is not None:
        yield _markdown(ids.take(f"kernel-replaced-{n}"), _replacement_note(record))
    cell_outputs = _clean_outputs(record.outputs, n) if outputs else []
    metadata: dict[str, Any] = {"dataexec": _step_metadata(record)}
    tags = _step_tags(record)
    if tags:
        metadata["tags"] = tags
    yield _code(ids.take(f"step-{n}"), record.cell, metadata, n if outputs else None, cell_outputs)
    shows_error = any(o["output_type"] == "error" for o in cell_outputs)
    note = _step_note(record, shows_error)
    if note is not None:
        yield _markdown(ids.take(f"step-{n}-note"), note)


def _step_metadata(record: Step) -> dict[str, Any]:
    """The step's facts, kept under ``metadata.dataexec`` of its cell."""
    facts: dict[str, Any] = {
        "execution_count": record.execution_count,
        "status": record.status,
        "kind": record.kind,
        "language": record.language,
        "started": clock.iso(record.started, "milliseconds"),
        "elapsed_ms": record.elapsed_ms,
        "row_count": record.row_count,
        "result_name": record.result_name,
        "cache_key": record.cache_key,
    }
    if record.status == "failed":
        facts["error_type"] = record.error_type
        facts["error_message"] = _error_message(record)
        error = record.error or {}
        # Only the user-facing parts: ename/evalue, never the traceback or request details.
        facts.update({k: error[k] for k in ("ename", "evalue") if isinstance(error.get(k), str)})
    if record.kernel_replaced is not None:
        facts["kernel_replaced"] = record.kernel_replaced
        facts["restored_frames"] = list(record.restored_frames)
    return facts


def _step_tags(record: Step) -> list[str]:
    if record.status == "ok":
        return []
    if record.status == "failed":
        return [FAILED_TAG, RAISES_TAG]
    return [f"dataexec-{_tag_word(record.status)}"]


def _tag_word(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()) or "unknown"


def _error_message(record: Step) -> str:
    error = record.error or {}
    if isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error.get("ename"), str):
        return f"{error['ename']}: {error.get('evalue', '')}"
    return record.error_type or "failed"


def _step_note(record: Step, shows_error: bool) -> str | None:
    """What a reader should know about a step that did not end ``ok``, if its cell is silent."""
    n = record.execution_count
    if record.status == "ok":
        return None
    if record.status == "cancelled":
        return (
            f"**Step {n} was cancelled** before it finished (the client went away or "
            "interrupted it); its outputs, if any, are what it produced until then."
        )
    if record.status != "failed":
        return f"**Step {n} was still {_tag_word(record.status)}** when this notebook was made."
    if shows_error and record.error_type in USER_CODE_ERRORS:
        return None
    error_type = record.error_type or "unknown error"
    paragraphs = [
        f"**Step {n} failed** ({_code_span(error_type)}): {_code_span(_error_message(record))}",
        FAILURE_EXPLANATIONS.get(error_type, ""),
        f"The cell is tagged `{RAISES_TAG}`, so a top-to-bottom run goes on past it if it "
        "fails again.",
    ]
    return "\n\n".join(p for p in paragraphs if p)


def _replacement_note(record: Step) -> str:
    reason = record.kernel_replaced or ""
    why = REPLACEMENT_REASONS.get(reason, f"was replaced ({_code_span(reason)})")
    frames = ", ".join(_code_span(name) for name in record.restored_frames)
    restored = (
        f"Restored into the new kernel from their checkpoints: {frames}."
        if frames
        else "No frames were restored into the new kernel."
    )
    return (
        f"**New kernel before step {record.execution_count}.** The previous kernel {why}. "
        f"{restored} Other variables of earlier steps were gone in DataExec from here on; "
        "a top-to-bottom run of this notebook still has them."
    )


def _intro(session: NotebookSession, executions: Sequence[Step], *, outputs: bool) -> str:
    """The first cell: what this notebook is, its helpers, and how to re-run it elsewhere."""
    failed = sum(r.status == "failed" for r in executions)
    cancelled = sum(r.status == "cancelled" for r in executions)
    replaced = sum(r.kernel_replaced is not None for r in executions)
    steps = f"{len(executions)} ({failed} failed, {cancelled} cancelled)"
    if replaced:
        steps += f"; the kernel was replaced {_times(replaced)}"
    shown = (
        "Outputs are those the steps produced in DataExec."
        if outputs
        else "This copy has no outputs: run it to see them."
    )
    return f"""# DataExec session {_code_span(session.session_id)}

- **Session:** {_code_span(session.session_id)}, created {clock.iso(session.created)}, \
pool {_code_span(session.pool)}
- **Database:** {session.dialect}
- **Steps:** {steps}
- **Exported by:** DataExec {session.server_version}

Each code cell after the setup cell is one step of the session, as its kernel ran it and \
numbered as in the session. SQL steps use the `%%sql name` cell magic; a step sent to \
`/execute-on-data` begins by binding `input_data` to the frames it was given. {shown} \
Failed and cancelled steps are kept, tagged `{FAILED_TAG}` or `dataexec-cancelled`, and \
explained where their output does not show it; failed steps are also tagged `{RAISES_TAG}` \
so that running all cells goes on past them. Each step's status, start, duration, row count \
and cache key are in its cell metadata under `dataexec`.

## Helpers

The setup cell does what DataExec's kernels did before the first step: it imports numpy \
and pandas and loads the `dataexec_kernel` extension, which defines

- `sql(query, params)`: runs one read-only query and returns a pandas DataFrame; `params` \
(optional) fills `:name` placeholders;
- `%%sql name`: a cell magic that runs the cell's query with `sql()` and keeps the \
DataFrame as `name`;
- `conn`: a DB-API connection for other tools, e.g. `pd.read_sql(query, conn)`;
- `load(key)`: the DataFrame cached under a cache key;
- `save(df, name)`: caches a DataFrame and returns its new cache key (inside DataExec, or \
through a DataExec server).

## Re-running it outside DataExec

1. {CLIENT_INSTALL}
2. Say where the data is, in one of two ways (or call `dataexec_kernel.connect(...)` first):
   - through a DataExec server: set `DATAEXEC_URL` to its address and `DATAEXEC_TOKEN` to \
your API token. Queries then pass the server's read-only checks, and the cache keys of \
this notebook work with `load()`;
   - straight to the database: set `DATAEXEC_DATABASE_URL` to a SQLAlchemy URL of a \
read-only role. `sql()`, `%%sql` and `conn` then query it directly; `load()` of a cache \
key still needs a DataExec server.
3. Start Jupyter in that environment and run all cells.

This notebook holds no credentials and no database address: bring your own.
"""


def _times(n: int) -> str:
    return "once" if n == 1 else "twice" if n == 2 else f"{n} times"


# --- outputs ---------------------------------------------------------------------------


def _clean_outputs(outputs: Iterable[dict[str, Any]], execution_count: int) -> list[dict[str, Any]]:
    """Outputs as nbformat v4 wants them; internal mimetypes and unknown kinds left out."""
    cleaned = (_clean_output(output, execution_count) for output in outputs)
    return [output for output in cleaned if output is not None]


def _clean_output(output: Any, execution_count: int) -> dict[str, Any] | None:
    kind = output.get("output_type") if isinstance(output, dict) else None
    if kind == "stream":
        name = output.get("name")
        text = _multiline(output.get("text"))
        if name not in ("stdout", "stderr") or text is None:
            return None
        return {"output_type": "stream", "name": name, "text": text}
    if kind == "error":
        traceback = output.get("traceback")
        if not isinstance(traceback, list):
            traceback = []
        return {
            "output_type": "error",
            "ename": str(output.get("ename", "")),
            "evalue": str(output.get("evalue", "")),
            "traceback": [line for line in traceback if isinstance(line, str)],
        }
    if kind in ("display_data", "execute_result"):
        data = _mimebundle(output.get("data"))
        if not data:
            return None
        metadata = output.get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
        cleaned = {
            "output_type": kind,
            "data": data,
            "metadata": {k: v for k, v in metadata.items() if not _internal_mimetype(k)},
        }
        if kind == "execute_result":
            # The kernel counts from 1 again after a replacement; the session's count runs on.
            cleaned["execution_count"] = execution_count
        return cleaned
    return None


def _mimebundle(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        return {}
    bundle: dict[str, Any] = {}
    for mimetype, value in data.items():
        if _internal_mimetype(mimetype):
            continue
        if re.fullmatch(r"application/(.*\+)?json", mimetype):
            bundle[mimetype] = value  # JSON mimetypes hold any JSON value
        elif (text := _multiline(value)) is not None:
            bundle[mimetype] = text
    return bundle


def _internal_mimetype(key: Any) -> bool:
    return not isinstance(key, str) or key.startswith(INTERNAL_MIMETYPE_PREFIX)


def _multiline(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return "".join(value)
    return None


# --- small text helpers ----------------------------------------------------------------


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _code_span(text: str) -> str:
    """``text`` as a Markdown code span, whatever backticks it holds."""
    text = _one_line(text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}"
