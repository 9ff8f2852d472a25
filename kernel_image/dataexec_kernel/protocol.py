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
      kernel -> broker   {"op": "sql", "query": "...", "params": {...} | null}
                         or {"op": "load", "key": "..."}
      broker -> kernel   head frame, then (when ok) an Arrow IPC stream, then a tail frame
                         {"ok": true, "rows": n} | {"ok": false, "error": ...}

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
- **Result statistics and preview**, computed from Arrow by one implementation
  (``table_payload``), whether the table came from the database in the server or from a
  DataFrame in a kernel.

Importing this module costs nothing: pyarrow is imported inside the functions that use it.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
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


class LoadRequest(TypedDict):
    op: Literal["load"]
    key: str


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
    warnings: NotRequired[list[str]]  # what the answer changed or left out, when anything


class ResultPayload(TypedDict, total=False):
    """What a cell produced: ``kind`` is ``dataframe``, ``scalar`` or ``none``."""

    kind: Literal["dataframe", "scalar", "none"]
    columns: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    result_schema: list[ColumnSchema]
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


# --- result statistics and preview ---------------------------------------------------------

TOP_VALUES = 5
# An answer is bounded by bytes, not only rows: a frame tiny in memory can be huge once shown
# (a categorical repeating 100 MB strings). Every cut is said in ``warnings`` (docs/security.md).
MAX_RESULT_COLUMNS = 10_000  # columns an answer shows (a wider frame is not cached: capture)
PREVIEW_BYTES = 4 * 1024 * 1024  # preview rows as JSON (``result_expression`` may say less)
VALUE_CHARS = 4_000  # one text value in a preview or statistic (binary: as many hex digits)
NESTED_BYTES = 16_384  # one list, map or struct value; a larger one is shown cut, as text
CUT = "\u2026"


def json_value(value: Any) -> Any:
    """A JSON-safe Python value for one cell or statistic (integers past 64 bits and
    decimals past a float's range as text)."""
    if value is None:
        return None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return None if _is_nat(value) else value.isoformat()
    if isinstance(value, dt.timedelta):  # pandas' Timedelta spells itself otherwise
        return None if _is_nat(value) else str(dt.timedelta(seconds=value.total_seconds()))
    if isinstance(value, decimal.Decimal):
        number = float(value) if value.is_finite() else None
        return str(value) if number in (math.inf, -math.inf) else number
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):  # not tuples: Arrow's intervals are named tuples
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return json_value(item())
    return str(value)


def _is_nat(value: Any) -> bool:
    return value != value  # pandas' NaT is the only date or time unequal to itself


