"""The one protocol between the DataExec server and its kernels.

Owned by the in-kernel package and imported by the server (the allowed direction: the
server depends on what runs in kernels, never the other way round). Everything both sides
must agree on is here, once:

- **Broker frames.** A kernel talks to the broker over its unix socket in frames: a
  4-byte big-endian length and a JSON document. Requests are ``SqlRequest``, ``PutRequest``
  (followed by the bytes of an Arrow IPC stream) and ``LoadRequest``; the broker answers
  ``{"ok": true, ...}`` or ``{"ok": false, "error": {"type", "message"}}``, and for ``sql``
  and ``load`` an Arrow IPC stream between a head and a tail frame::

      kernel -> broker   {"op": "put", "bytes": n, "kind": k, "name": s | null} + n bytes
      broker -> kernel   {"ok": true, "cache_key": "..."}
      kernel -> broker   {"op": "put", ..., "mapped": true}
      broker -> kernel   {"ok": true} (go on) or an error (over a cap: nothing is sent)
      kernel -> broker   one byte carrying a memfd whose first n bytes are the stream
                         (SCM_RIGHTS), or one byte and then the n bytes (no memfd to pass)
      broker -> kernel   {"ok": true, "cache_key": "..."} (the memfd copied out: the
                         kernel may write over it from then on)
      kernel -> broker   {"op": "sql", "query": "...", "params": {...} | null}
                         or {"op": "load", "key": "..."}
      broker -> kernel   head frame, then (when ok) an Arrow IPC stream, then a tail frame
                         {"ok": true, "rows": n} | {"ok": false, "error": ...}
      kernel -> broker   {"op": "load", "key": "...", "mapped": true}
      broker -> kernel   {"ok": true, "mapped": true} with a read-only descriptor of the
                         key's Arrow IPC file (SCM_RIGHTS), or an answer as above

- **User expressions.** After a cell the server evaluates ``result_expression`` (and, off
  the answer's path, ``checkpoint_expression`` or ``restore_expression``); each answers one
  JSON document under ``RESULT_MIMETYPE``, typed here as ``ResultPayload``,
  ``CheckpointPayload`` and ``RestorePayload``.
- **Error types.** The type string of each kernel exception (``SQL_NOT_ALLOWED``,
  ``TIMEOUT``, ...) as the server's error tree names it, found by the exception's name in
  an execute reply (``error_type``).
- **Frames as Arrow**: a DataFrame with its index and pandas metadata (``arrow_table``),
  which is what the cache keeps, and which of a table's columns an answer, a CSV or a JSON
  download shows (``answer_columns``: a remnant row-number index is left out).
- **Result statistics and preview** are ``answers``': one implementation on Arrow
  (``answers.table_payload``), whether the table came from the database in the server or
  from a DataFrame in a kernel.

Importing this module costs nothing: pyarrow is imported inside the functions that use it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any, Literal, NotRequired, TypedDict

from dataexec_kernel import errors

# --- broker frames -----------------------------------------------------------------------

FRAME = struct.Struct(">I")
MAX_REQUEST_BYTES = 1024 * 1024
BROKER_SOCKET = "broker.sock"
BROKER_ENV = "DATAEXEC_BROKER"  # where a kernel finds its broker socket
ARROW_STREAM = "application/vnd.apache.arrow.stream"

PutKind = Literal["result", "save", "checkpoint"]
PUT_KINDS: tuple[str, ...] = ("result", "save", "checkpoint")


class SqlRequest(TypedDict):
    op: Literal["sql"]
    query: str
    params: dict[str, Any] | None


class PutRequest(TypedDict):
    op: Literal["put"]
    bytes: int
    kind: PutKind
    name: str | None
    mapped: NotRequired[bool]  # the stream comes in a memfd after the broker's go


class LoadRequest(TypedDict):
    op: Literal["load"]
    key: str
    mapped: NotRequired[bool]  # the answer may be a descriptor of the key's hot Arrow file


def encode_frame(document: Any) -> bytes:
    """A frame: the length, then the JSON document."""
    body = json.dumps(document, default=str).encode()
    return FRAME.pack(len(body)) + body


def frame_length(prefix: bytes, limit: int = MAX_REQUEST_BYTES) -> int:
    """The length a frame's 4-byte prefix announces; ``errors.InvalidRequest`` past ``limit``."""
    (size,) = FRAME.unpack(prefix)
    if size > limit:
        raise errors.InvalidRequest(f"broker frame over {limit} bytes")
    return int(size)


