"""Cache keys over HTTP: upload (Arrow), download (parquet, arrow, csv, json), meta, delete.

Downloads stream: Parquet is sent in chunks as it is on disk (with Content-Length); the
other formats are converted record batch by record batch, so a frame of any size is never
built in server memory as one string.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from server.broker.broker import Caller
from server.cache.cache import describe, read_ipc
from server.cache.results import json_value
from server.errors import ValidationError
from server.handlers.base import BaseHandler

CHUNK = 1024 * 1024
BATCH_ROWS = 65_536
FORMATS = {
    "parquet": "application/vnd.apache.parquet",
    "arrow": "application/vnd.apache.arrow.stream",
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
}


def _batches(path: Path) -> Iterator[pa.RecordBatch]:
    yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)


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
    header = True
    for batch in _batches(path):
        sink = io.BytesIO()
        pa_csv.write_csv(batch, sink, pa_csv.WriteOptions(include_header=header))
        header = False
        yield sink.getvalue()


def _json(path: Path) -> Iterator[bytes]:
    columns = pq.read_schema(path).names
    yield b'{"columns":' + orjson.dumps(columns) + b',"rows":['
    first = True
    for batch in _batches(path):
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


class UploadHandler(BaseHandler):
    """``POST /cache?name=...``: an Arrow IPC stream kept under a new key (``save()`` from
    outside DataExec). The body is held whole, so ``max_body_bytes`` bounds it."""

    async def post(self) -> None:
        tenant = self.current_tenant()
        kind = self.request.headers.get("Content-Type", "").split(";")[0].strip()
        if kind != FORMATS["arrow"]:
            raise ValidationError(f"upload a frame as an Arrow IPC stream ({FORMATS['arrow']})")
        name = self.get_query_argument("name", None)
        table = read_ipc(self.request.body)
        caller = Caller(tenant.name, "", "")
        lineage = caller.lineage("upload", name[:200] if name else None)
        key = await self.runtime.cache.spill(tenant.name, None, table, lineage)
        entry = await self.runtime.cache.entry(tenant.name, key)
        self.set_header("Location", f"/cache/{key}")
        self.write_json(describe(entry), status=201)


class CacheHandler(BaseHandler):
    async def get(self, key: str) -> None:
        tenant = self.current_tenant()
        fmt = self.get_query_argument("format", "parquet")
        if fmt not in FORMATS:
            raise ValidationError(f"format must be one of {', '.join(FORMATS)}")
        cache = self.runtime.cache
        path = cache.path(await cache.entry(tenant.name, key))
        self.set_header("Content-Type", FORMATS[fmt])
        self.set_header("Content-Disposition", f'attachment; filename="{key}.{fmt}"')
        if fmt == "parquet":
            self.set_header("Content-Length", str(path.stat().st_size))
        chunks = CONVERTERS[fmt](path)
        loop = asyncio.get_running_loop()
        while (chunk := await loop.run_in_executor(None, next, chunks, None)) is not None:
            self.write(chunk)
            await self.flush()
        self.finish()

    async def delete(self, key: str) -> None:
        tenant = self.current_tenant()
        await self.runtime.cache.delete(tenant.name, key)
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()


class CacheMetaHandler(BaseHandler):
    async def get(self, key: str) -> None:
        tenant = self.current_tenant()
        self.write_json(describe(await self.runtime.cache.entry(tenant.name, key)))


routes = [
    (r"/cache", UploadHandler),
    (r"/cache/(?P<key>[^/]+)", CacheHandler),
    (r"/cache/(?P<key>[^/]+)/meta", CacheMetaHandler),
]