def expanded_bytes(data: Any) -> int:
    """About the bytes of ``data`` (an Arrow array, chunked array, batch or table) once its
    dictionaries are decoded and its string views copied out: what showing it builds.
    Computed from lengths and indices alone, so a bomb is measured without being built."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(data, (pa.RecordBatch, pa.Table)):
        return sum(expanded_bytes(column) for column in data.columns)
    if isinstance(data, pa.ChunkedArray):
        return sum(expanded_bytes(chunk) for chunk in data.chunks)
    kind = data.type
    if pa.types.is_dictionary(kind):
        values = data.dictionary
        if _text_kind(values.type) in ("text", "binary"):
            sizes = pc.take(pc.binary_length(values), data.indices)
            return int(pc.sum(sizes).as_py() or 0) + data.indices.nbytes
        mean = expanded_bytes(values) / max(len(values), 1)
        return int(mean * len(data)) + data.indices.nbytes
    if pa.types.is_struct(kind):
        return sum(expanded_bytes(field) for field in data.flatten())
    if isinstance(data, pa.MapArray):  # its keys and items ignore a slice, its offsets do not
        entries = pa.StructArray.from_arrays([data.keys, data.items], names=["k", "v"])
        data = pa.ListArray.from_arrays(data.offsets, entries)
    if isinstance(data, (pa.ListArray, pa.LargeListArray, pa.FixedSizeListArray)):
        return expanded_bytes(data.flatten()) + 8 * len(data)
    if _text_kind(kind).endswith("view"):
        return int(_view_lengths(data).sum()) + 16 * len(data)
    return int(data.nbytes)


def _text_kind(kind: Any) -> str:
    """``text``, ``binary``, ``text_view``, ``binary_view``, or "" for any other Arrow type."""
    import pyarrow as pa

    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "text"
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "binary"
    if pa.types.is_string_view(kind):
        return "text_view"
    return "binary_view" if pa.types.is_binary_view(kind) else ""


def _view_lengths(array: Any) -> Any:
    """The length of each value of a string or binary view array (from its 16-byte views)."""
    import numpy as np

    views = np.frombuffer(array.buffers()[1], dtype=np.int32).reshape(-1, 4)
    return views[array.offset : array.offset + len(array), 0].astype(np.int64)


def shown_values(column: Any) -> tuple[list[Any], int]:
    """The JSON-safe values of a short Arrow column (a preview's, or top values) and how
    many were cut: text past VALUE_CHARS, lists, maps and structs past NESTED_BYTES."""
    import pyarrow as pa

    kind = column.type
    if isinstance(column, pa.ChunkedArray):
        parts = [shown_values(chunk) for chunk in column.chunks]
        return [v for values, _ in parts for v in values], sum(cut for _, cut in parts)
    if pa.types.is_dictionary(kind):  # each distinct value is cut once
        values, long = _short_text(column.dictionary)
        indices = column.indices.to_pylist()
        shown = [None if i is None else values[i] for i in indices]
        return shown, sum(long[i] for i in indices if i is not None)
    if _text_kind(kind):
        values, long = _short_text(column)
        return values, sum(long)
    if not pa.types.is_nested(kind):
        return [json_value(v) for v in column.to_pylist()], 0
    shown, cut = [], 0
    for i in range(len(column)):
        value = json_value(column[i].as_py())  # one at a time: only one is ever whole here
        if expanded_bytes(column.slice(i, 1)) > NESTED_BYTES:
            value, cut = json.dumps(value, default=str)[:VALUE_CHARS] + CUT, cut + 1
        shown.append(value)
    return shown, cut


def _short_text(array: Any) -> tuple[list[Any], list[bool]]:
    """Text or binary values, each cut to VALUE_CHARS (binary as hex), and which were cut.
    Only the kept part of a long value is ever copied."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = _text_kind(array.type)
    if not kind:
        return [json_value(v) for v in array.to_pylist()], [False] * len(array)
    binary, view = kind.startswith("binary"), kind.endswith("view")
    keep = VALUE_CHARS // 2 if binary else VALUE_CHARS
    if view:
        lengths = _view_lengths(array).tolist()
    else:
        lengths = (pc.binary_length(array) if binary else pc.utf8_length(array)).to_pylist()
    long = [bool(n and n > keep) for n in lengths]
    if not any(long):
        values = array.to_pylist()
    elif view:  # no compute kernels for views: one value at a time
        values = [
            array[i].as_py()[:keep] if cut else array[i].as_py() for i, cut in enumerate(long)
        ]
    else:
        head = (
            pc.binary_slice(array, 0, keep) if binary else pc.utf8_slice_codeunits(array, 0, keep)
        )
        values = pc.if_else(pa.array(long), head, array).to_pylist()
    shown = [json_value(v) for v in values]
    return [v + CUT if cut else v for v, cut in zip(shown, long, strict=True)], long


def pandas_dtype(field: Any, null_count: int) -> str:
    """The dtype pandas gives an Arrow column (integers and booleans with nulls change)."""
    import pyarrow as pa

    kind = field.type
    if pa.types.is_integer(kind) and null_count:
        return "float64"
    if pa.types.is_boolean(kind) and null_count:
        return "object"
    empty = pa.table({"c": pa.array([], kind)}).to_pandas()
    return str(empty["c"].dtype)


def column_stats(column: Any) -> dict[str, Any]:
    """Statistics of one Arrow column, keyed by its type (only null_count where none apply).

    Numbers: min, max, mean, std, null_count, distinct_count; strings and categories:
    null_count, distinct_count, top_values (each value cut as a preview's); dates and times:
    min, max, null_count; booleans: true_count, false_count, null_count.
    """
    import pyarrow as pa

    try:
        return _typed_stats(column)
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowInvalid):
        return {"null_count": column.null_count}


