"""Downloads of a cached frame: parquet, arrow, csv, json, streamed in chunks.

Parquet is sent in chunks as it is on disk; the other formats are converted record batch by
record batch, so a frame of any size is never built in server memory as one string.
``chunks`` is a blocking iterator: callers take each chunk off the event loop.

Parquet and Arrow are the frame as cached, index and pandas metadata included, so that
pandas (and the analysts' client's ``load``) reads back the very frame the kernel had. CSV
and JSON are tables without an index: they hold the columns the answer showed
(``protocol.answer_columns``), a remnant row-number index left out.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from dataexec_kernel.protocol import ARROW_STREAM, answer_columns, json_value, shown

CHUNK = 1024 * 1024
BATCH_ROWS = 65_536
FORMATS = {
    "parquet": "application/vnd.apache.parquet",
    "arrow": ARROW_STREAM,
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
}


def _batches(path: Path) -> Iterator[pa.RecordBatch]:
    yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)


def _answer_batches(path: Path) -> tuple[list[str], Iterator[pa.RecordBatch]]:
    """The column names and batches of the answer's columns of the frame at ``path``."""
    plan = answer_columns(pq.read_schema(path))
    return [name for _, name in plan], (shown(batch, plan) for batch in _batches(path))


def _arrow(path: Path) -> Iterator[bytes]:
    schema = pq.read_schema(path)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in _batches(path):
            writer.write_batch(batch)
            yield sink.getvalue()
            sink.seek(0)
            sink.truncate()
    yield sink.getvalue()


def _csv(path: Path) -> Iterator[bytes]:
    _, batches = _answer_batches(path)
    header = True
    for batch in batches:
        sink = io.BytesIO()
        pa_csv.write_csv(batch, sink, pa_csv.WriteOptions(include_header=header))
        header = False
        yield sink.getvalue()


def _json(path: Path) -> Iterator[bytes]:
    columns, batches = _answer_batches(path)
    yield b'{"columns":' + orjson.dumps(columns) + b',"rows":['
    first = True
    for batch in batches:
        rows = zip(*[col.to_pylist() for col in batch.columns], strict=True)
        body = b",".join(orjson.dumps([json_value(v) for v in row]) for row in rows)
        if body:
            yield (b"" if first else b",") + body
            first = False
    yield b"]}"


def _parquet(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


CONVERTERS = {"parquet": _parquet, "arrow": _arrow, "csv": _csv, "json": _json}


def chunks(path: Path, fmt: str) -> Iterator[bytes]:
    """The bytes of the cached frame at ``path`` in format ``fmt`` (one of ``FORMATS``)."""
    return CONVERTERS[fmt](path)
