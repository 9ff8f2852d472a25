"""A session's history as a Jupyter notebook, and notebooks back into steps to replay.

This module owns the notebook format of DataExec, both ways, and nothing else: no I/O, no
server state. ``build_notebook`` turns ``ExecutionRecord``s into an nbformat v4.5 notebook
that an analyst can read and re-run; ``to_percent_script`` writes that notebook as a
jupytext "percent" script; ``cells_from_notebook`` reads a notebook (or a plain list of
cells) that a client posts, into the steps a new session replays.

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
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import nbformat

from server.errors import ValidationError
from server.sessions.history import ExecutionRecord

MAX_IMPORTED_CELLS = 500
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


@dataclass(frozen=True)
class NotebookSession:
    """What the notebook may say about its session; nothing else about it reaches the file."""

    session_id: str  # the client's session id
    created: dt.datetime
    dialect: str  # e.g. "postgresql"
    server_version: str
    pool: str


@dataclass(frozen=True)
class ImportedCell:
    """One step to replay from an imported notebook.

    ``language`` is ``python`` or ``sql`` (then ``code`` is the query alone, and
    ``result_name`` the frame's name, None for a ``%%sql`` without one). ``allow_error``
    says the cell is tagged ``raises-exception``: its failure need not stop the replay.
    ``cell_index`` is the cell's position in the document, for messages.
    """

    language: str
    code: str
    result_name: str | None = None
    allow_error: bool = False
    cell_index: int = 0


# --- building --------------------------------------------------------------------------


def build_notebook(
    session: NotebookSession, executions: Sequence[ExecutionRecord], *, outputs: bool = True
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
                "created": _iso(session.created),
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


def _step_cells(
    record: ExecutionRecord, ids: _CellIds, *, outputs: bool
) -> Iterator[dict[str, Any]]:
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


def _step_metadata(record: ExecutionRecord) -> dict[str, Any]:
    """The step's facts, kept under ``metadata.dataexec`` of its cell."""
    facts: dict[str, Any] = {
        "execution_count": record.execution_count,
        "status": record.status,
        "kind": record.kind,
        "language": record.language,
        "started": _iso(record.started, "milliseconds"),
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


def _step_tags(record: ExecutionRecord) -> list[str]:
    if record.status == "ok":
        return []
    if record.status == "failed":
        return [FAILED_TAG, RAISES_TAG]
    return [f"dataexec-{_tag_word(record.status)}"]


def _tag_word(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()) or "unknown"


def _error_message(record: ExecutionRecord) -> str:
    error = record.error or {}
    if isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error.get("ename"), str):
        return f"{error['ename']}: {error.get('evalue', '')}"
    return record.error_type or "failed"


def _step_note(record: ExecutionRecord, shows_error: bool) -> str | None:
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


def _replacement_note(record: ExecutionRecord) -> str:
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


def _intro(
    session: NotebookSession, executions: Sequence[ExecutionRecord], *, outputs: bool
) -> str:
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

- **Session:** {_code_span(session.session_id)}, created {_iso(session.created)}, \
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


def _iso(moment: dt.datetime, timespec: str = "seconds") -> str:
    if moment.tzinfo is None:  # the store keeps naive UTC
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


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


# --- percent script --------------------------------------------------------------------

# Cell magics that jupytext writes as a cell in another language (its _JUPYTER_LANGUAGES).
JUPYTEXT_LANGUAGES = frozenset(
    "R bash sh python python2 python3 coconut javascript js perl html latex markdown pypy ruby "
    "script svg matlab octave idl robotframework sas spark sql cython haskell tcl gnuplot".split()
)
# jupytext's rules for Python lines that are magics (jupytext/magics.py, is_magic): these are
# commented with "# " on writing and uncommented on reading, escaped or not.
_MAGIC = re.compile(r"^\s*(# |#)*(%|%%|%%%)[a-zA-Z]")
_MAGIC_NOT_ESCAPED = re.compile(r"^\s*(# |#)*(%|%%|%%%)[a-zA-Z](.*)#\s*noescape")
_HELP_OR_SHELL = re.compile(r"^\s*(# |#)*\s*(\?|!)\s*[A-Za-z\.\~\$\\\/\{\}]")
_SHELL_COMMAND = re.compile(
    r"^(# |#)*(cat|cd|cp|mv|rm|rmdir|mkdir|copy|ddir|echo|ls|ldir|mkdir|ren|rmdir)"
    r"($|\s$|\s[^=,])"
)
_MAGIC_ASSIGNMENT = re.compile(
    r"^(# |#)*\s*([a-zA-Z_][a-zA-Z_$0-9]*)\s*=\s*(%|%%|%%%|!)[a-zA-Z](.*)"
)
_HELP = re.compile(r"^\s*(# )*[^\s]*\?\s*$")
_CONTINUED = re.compile(r".*\\\s*$")


def to_percent_script(nb: nbformat.NotebookNode) -> str:
    """The notebook as a jupytext percent script (``# %%`` cells, magics commented), no outputs.

    It follows jupytext's conventions, so ``jupytext --to ipynb`` gives back the same cells:
    magics are commented (``# %load_ext ...``), a ``%%sql name`` cell becomes
    ``# %% magic_args="name" language="sql"`` over its commented query, and tags are kept.
    """
    lines = _percent_header(nb.get("metadata", {}))
    for cell in nb.get("cells", []):
        lines.append("")
        lines.extend(_percent_cell(cell))
    return "\n".join(lines) + "\n"


def _percent_header(metadata: dict[str, Any]) -> list[str]:
    lines = [
        "# ---",
        "# jupyter:",
        "#   jupytext:",
        "#     text_representation:",
        "#       extension: .py",
        "#       format_name: percent",
        "#       format_version: '1.3'",
    ]
    kernelspec = metadata.get("kernelspec") or {}
    keys = [k for k in ("display_name", "language", "name") if isinstance(kernelspec.get(k), str)]
    if keys:
        lines.append("#   kernelspec:")
        lines.extend(f"#     {key}: {_yaml_scalar(kernelspec[key])}" for key in keys)
    lines.append("# ---")
    return lines


def _yaml_scalar(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._-]*", text) else json.dumps(text)


def _percent_cell(cell: dict[str, Any]) -> list[str]:
    source = _source_lines(cell.get("source", ""))
    if cell.get("cell_type") != "code":
        kind = "markdown" if cell.get("cell_type") == "markdown" else "raw"
        return [f"# %% [{kind}]", *_commented(source)]
    options = []
    tags = (cell.get("metadata") or {}).get("tags")
    if tags:
        options.append(f"tags={json.dumps(list(tags))}")
    language, magic_args = _cell_language(source)
    if language is not None:
        if magic_args:
            options.append(f"magic_args={json.dumps(magic_args)}")
        options.append(f"language={json.dumps(language)}")
        body = _commented(source[1:])  # a cell in another language is commented whole
        indent = ""
    else:
        body = _comment_magics(source)
        # jupytext indents the marker as the cell's first line, and reads it back so
        indent = source[0][: len(source[0]) - len(source[0].lstrip())] if source[0].strip() else ""
    marker = indent + " ".join(["# %%", *options])
    return [marker] if body in ([], [""]) else [marker, *body]


def _source_lines(source: str | list[str]) -> list[str]:
    text = source if isinstance(source, str) else "".join(source)
    return text.split("\n")


def _commented(lines: list[str]) -> list[str]:
    return [f"# {line}" if line else "#" for line in lines]


def _cell_language(source: list[str]) -> tuple[str | None, str]:
    """jupytext's reading of a first line ``%%lang args``: (lang, args), or (None, "")."""
    first = source[0] if source else ""
    if not first.startswith("%%"):
        return None, ""
    language, _, magic_args = first[2:].partition(" ")
    return (language, magic_args) if language in JUPYTEXT_LANGUAGES else (None, "")


def _is_magic(line: str) -> bool:
    if _MAGIC_NOT_ESCAPED.match(line):
        return False
    return any(
        rule.match(line)
        for rule in (_MAGIC, _HELP_OR_SHELL, _MAGIC_ASSIGNMENT, _HELP, _SHELL_COMMAND)
    )


def _comment_magics(lines: list[str]) -> list[str]:
    """Comment magic lines outside strings, as jupytext's ``comment_magic`` does."""
    quotes = _QuoteTracker()
    commented, continued = [], False
    for line in lines:
        if not quotes.is_quoted() and (continued or _is_magic(line)):
            body = line if continued else line.lstrip()
            indent = line[: len(line) - len(body)]
            commented.append(f"{indent}# {body}")
            continued = bool(_CONTINUED.match(line))
        else:
            commented.append(line)
        quotes.read_line(line)
    return commented


class _QuoteTracker:
    """Whether the next line starts inside a Python string (jupytext's ``StringParser``).

    Kept rule for rule, quirks included, so that what we comment is what jupytext uncomments.
    """

    def __init__(self) -> None:
        self.single: str | None = None
        self.triple: str | None = None

    def is_quoted(self) -> bool:
        return bool(self.single or self.triple)

    def read_line(self, line: str) -> None:
        if not self.is_quoted() and line.lstrip().startswith("#"):
            return
        triple_start = -1
        for i, char in enumerate(line):
            if self.single is None and self.triple is None and char == "#":
                break
            if char not in "\"'" or line[i - 1 : i] == "\\":
                continue
            if self.single == char:
                self.single = None
                continue
            if self.single is not None:
                continue
            if line[i - 2 : i + 1] == 3 * char and i >= triple_start + 3:
                if self.triple == char:
                    self.triple, triple_start = None, i
                elif self.triple is None:
                    self.triple, triple_start = char, i
                continue
            if self.triple is not None:
                continue
            self.single = char
        self.single = None  # a single-quoted string ends with its line


# --- import ----------------------------------------------------------------------------

_SQL_MAGIC = re.compile(r"%%sql(?:[ \t]+(?P<args>.*?))?[ \t]*")


def cells_from_notebook(document: Any) -> list[ImportedCell]:
    """The code cells of a posted notebook (or list of cells) to replay, in order.

    Accepts an nbformat v4 notebook as decoded JSON, or a list whose items are nbformat
    cells, ``{"code", "language"?, "result_name"?}`` objects or plain strings of code.
    Markdown and raw cells, empty cells and the setup cell are skipped. Raises
    ``ValidationError`` for anything else, or past ``MAX_IMPORTED_CELLS`` cells to run.
    """
    imported: list[ImportedCell] = []
    for index, item in enumerate(_document_cells(document)):
        cell = _imported_cell(item, index)
        if cell is None:
            continue
        if len(imported) == MAX_IMPORTED_CELLS:
            raise ValidationError(
                f"the notebook has more than {MAX_IMPORTED_CELLS} code cells to run; "
                "split it into smaller notebooks"
            )
        imported.append(cell)
    if not imported:
        raise ValidationError("the notebook has no code cells to run")
    return imported


def _document_cells(document: Any) -> list[Any]:
    if isinstance(document, list):
        return document
    if not isinstance(document, dict):
        raise ValidationError(
            "expected a Jupyter notebook (an object with a 'cells' list) or a list of cells"
        )
    if "nbformat" in document:
        version = document["nbformat"]
        if not isinstance(version, int) or isinstance(version, bool) or version != 4:
            raise ValidationError(
                f"only nbformat 4 notebooks can be imported, this one is nbformat {version!r}; "
                "convert it with `jupyter nbconvert --to notebook`"
            )
    cells = document.get("cells")
    if not isinstance(cells, list):
        raise ValidationError("a notebook must have a 'cells' list")
    return cells


def _imported_cell(item: Any, index: int) -> ImportedCell | None:
    """One document cell as a step to replay, or None when there is nothing to run."""
    where = f"cells[{index}]"
    if isinstance(item, str):
        return _from_source(item, index, allow_error=False)
    if not isinstance(item, dict):
        raise ValidationError(
            f"{where} must be a notebook cell, an object with 'code', or a string"
        )
    if "cell_type" in item:
        return _from_notebook_cell(item, index)
    if "code" in item:
        return _from_code_object(item, index)
    raise ValidationError(f"{where} has neither 'cell_type' nor 'code'")


def _from_notebook_cell(cell: dict[str, Any], index: int) -> ImportedCell | None:
    where = f"cells[{index}]"
    kind = cell["cell_type"]
    if kind in ("markdown", "raw"):
        return None
    if kind != "code":
        raise ValidationError(f"{where} has an unknown cell_type {kind!r}")
    source = cell.get("source", "")
    if isinstance(source, list) and all(isinstance(line, str) for line in source):
        source = "".join(source)
    if not isinstance(source, str):
        raise ValidationError(f"{where}: 'source' must be a string or a list of strings")
    metadata = cell.get("metadata")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise ValidationError(f"{where}: 'metadata' must be an object")
    marker = metadata.get("dataexec")
    if isinstance(marker, dict) and marker.get("role") == SETUP_ROLE:
        return None
    tags = metadata.get("tags")
    allow_error = isinstance(tags, list) and RAISES_TAG in tags
    return _from_source(source, index, allow_error=allow_error)


def _from_code_object(item: dict[str, Any], index: int) -> ImportedCell | None:
    where = f"cells[{index}]"
    code, language = item["code"], item.get("language", "python")
    result_name = item.get("result_name")
    if not isinstance(code, str):
        raise ValidationError(f"{where}: 'code' must be a string")
    if language not in ("python", "sql"):
        raise ValidationError(f"{where}: 'language' must be 'python' or 'sql'")
    if language == "python":
        if result_name is not None:
            raise ValidationError(f"{where}: 'result_name' applies to SQL cells only")
        return _from_source(code, index, allow_error=False)
    if result_name is not None:
        _check_result_name(result_name, where)
    if not code.strip():
        raise ValidationError(f"{where}: an SQL cell needs a query")
    return ImportedCell("sql", code, result_name, cell_index=index)


def _from_source(source: str, index: int, *, allow_error: bool) -> ImportedCell | None:
    """A code cell's source as a step: ``%%sql [name]`` cells become SQL, others Python."""
    if not source.strip() or _is_setup(source):
        return None
    first, _, query = source.partition("\n")
    magic = _SQL_MAGIC.fullmatch(first.rstrip())
    if magic is None:
        return ImportedCell("python", source, None, allow_error, index)
    where = f"cells[{index}]"
    result_name = magic.group("args") or None
    if result_name is not None:
        _check_result_name(result_name, where)
    if not query.strip():
        raise ValidationError(f"{where}: the %%sql cell has no query")
    return ImportedCell("sql", query, result_name, allow_error, index)


def _check_result_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValidationError(f"{where}: the result name {name!r} is not a Python identifier")


def _is_setup(source: str) -> bool:
    lines = tuple(line.strip() for line in source.splitlines() if line.strip())
    return lines == SETUP_LINES