def decode_frame(body: bytes) -> Any:
    """The JSON document of a frame; ``errors.InvalidRequest`` when it is none."""
    try:
        return json.loads(body)
    except ValueError as exc:
        raise errors.InvalidRequest(f"broker frame is not JSON: {exc}") from None


def error_frame(error_type: str, message: str) -> bytes:
    return encode_frame({"ok": False, "error": {"type": error_type, "message": message}})


def raise_error(error: dict[str, Any]) -> None:
    """Raise the kernel exception of a broker error answer (by its type)."""
    cls = errors.BY_TYPE.get(error.get("type", ""), errors.DataExecError)
    raise cls(error.get("message", "the broker refused")).with_traceback(None) from None


# --- user expressions ----------------------------------------------------------------------

RESULT_MIMETYPE = "application/vnd.dataexec.result+json"
PREVIEW_BYTES = 4 * 1024 * 1024  # preview rows as JSON (``result_expression`` may say less)
CAPTURE = "__dataexec__"  # the name of the kernel's ResultCapture in the user namespace
EXPRESSION = "dataexec"  # the key of our user expression in an execute request


def result_expression(max_rows: int, max_bytes: int | None = None) -> str:
    """A cell's result: ``max_rows`` preview rows within ``max_bytes`` (or PREVIEW_BYTES)."""
    budget = PREVIEW_BYTES if max_bytes is None else int(max_bytes)
    return f"{CAPTURE}.result({int(max_rows)}, {budget})"


def checkpoint_expression(budget_bytes: int) -> str:
    return f"{CAPTURE}.checkpoint({int(budget_bytes)})"


def restore_expression(keys: dict[str, str]) -> str:
    return f"{CAPTURE}.restore({keys!r})"


class ColumnSchema(TypedDict):
    name: str
    type: str  # the pandas dtype the column has in a kernel (int64, float64, str, ...)
    stats: dict[str, Any]


class TablePayload(TypedDict):
    columns: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    result_schema: list[ColumnSchema]
    stats_sample_rows: NotRequired[int]  # distinct_count, top_values counted on a sample
    warnings: NotRequired[list[str]]  # what the answer changed or left out, when anything


class ResultPayload(TypedDict, total=False):
    """What a cell produced: ``kind`` is ``dataframe``, ``scalar`` or ``none``."""

    kind: Literal["dataframe", "scalar", "none"]
    columns: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    result_schema: list[ColumnSchema]
    stats_sample_rows: int
    cache_key: str | None
    cache_error: dict[str, str] | None  # {"type", "message"}: why there is no key
    frames_changed: bool
    warnings: list[str]  # renamed columns, values kept as text, cut values, rows, columns


class FrameInfo(TypedDict):
    """A named DataFrame as a checkpoint pass saw it."""

    name: str
    rows: int
    columns: list[str]
    dtypes: dict[str, str]
    bytes: int
    cache_key: str | None
    changed: bool
    note: str | None


class CheckpointPayload(TypedDict):
    frames: list[FrameInfo]


class RestorePayload(TypedDict):
    restored: list[str]
    failed: dict[str, str]


def encode_payload(payload: Any) -> str:
    """A payload as the JSON text the kernel displays under ``RESULT_MIMETYPE``."""
    return json.dumps(payload, allow_nan=False, default=str)


# --- error types ---------------------------------------------------------------------------


def error_type(ename: str) -> str | None:
    """The error type of a kernel exception named ``ename`` in an execute reply, if ours."""
    return errors.TYPE_OF_NAME.get(ename)


# --- frames as Arrow ----------------------------------------------------------------------


