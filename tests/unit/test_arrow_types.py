"""server.sql.arrow_types: what ADBC hands over becomes what pandas users expect."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa

from server.sql import arrow_types


def converted(batch: pa.RecordBatch) -> pa.RecordBatch:
    schema, convert = arrow_types.plain(batch.schema)
    assert convert is not None
    out = convert(batch)
    assert out.schema == schema
    return out


def test_intervals_become_durations_with_months_of_30_days() -> None:
    interval = pa.array(
        [pa.MonthDayNano([0, 1, 83_460_000_000_000]), None, pa.MonthDayNano([1, 2, 0])],
        pa.month_day_nano_interval(),
    )
    out = converted(pa.RecordBatch.from_arrays([interval], names=["rented_for"]))
    assert out.schema.field("rented_for").type == pa.duration("us")
    assert out.column(0).to_pylist() == [
        dt.timedelta(days=1, hours=23, minutes=11),
        None,
        dt.timedelta(days=32),
    ]


def test_numeric_with_a_typmod_becomes_an_exact_decimal() -> None:
    opaque = pa.opaque(pa.string(), "numeric", "PostgreSQL")
    field = pa.field("amount", opaque, metadata={arrow_types.TYPMOD_KEY: str((10 << 16 | 2) + 4)})
    storage = pa.array(["12.34", "NaN", None])
    column = pa.ExtensionArray.from_storage(opaque, storage)
    out = converted(pa.RecordBatch.from_arrays([column], schema=pa.schema([field])))
    assert out.schema.field("amount").type == pa.decimal128(10, 2)
    assert out.column(0).to_pylist() == [Decimal("12.34"), None, None]


def test_a_plain_schema_needs_no_conversion() -> None:
    schema = pa.schema([("n", pa.int64()), ("s", pa.string())])
    assert arrow_types.plain(schema) == (schema, None)
