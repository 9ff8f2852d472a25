"""Preview and statistics of a result table: what an answer shows of it, from Arrow.

One implementation (``table_payload``) for every result, whether the table came from the
database in the server (SQL without a session) or from a DataFrame in a kernel (its
``protocol.arrow_table``): the preview rows as JSON-safe values, each cut to a bound, and
per column its pandas dtype and statistics by type. A large result's hashing statistics are
counted on an even sample (``STATS_SAMPLE_ROWS``), and the answer says so.

Importing this module costs nothing: pyarrow is imported inside the functions that use it.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from collections.abc import Sequence
from typing import Any

from dataexec_kernel.protocol import PREVIEW_BYTES, ColumnSchema, TablePayload

TOP_VALUES = 5
# Past this many rows, the statistics that hash every value (distinct_count, top_values) are
# counted on this many rows spread evenly over the result; the rest stay exact. Measured on
# flights (336,776 x 19): 98 ms of statistics for every value, 40 ms on a quarter of them.
STATS_SAMPLE_ROWS = 65_536
# An answer is bounded by bytes, not only rows: a frame tiny in memory can be huge once shown
# (a categorical repeating 100 MB strings). Every cut is said in ``warnings`` (docs/security.md).
MAX_RESULT_COLUMNS = 10_000  # columns an answer shows (a wider frame is not cached: capture)
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


def column_stats(column: Any, sample: Any = None) -> dict[str, Any]:
    """Statistics of one Arrow column, keyed by its type (only null_count where none apply).

    Numbers: min, max, mean, std, null_count, distinct_count; strings and categories:
    null_count, distinct_count, top_values (each value cut as a preview's); dates and times:
    min, max, null_count; booleans: true_count, false_count, null_count. distinct_count and
    top_values are counted on ``sample`` (rows of the column) when there is one.
    """
    import pyarrow as pa

    try:
        return _typed_stats(column, column if sample is None else sample)
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowInvalid):
        return {"null_count": column.null_count}


def stats_sample(table: Any) -> Any:
    """``STATS_SAMPLE_ROWS`` rows spread evenly over ``table``, or None when it has no more."""
    import numpy as np

    if table.num_rows <= STATS_SAMPLE_ROWS:
        return None
    step = table.num_rows / STATS_SAMPLE_ROWS
    return table.take((np.arange(STATS_SAMPLE_ROWS) * step).astype(np.int64))


def _typed_stats(column: Any, sample: Any) -> dict[str, Any]:
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
        if sample is column:
            distinct = pc.count_distinct(numbers, mode="only_valid")
        else:  # the sample's NaNs are not values either
            values = sample if not pa.types.is_decimal(kind) else pc.cast(sample, pa.float64())
            if pa.types.is_floating(kind):
                values = pc.if_else(pc.is_nan(values), None, values)
            distinct = pc.count_distinct(values, mode="only_valid")
        minmax = pc.min_max(numbers).as_py()
        return {
            "min": json_value(minmax["min"]),
            "max": json_value(minmax["max"]),
            "mean": json_value(pc.mean(numbers).as_py()),
            "std": json_value(pc.stddev(numbers, ddof=1).as_py()),
            "null_count": numbers.null_count,
            "distinct_count": distinct.as_py(),
        }
    if pa.types.is_temporal(kind):
        # Arrow has no min/max of durations: take them of the counts, as durations again.
        values = pc.cast(column, pa.int64()) if pa.types.is_duration(kind) else column
        minmax = pc.min_max(values)
        low, high = (pa.scalar(minmax[end].as_py(), kind).as_py() for end in ("min", "max"))
        return {"min": json_value(low), "max": json_value(high), "null_count": nulls}
    if _text_kind(kind) in ("text", "text_view") or pa.types.is_dictionary(kind):
        counts = pc.value_counts(sample.drop_null())
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
    sample = stats_sample(table)
    for i, field in enumerate(table.schema):
        column = table.column(i)
        kind = dtypes[i] if dtypes is not None else pandas_dtype(field, column.null_count)
        stats = column_stats(column, None if sample is None else sample.column(i))
        entry: ColumnSchema = {"name": str(field.name), "type": kind, "stats": stats}
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
    if sample is not None:
        payload["stats_sample_rows"] = STATS_SAMPLE_ROWS
    if warnings + notes:
        payload["warnings"] = warnings + notes
    return payload
