"""The result part of an answer, computed from an Arrow table already in memory.

Row count, the preview rows (``max_rows``, JSON-safe), and per-column ``type`` and
``stats`` with pyarrow.compute: numbers get min, max, mean, std, null_count and
distinct_count; strings null_count, distinct_count and top_values; dates min, max and
null_count; booleans true/false/null counts. ``type`` is the pandas dtype the column has
once the frame is in pandas (what the same query gives inside a kernel).
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

TOP_VALUES = 5


def json_value(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return str(value)


def pandas_dtype(field: pa.Field, null_count: int) -> str:
    """The dtype pandas gives this Arrow column (ints and bools with nulls change type)."""
    kind = field.type
    if pa.types.is_integer(kind) and null_count:
        return "float64"
    if pa.types.is_boolean(kind) and null_count:
        return "object"
    empty = pa.table({"c": pa.array([], kind)}).to_pandas()
    return str(empty["c"].dtype)


def column_stats(column: pa.ChunkedArray) -> dict[str, Any]:
    """Statistics of one column, keys by its type (only null_count where none apply)."""
    try:
        return _typed_stats(column)
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return {"null_count": column.null_count}


def _typed_stats(column: pa.ChunkedArray) -> dict[str, Any]:
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
        minmax = pc.min_max(column).as_py()
        return {
            "min": json_value(minmax["min"]),
            "max": json_value(minmax["max"]),
            "null_count": nulls,
        }
    if (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_dictionary(kind)
        or pa.types.is_string_view(kind)
    ):
        counts = pc.value_counts(column.drop_null())
        values, freqs = counts.field("values"), counts.field("counts")
        order = (
            pc.sort_indices(freqs, sort_keys=[("", "descending")])[:TOP_VALUES]
            if len(counts)
            else []
        )
        top = [
            {"value": json_value(values[i].as_py()), "count": freqs[i].as_py()}
            for i in (order.to_pylist() if len(counts) else [])
        ]
        return {"null_count": nulls, "distinct_count": len(counts), "top_values": top}
    return {"null_count": nulls}


def table_result(table: pa.Table, max_rows: int) -> dict[str, Any]:
    """The ``status``/``metadata``/``data`` part of an answer for a result table."""
    columns = [table.column(i).slice(0, max_rows).to_pylist() for i in range(table.num_columns)]
    rows = [[json_value(v) for v in row] for row in zip(*columns, strict=True)]
    names = table.column_names
    schema = [
        {
            "name": field.name,
            "type": pandas_dtype(field, table.column(i).null_count),
            "stats": column_stats(table.column(i)),
        }
        for i, field in enumerate(table.schema)
    ]
    return {
        "status": "success",
        "metadata": {
            "row_count": table.num_rows,
            "truncated": table.num_rows > max_rows,
            "result_schema": schema,
        },
        "data": {"columns": names, "rows": rows},
    }
