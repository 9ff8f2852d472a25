"""Cache keys over HTTP: upload (Arrow), download (parquet, arrow, csv, json), meta, delete."""

from __future__ import annotations

import asyncio

from server.cache.cache import describe, read_ipc
from server.cache.downloads import FORMATS, chunks
from server.errors import ValidationError
from server.handlers.base import BaseHandler, Operation
from server.handlers.bodies import CacheMeta


class UploadHandler(BaseHandler):
    """``POST /cache?name=...``: an Arrow IPC stream kept under a new key (``save()`` from
    outside DataExec). The body is held whole, so ``max_body_bytes`` bounds it."""

    api = {
        "post": Operation(
            "Keep a frame (an Arrow IPC stream body, within max_body_bytes) under a new cache "
            "key: save() from outside DataExec; Location: /cache/{key}",
            CacheMeta,
            status=201,
            errors=(400, 413),
            upload=FORMATS["arrow"],
            query={"name": {"type": "string"}},
        )
    }

    async def post(self) -> None:
        tenant = self.current_tenant()
        kind = self.request.headers.get("Content-Type", "").split(";")[0].strip()
        if kind != FORMATS["arrow"]:
            raise ValidationError(f"upload a frame as an Arrow IPC stream ({FORMATS['arrow']})")
        name = self.get_query_argument("name", None)
        entry = await self.runtime.cache.upload(tenant.name, read_ipc(self.request.body), name)
        self.set_header("Location", f"/cache/{entry.key}")
        self.write_json(describe(entry), status=201)


class CacheHandler(BaseHandler):
    api = {
        "get": Operation(
            "Download a cached frame (streamed)",
            download="application/octet-stream",
            errors=(400, 404),
            query={"format": {"type": "string", "enum": list(FORMATS), "default": "parquet"}},
        ),
        "delete": Operation("Delete a cache key and its file", status=204, errors=(404,)),
    }

    async def get(self, key: str) -> None:
        tenant = self.current_tenant()
        fmt = self.get_query_argument("format", "parquet")
        if fmt not in FORMATS:
            raise ValidationError(f"format must be one of {', '.join(FORMATS)}")
        cache = self.runtime.cache
        entry = await cache.entry(tenant.name, key)
        self.set_header("Content-Type", FORMATS[fmt])
        self.set_header("Content-Disposition", f'attachment; filename="{key}.{fmt}"')
        if fmt == "parquet" and entry.bytes is not None:
            self.set_header("Content-Length", str(entry.bytes))
        parts = chunks(cache.path(entry), fmt)
        while (chunk := await asyncio.to_thread(next, parts, None)) is not None:
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
    api = {
        "get": Operation(
            "A cache key's shape, schema, bytes, times and lineage", CacheMeta, errors=(404,)
        )
    }

    async def get(self, key: str) -> None:
        tenant = self.current_tenant()
        self.write_json(describe(await self.runtime.cache.entry(tenant.name, key)))


routes = [
    (r"/cache", UploadHandler),
    (r"/cache/(?P<key>[^/]+)", CacheHandler),
    (r"/cache/(?P<key>[^/]+)/meta", CacheMetaHandler),
]
