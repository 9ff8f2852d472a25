"""Cache keys over HTTP: upload (Arrow), download (parquet, arrow, csv, json), meta, delete.

Downloads (and notebooks: ``DOWNLOAD_HEADERS``) carry user-controlled content, HTML
included, so they are served with ``nosniff`` and a Content-Security-Policy that lets a
browser run and load nothing of them. A download is bounded by ``max_download_bytes``
(``server.cache.downloads``): over it before the first byte, it answers
``OUTPUT_TOO_LARGE``; past it while streaming, the connection is aborted without the end
of the chunked body, which every HTTP client reports as an incomplete response.
"""

from __future__ import annotations

import asyncio
import logging

from server.cache.cache import describe, read_ipc
from server.cache.downloads import FORMATS, download
from server.errors import OutputTooLarge, ValidationError
from server.handlers.base import BaseHandler, Operation
from server.handlers.bodies import CacheMeta

log = logging.getLogger(__name__)

DOWNLOAD_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; sandbox",
}
BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


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
            "Download a cached frame (streamed, within max_download_bytes: OUTPUT_TOO_LARGE "
            "before the first byte, else an aborted connection); CSV text cells that a "
            "spreadsheet would read as a formula get a leading ' unless escape_formulas=false",
            download="application/octet-stream",
            errors=(400, 404),
            query={
                "format": {"type": "string", "enum": list(FORMATS), "default": "parquet"},
                "escape_formulas": {"type": "string", "enum": ["true", "false"], "default": "true"},
            },
        ),
        "delete": Operation("Delete a cache key and its file", status=204, errors=(404,)),
    }

    def set_default_headers(self) -> None:
        super().set_default_headers()
        for name, value in DOWNLOAD_HEADERS.items():
            self.set_header(name, value)

    async def get(self, key: str) -> None:
        tenant = self.current_tenant()
        fmt = self.get_query_argument("format", "parquet")
        escape = self.get_query_argument("escape_formulas", "true").lower()
        if fmt not in FORMATS:
            raise ValidationError(f"format must be one of {', '.join(FORMATS)}")
        if escape not in BOOLEANS:
            raise ValidationError("escape_formulas must be true or false")
        cache = self.runtime.cache
        entry = await cache.entry(tenant.name, key)
        budget = self.settings_obj.max_download_bytes
        parts = await asyncio.to_thread(download, cache.path(entry), fmt, budget, BOOLEANS[escape])
        self.set_header("Content-Type", FORMATS[fmt])
        self.set_header("Content-Disposition", f'attachment; filename="{key}.{fmt}"')
        if fmt == "parquet" and entry.bytes is not None:
            self.set_header("Content-Length", str(entry.bytes))
        try:
            while (chunk := await asyncio.to_thread(next, parts, None)) is not None:
                self.write(chunk)
                await self.flush()
        except OutputTooLarge:
            if not self._headers_written:
                raise  # nothing sent yet: the error answer
            self.abort_download(key, fmt)
            return
        self.finish()

    def abort_download(self, key: str, fmt: str) -> None:
        """End a download past its budget so that the client cannot take it for whole: the
        connection closes without the chunked body's last chunk."""
        log.warning("download of %s as %s aborted: over max_download_bytes", key[:8], fmt)
        self._auto_finish = False  # nothing more may be written: no final chunk
        self.request.connection.close()  # type: ignore[union-attr]

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