def arrow_table(frame: Any) -> Any:
    """A DataFrame as a pyarrow Table with its index and pandas metadata, so that
    ``to_pandas()`` gives the same frame back (mixed-type object columns kept, as text).

    pyarrow stores an index as columns after the data columns (an unnamed level is called
    ``__index_level_<i>__``), except an unnamed RangeIndex, which is metadata only. A named
    RangeIndex is stored as a column: an answer shows it (``answer_columns``).
    """
    import pandas as pd
    import pyarrow as pa

    keep = True if isinstance(frame.index, pd.RangeIndex) and frame.index.name is not None else None
    try:
        return pa.Table.from_pandas(frame, preserve_index=keep)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        loose = [c for c in frame.columns if frame[c].dtype == object]
        return pa.Table.from_pandas(frame.astype({c: str for c in loose}), preserve_index=keep)


# pandas metadata's ``pandas_type`` of an integer column (not "interval", which also
# begins with "int").
INTEGER_TYPES = frozenset(f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64))


def index_shown(names: Sequence[Any], integer: bool) -> bool:
    """Whether an index with these level ``names`` becomes columns of an answer.

    Only an unnamed single-level integer index is left out: the row numbers filtering,
    sorting or sampling leave behind (see ``dataexec_kernel.capture`` for the rule).
    """
    return len(names) > 1 or names[0] is not None or not integer


def index_names(names: Sequence[Any], taken: set[str]) -> list[str]:
    """The column names of index levels, as ``reset_index`` gives them (the level's name,
    else ``index`` for a single level and ``level_<i>`` in a MultiIndex), made unique among
    ``taken`` rather than refused as ``reset_index`` does."""
    chosen = []
    for i, name in enumerate(names):
        fallback = "index" if len(names) == 1 else f"level_{i}"
        candidate = str(name) if name is not None else fallback
        if candidate in taken:
            candidate = fallback
        base, n = candidate, 1
        while candidate in taken:
            candidate, n = f"{base}_{n}", n + 1
        taken.add(candidate)
        chosen.append(candidate)
    return chosen


def answer_columns(schema: Any) -> list[tuple[int, str]]:
    """Which columns of a table an answer shows, in order, as (position, name).

    A table without pandas metadata (SQL results) is shown as it is. A frame's table shows
    its index levels first, under ``reset_index``'s names, unless ``index_shown`` says the
    index is a remnant; then its data columns.
    """
    names = list(schema.names)
    data = list(enumerate(names))
    metadata = _pandas_metadata(schema)
    if metadata is None:
        return data
    stored = [f for f in _listed(metadata, "index_columns") if isinstance(f, str) and f in names]
    described = {
        c.get("field_name"): c for c in _listed(metadata, "columns") if isinstance(c, dict)
    }
    levels = [described.get(f, {}) for f in stored]
    data = [(i, name) for i, name in data if name not in stored]
    integer = len(levels) == 1 and levels[0].get("pandas_type") in INTEGER_TYPES
    level_names = [level.get("name") for level in levels]
    if not stored or not index_shown(level_names, integer):
        return data
    shown = index_names(level_names, {name for _, name in data})
    return [(names.index(f), n) for f, n in zip(stored, shown, strict=True)] + data


def _pandas_metadata(schema: Any) -> dict[str, Any] | None:
    """The pandas metadata of a schema, or None when there is none that reads as such (an
    uploaded table may carry anything under that key)."""
    try:
        metadata = schema.pandas_metadata
    except ValueError:  # not JSON
        return None
    return metadata if isinstance(metadata, dict) else None


def _listed(metadata: dict[str, Any], key: str) -> list[Any]:
    value = metadata.get(key)
    return value if isinstance(value, list) else []


def shown(data: Any, plan: Sequence[tuple[int, str]]) -> Any:
    """The columns of ``plan`` (``answer_columns``) of a Table or RecordBatch, without the
    pandas metadata (what is left is no longer the frame)."""
    return type(data).from_arrays([data.column(i) for i, _ in plan], names=[n for _, n in plan])


def answer_table(table: Any) -> Any:
    """What an answer shows of ``table``: ``answer_columns`` of it."""
    plan = answer_columns(table.schema)
    if plan == list(enumerate(table.column_names)):
        return table  # all of it (a SQL result): no copy
    return shown(table, plan)
