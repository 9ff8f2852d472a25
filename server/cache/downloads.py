"""Downloads of a cached frame (parquet, arrow, csv, json), and the bounded batches that
every path expanding a cached frame reads it in (downloads, and ``load()`` in the broker).

**Bounded in memory.** A cached frame can be tiny on disk and huge once decoded: a
categorical repeating a few long strings, or string views all pointing at one value, is a
few KB of Parquet and GBs of text. So the file is read with every text leaf as a dictionary
(nothing expands while reading), and each batch is split until a piece expands to at most
``PIECE_BYTES`` (``answers.expanded_bytes``, computed from lengths and indices, never by
building the values); only then is a piece converted and written. Memory per download is a
piece, not a batch of rows; a single row larger than a piece is one piece.

**Bounded in bytes.** A download may be at most ``budget`` bytes (``max_download_bytes``).
``download`` refuses one whose decoded size is already over it with ``OutputTooLarge``
before a byte is sent (Parquet: its file size); a CSV or JSON text that grows past it while
streaming raises ``OutputTooLarge`` from the iterator, after the headers went out, and the
handler then aborts the connection so the client sees an incomplete body.

**CSV** cells are text: dictionaries are decoded, lists, maps and structs written as JSON,
binary as hex. Text cells starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return
get a leading ``'`` (formula injection, as OWASP advises), header names too, unless the
caller asks for them as they are; numbers are never touched (-5 stays -5).

Parquet and Arrow are the frame as cached, index and pandas metadata included, so that
pandas (and the analysts' client's ``load``) reads back the very frame the kernel had. CSV
and JSON are tables without an index: they hold the columns the answer showed
(``protocol.answer_columns``), a remnant row-number index left out. Everything here blocks:
callers take it off the event loop.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from dataexec_kernel.answers import expanded_bytes, json_value
from dataexec_kernel.protocol import ARROW_STREAM, answer_columns, shown

from server.errors import NotFound, OutputTooLarge

CHUNK = 1024 * 1024
BATCH_ROWS = 65_536
PIECE_BYTES = 8 * 1024 * 1024  # decoded bytes one piece of a download builds at a time
FORMULA = r"^[=+\-@\t\r]"  # a spreadsheet reads a cell starting so as a formula
FORMATS = {
    "parquet": "application/vnd.apache.parquet",
    "arrow": ARROW_STREAM,
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
}


def open_frame(path: Path) -> pq.ParquetFile:
    """The cached frame's Parquet file, open, with every text leaf (nested ones too) read as
    a dictionary, so that reading expands nothing; ``FileNotFoundError`` when it is gone."""
    plain = pq.ParquetFile(path)
    leaves = [
        column.path
        for column in plain.schema
        if column.physical_type == "BYTE_ARRAY" and column.logical_type.type in ("STRING", "NONE")
    ]
    if not leaves:
        return plain
    plain.close()
    return pq.ParquetFile(path, read_dictionary=leaves)


def pieces(
    parquet: pq.ParquetFile, target: int = PIECE_BYTES
) -> Iterator[tuple[pa.RecordBatch, int]]:
    """The frame of ``parquet`` (``open_frame``) in record batches that each expand to at
    most ``target`` bytes (a larger single row alone), with that size."""
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
        yield from _split(batch, target)


def _split(batch: pa.RecordBatch, target: int) -> Iterator[tuple[pa.RecordBatch, int]]:
    size = expanded_bytes(batch)
    if size <= target or batch.num_rows <= 1:
        yield batch, size
        return
    half = batch.num_rows // 2
    yield from _split(batch.slice(0, half), target)
    yield from _split(batch.slice(half), target)


def stored_batches(parquet: pq.ParquetFile) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The cached frame's schema (pandas metadata included) and its bounded batches in it,
    dictionaries read for text decoded back: what an Arrow download and ``load()`` stream."""
    schema = parquet.metadata.schema.to_arrow_schema()

    def batches() -> Iterator[pa.RecordBatch]:
        for piece, _ in pieces(parquet):
            arrays = [_as_type(c, f.type) for c, f in zip(piece.columns, schema, strict=True)]
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    return schema, batches()


def _as_type(array: pa.Array, kind: pa.DataType) -> pa.Array:
    """A column read with dictionaries back in its cached type (views through plain text)."""
    if array.type == kind:
        return array
    if pa.types.is_nested(array.type):  # a cast of a slice would cast all of its children
        array = array.take(pa.array(range(len(array)), pa.int64()))
    try:
        return array.cast(kind)
    except pa.ArrowNotImplementedError:  # no cast from a dictionary to a view type
        return array.cast(_without_views(kind)).cast(kind)


