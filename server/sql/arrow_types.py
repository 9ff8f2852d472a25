"""Query results in the Arrow types a DataFrame wants, whatever the driver handed over.

ADBC's PostgreSQL driver hands types it has no Arrow type for as opaque extension columns
of text (``arrow.opaque``, ``type_name`` the PostgreSQL type): ``numeric`` among them,
which every money column is. ``plain`` maps them, once per result, to what
``pandas.read_sql`` users expect:

- ``numeric(p, s)`` with ``p <= 38``: ``decimal128(p, s)``, exact (a ``NaN`` in such a
  column, which no decimal can hold, becomes null);
- ``numeric`` without a precision (or past 38 digits): ``float64`` (``NaN`` and
  ``Infinity`` are valid numerics and become floats too);
- any other opaque type (PostGIS geometry, ranges, ...): its text, a plain string;
- ``interval``: ``duration[us]`` (a pandas ``timedelta64``), a month counted as 30 days as
  psycopg2 does (Parquet and pandas hold no month-day-nano interval).
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

MAX_DECIMAL_DIGITS = 38
TYPMOD_KEY = b"POSTGRESQL:typmod"
BatchConverter = Callable[[pa.RecordBatch], pa.RecordBatch]


def _numeric_type(field: pa.Field) -> pa.DataType:
    """decimal128(p, s) from PostgreSQL's typmod ((p << 16 | s) + 4), else float64."""
    raw = (field.metadata or {}).get(TYPMOD_KEY, b"-1")
    typmod = int(raw)
    if typmod < 4:
        return pa.float64()
    precision, scale = (typmod - 4) >> 16, (typmod - 4) & 0xFFFF
    if not 0 < precision <= MAX_DECIMAL_DIGITS or scale > precision:
        return pa.float64()
    return pa.decimal128(precision, scale)


def _target(field: pa.Field) -> pa.DataType | None:
    kind = field.type
    if kind == pa.month_day_nano_interval():
        return pa.duration("us")
    if not isinstance(kind, pa.OpaqueType):
        return None
    if kind.type_name == "numeric":
        return _numeric_type(field)
    return kind.storage_type


NOT_DECIMAL = pa.array(["NaN", "Infinity", "-Infinity"])


def _interval_as_duration(column: pa.Array) -> pa.Array:
    """Intervals as microseconds, a month counted as 30 days (as psycopg2's timedelta)."""
    micros = [
        None
        if value is None
        else ((value.months * 30 + value.days) * 86_400_000_000 + value.nanoseconds // 1000)
        for value in column.to_pylist()
    ]
    return pa.array(micros, pa.int64()).cast(pa.duration("us"))


def _cast(column: pa.Array, target: pa.DataType) -> pa.Array:
    if column.type == pa.month_day_nano_interval():
        return _interval_as_duration(column)
    storage = column.storage if isinstance(column, pa.ExtensionArray) else column
    if pa.types.is_decimal(target):
        storage = pc.if_else(pc.is_in(storage, NOT_DECIMAL), None, storage)
    return pc.cast(storage, target)


def plain(schema: pa.Schema) -> tuple[pa.Schema, BatchConverter | None]:
    """The schema a result is answered in, and how to convert each batch (None: as is)."""
    targets = {i: t for i, f in enumerate(schema) if (t := _target(f)) is not None}
    if not targets:
        return schema, None
    fields = [
        pa.field(f.name, targets[i], nullable=f.nullable) if i in targets else f
        for i, f in enumerate(schema)
    ]
    plain_schema = pa.schema(fields)

    def convert(batch: pa.RecordBatch) -> pa.RecordBatch:
        arrays = [
            _cast(batch.column(i), targets[i]) if i in targets else batch.column(i)
            for i in range(batch.num_columns)
        ]
        return pa.RecordBatch.from_arrays(arrays, names=plain_schema.names)

    return plain_schema, convert