def _typed_stats(column: Any) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    nulls = column.null_count
    if pa.types.is_boolean(kind):
        trues = pc.sum(column).as_py() or 0
        return {
            "true_count": trues,
            "false_count": len(column) - nulls - trues,
            "null_count": nulls,
        }
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        numbers = column if not pa.types.is_decimal(kind) else pc.cast(column, pa.float64())
        if pa.types.is_floating(kind):
            numbers = pc.if_else(pc.is_nan(numbers), None, numbers)
        minmax = pc.min_max(numbers).as_py()
        return {
            "min": json_value(minmax["min"]),
            "max": json_value(minmax["max"]),
            "mean": json_value(pc.mean(numbers).as_py()),
            "std": json_value(pc.stddev(numbers, ddof=1).as_py()),
            "null_count": numbers.null_count,
            "distinct_count": pc.count_distinct(numbers, mode="only_valid").as_py(),
        }
    if pa.types.is_temporal(kind):
        # Arrow has no min/max of durations: take them of the counts, as durations again.
        values = pc.cast(column, pa.int64()) if pa.types.is_duration(kind) else column
        minmax = pc.min_max(values)
        low, high = (pa.scalar(minmax[end].as_py(), kind).as_py() for end in ("min", "max"))
        return {"min": json_value(low), "max": json_value(high), "null_count": nulls}
    if _text_kind(kind) in ("text", "text_view") or pa.types.is_dictionary(kind):
        counts = pc.value_counts(column.drop_null())
        values, freqs = counts.field("values"), counts.field("counts")
        top = []
        if len(counts):
            order = pc.sort_indices(freqs, sort_keys=[("", "descending")])[:TOP_VALUES]
            shown, _ = shown_values(values.take(order))
            top = [
                {"value": value, "count": count}
                for value, count in zip(shown, freqs.take(order).to_pylist(), strict=True)
            ]
        return {"null_count": nulls, "distinct_count": len(counts), "top_values": top}
    return {"null_count": nulls}


def preview_rows(table: Any, max_rows: int, max_bytes: int) -> tuple[list[list[Any]], list[str]]:
    """The first ``max_rows`` rows of ``table`` as JSON-safe lists, long values cut, rows
    past ``max_bytes`` of JSON left out; and a warning for each cut."""
    preview = table.slice(0, max_rows)
    columns, cut = [], 0
    for column in preview.columns:
        values, n = shown_values(column)
        columns.append(values)
        cut += n
    rows = [list(row) for row in zip(*columns, strict=True)]
    warnings = [f"{cut} long values end in {CUT}, cut to {VALUE_CHARS} characters"] if cut else []
    # Each value is bounded now; measure rows only when the preview may be over the budget.
    if expanded_bytes(preview) * 3 + 8 * sum(map(len, rows)) > max_bytes:
        used = 2
        for kept, row in enumerate(rows):
            used += len(json.dumps(row, default=str)) + 1
            if used > max_bytes:
                rows = rows[:kept]
                warnings.append(f"the preview stops at {kept} rows, within {max_bytes} bytes")
                break
    return rows, warnings


def table_payload(
    table: Any,
    max_rows: int,
    dtypes: Sequence[str] | None = None,
    max_bytes: int = PREVIEW_BYTES,
) -> TablePayload:
    """Preview rows (``max_rows``, JSON-safe), row count, and per column its type and stats,
    within ``max_bytes`` and ``MAX_RESULT_COLUMNS`` (``warnings`` say what was left out).

    ``dtypes`` are the pandas dtypes of the columns when the table came from a DataFrame;
    without them the dtype pandas would give each Arrow column is used.
    """
    warnings, schema = [], []  # type: ignore[var-annotated]
    used, budget = 0, max_bytes // 2  # the schema may take half, the preview rows the rest
    for i, field in enumerate(table.schema):
        column = table.column(i)
        kind = dtypes[i] if dtypes is not None else pandas_dtype(field, column.null_count)
        entry: ColumnSchema = {"name": str(field.name), "type": kind, "stats": column_stats(column)}
        size = len(json.dumps(entry, default=str)) + 1
        if i == MAX_RESULT_COLUMNS or (schema and used + size > budget):
            warnings.append(
                f"this answer shows the first {i} of {table.num_columns} columns (at most "
                f"{MAX_RESULT_COLUMNS}, with statistics within {budget} bytes)"
            )
            table = table.select(range(i))
            break
        used, schema = used + size, [*schema, entry]
    rows, notes = preview_rows(table, max_rows, max(max_bytes - used, 0))
    payload: TablePayload = {
        "columns": [str(name) for name in table.column_names],
        "rows": rows,
        "row_count": table.num_rows,
        "truncated": table.num_rows > len(rows),
        "result_schema": schema,
    }
    if warnings + notes:
        payload["warnings"] = warnings + notes
    return payload