def _without_views(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_string_view(kind):
        return pa.large_string()
    if pa.types.is_binary_view(kind):
        return pa.large_binary()
    if pa.types.is_map(kind):
        return pa.map_(_without_views(kind.key_type), _without_views(kind.item_type))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        field = kind.value_field.with_type(_without_views(kind.value_type))
        return pa.list_(field) if pa.types.is_list(kind) else pa.large_list(field)
    if pa.types.is_fixed_size_list(kind):
        return pa.list_(kind.value_field.with_type(_without_views(kind.value_type)), kind.list_size)
    if pa.types.is_struct(kind):
        return pa.struct([field.with_type(_without_views(field.type)) for field in kind])
    return kind


def decoded_bytes(reader: pq.ParquetFile, keep_dictionaries: bool = False) -> int:
    """About the bytes a cached frame takes decoded (``open_frame``): what a CSV or JSON
    download builds, or with ``keep_dictionaries`` an Arrow one (a column cached as a
    dictionary, a categorical, is sent as one). Fixed-width columns are counted from the
    row count, the others read and measured."""
    rows = reader.metadata.num_rows
    stored = reader.metadata.schema.to_arrow_schema()
    fixed, measured = 0, []
    for i, field in enumerate(stored):
        try:
            width = None if pa.types.is_dictionary(field.type) else field.type.bit_width
        except ValueError:  # not of a fixed width
            width = None
        if width is None:
            measured.append(i)
        else:
            fixed += rows * max(width // 8, 1)
    total = fixed
    for batch in reader.iter_batches(batch_size=BATCH_ROWS):  # dictionaries: nothing expands
        for i in measured:
            column, kind = batch.column(i), stored.field(i).type
            kept = keep_dictionaries and pa.types.is_dictionary(kind)
            total += column.nbytes if kept else expanded_bytes(column)
    return total


def download(path: Path, fmt: str, budget: int, escape_formulas: bool = True) -> Iterator[bytes]:
    """The bytes of the cached frame at ``path`` in ``fmt`` (one of ``FORMATS``), at most
    ``budget`` of them: ``OutputTooLarge`` now when its decoded size is over it, or from
    the iterator when the text grows past it (see the module docstring). The file is opened
    now: one deleted later is still sent whole, one deleted already is ``NotFound``."""
    try:
        if fmt == "parquet":
            raw = path.open("rb")
            size = os.fstat(raw.fileno()).st_size
        else:
            parquet = open_frame(path)
            size = decoded_bytes(parquet, keep_dictionaries=fmt == "arrow")
    except FileNotFoundError:
        raise NotFound(f"cache key {path.stem} was deleted while it was read") from None
    if size > budget:
        if fmt == "parquet":
            raw.close()
        raise OutputTooLarge(
            f"this {fmt} download would be about {size:,} bytes, over the {budget:,} bytes "
            "one download may be (max_download_bytes); download it as parquet, or make a "
            "smaller frame (fewer rows or columns, or shorter values) and download that"
        )
    if fmt == "parquet":
        parts = _parquet(raw)
    elif fmt == "csv":
        parts = _csv(parquet, escape_formulas)
    else:
        parts = _arrow(parquet) if fmt == "arrow" else _json(parquet)
    return _within(parts, fmt, budget)


def _within(parts: Iterator[bytes], fmt: str, budget: int) -> Iterator[bytes]:
    sent = 0
    for part in parts:
        sent += len(part)
        if sent > budget:
            raise OutputTooLarge(
                f"this {fmt} download went over the {budget:,} bytes one download may be "
                "(max_download_bytes) while it was sent: it ends here, incomplete"
            )
        yield part


def _answer_pieces(parquet: pq.ParquetFile) -> tuple[list[str], Iterator[pa.RecordBatch]]:
    """The column names and bounded pieces of the answer's columns of a cached frame."""
    plan = answer_columns(parquet.metadata.schema.to_arrow_schema())
    return [name for _, name in plan], (shown(piece, plan) for piece, _ in pieces(parquet))


def _arrow(parquet: pq.ParquetFile) -> Iterator[bytes]:
    schema, batches = stored_batches(parquet)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
            yield sink.getvalue()
            sink.seek(0)
            sink.truncate()
    yield sink.getvalue()


def _csv(parquet: pq.ParquetFile, escape_formulas: bool) -> Iterator[bytes]:
    names, batches = _answer_pieces(parquet)
    header = [_escaped_name(n) if escape_formulas else n for n in names]
    first = True
    for batch in batches:
        arrays = [_csv_column(column, escape_formulas) for column in batch.columns]
        sink = io.BytesIO()
        table = pa.RecordBatch.from_arrays(arrays, names=header)
        pa_csv.write_csv(table, sink, pa_csv.WriteOptions(include_header=first))
        first = False
        yield sink.getvalue()
    if first:  # no rows at all: the header alone
        empty = pa.RecordBatch.from_arrays([pa.array([], pa.string()) for _ in header], header)
        sink = io.BytesIO()
        pa_csv.write_csv(empty, sink)
        yield sink.getvalue()


def _csv_column(array: pa.Array, escape_formulas: bool) -> pa.Array:
    """A column as CSV can hold it: see the module docstring."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    kind = array.type
    if pa.types.is_string_view(kind):
        array = array.cast(pa.large_string())
    elif (
        pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind)
    ):
        array = pa.array([None if v is None else v.hex() for v in array.to_pylist()], pa.string())
    elif pa.types.is_nested(kind):
        array = pa.array([_json_text(v) for v in array.to_pylist()], pa.large_string())
    if escape_formulas and (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        quote, empty = pa.scalar("'", array.type), pa.scalar("", array.type)
        risky = pc.match_substring_regex(array, FORMULA)
        array = pc.if_else(risky, pc.binary_join_element_wise(quote, array, empty), array)
    return array


def _escaped_name(name: str) -> str:
    return "'" + name if name[:1] in ("=", "+", "-", "@", "\t", "\r") else name


def _json_text(value: Any) -> str | None:
    return None if value is None else orjson.dumps(json_value(value)).decode()


def _json(parquet: pq.ParquetFile) -> Iterator[bytes]:
    columns, batches = _answer_pieces(parquet)
    yield b'{"columns":' + orjson.dumps(columns) + b',"rows":['
    first = True
    for batch in batches:
        rows = zip(*[col.to_pylist() for col in batch.columns], strict=True)
        body = b",".join(orjson.dumps([json_value(v) for v in row]) for row in rows)
        if body:
            yield (b"" if first else b",") + body
            first = False
    yield b"]}"


def _parquet(raw: BinaryIO) -> Iterator[bytes]:
    with raw:
        while chunk := raw.read(CHUNK):
            yield chunk
