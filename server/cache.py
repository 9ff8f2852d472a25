"""The Parquet cache: result frames under unguessable keys, scoped to their tenant.

``spill`` answers a new key (UUID4) at once and writes the frame to Parquet (zstd) off the
request path; the key is usable immediately, since a read of a key whose write is still
running waits for it. A write that fails marks the key failed, and reads then say so.

Files live under ``<state_dir>/cache/<tenant digest>/<key>.parquet``: the path is built from
the key (checked to be a UUID) and a digest of the tenant name, never from user input. The
index (tenant, status, shape, schema, lineage, created, last used, expiry) is the store's
``cache_entries`` table. Another tenant's key is simply unknown (``NOT_FOUND``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from server.errors import DataExecError, NotFound
from server.store import CacheEntry, Store

log = logging.getLogger(__name__)

KEY = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
T = TypeVar("T")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _utc(value: dt.datetime) -> dt.datetime:
    """A store timestamp as aware UTC (SQLite hands them back without a zone)."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


class CacheStore:
    """Writes, finds and deletes cached frames; see the module docstring."""

    def __init__(self, root: Path, store: Store, ttl_s: float) -> None:
        self.root = root
        self.store = store
        self.ttl = dt.timedelta(seconds=ttl_s)
        self.writes: dict[str, asyncio.Future[None]] = {}

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def _path(self, tenant: str, key: str) -> Path:
        tenant_dir = hashlib.sha256(tenant.encode()).hexdigest()[:16]
        return Path(tenant_dir) / f"{key}.parquet"

    async def spill(
        self, tenant: str, session_id: str | None, table: pa.Table, lineage: dict[str, Any]
    ) -> str:
        """A new key for ``table``; the Parquet write goes on in the background."""
        key = str(uuid.uuid4())
        relative = self._path(tenant, key)
        now = _now()
        entry = CacheEntry(
            key=key,
            tenant=tenant,
            session_id=session_id,
            status="pending",
            rows=table.num_rows,
            columns=table.column_names,
            schema=[{"name": f.name, "type": str(f.type)} for f in table.schema],
            bytes=None,
            path=str(relative),
            created=now,
            last_used=now,
            expires=now + self.ttl,
            lineage=lineage,
        )
        await self._in_thread(self._insert, entry)
        self.writes[key] = asyncio.ensure_future(self._write(key, relative, table))
        self.writes[key].add_done_callback(lambda _: self.writes.pop(key, None))
        return key

    def _insert(self, entry: CacheEntry) -> None:
        with self.store.session() as db, db.begin():
            db.add(entry)

    async def _write(self, key: str, relative: Path, table: pa.Table) -> None:
        path = self.root / relative
        try:
            size = await self._in_thread(_write_parquet, path, table)
        except Exception:
            log.exception("cache write of %s failed", key)
            await self._in_thread(self._update, key, {"status": "failed"})
            return
        await self._in_thread(self._update, key, {"status": "ready", "bytes": size})

    def _update(self, key: str, values: dict[str, Any]) -> None:
        with self.store.session() as db, db.begin():
            db.execute(sa.update(CacheEntry).where(CacheEntry.key == key).values(**values))

    async def entry(self, tenant: str, key: str) -> CacheEntry:
        """The ready entry of ``key`` for ``tenant`` (waits for a running write)."""
        if not KEY.match(key):
            raise NotFound(f"no cache key {key!r}")
        if key in self.writes:
            await asyncio.shield(self.writes[key])
        entry = await self._in_thread(self._touch, tenant, key)
        if entry is None:
            raise NotFound(f"no cache key {key!r}")
        if entry.status == "failed":
            raise DataExecError(f"writing cache key {key} failed; run the step again")
        return entry

    def _touch(self, tenant: str, key: str) -> CacheEntry | None:
        with self.store.session() as db, db.begin():
            entry = db.get(CacheEntry, key)
            if entry is None or entry.tenant != tenant or _utc(entry.expires) < _now():
                return None
            entry.last_used = _now()
            db.expunge(entry)
            return entry

    def path(self, entry: CacheEntry) -> Path:
        return self.root / entry.path

    async def delete(self, tenant: str, key: str) -> None:
        """Forget a key and remove its file."""
        entry = await self.entry(tenant, key)
        await self._in_thread(self._delete, entry)

    def _delete(self, entry: CacheEntry) -> None:
        with self.store.session() as db, db.begin():
            db.execute(sa.delete(CacheEntry).where(CacheEntry.key == entry.key))
        self.path(entry).unlink(missing_ok=True)

    async def close(self) -> None:
        """Let running writes finish."""
        if self.writes:
            await asyncio.gather(*list(self.writes.values()), return_exceptions=True)


def _write_parquet(path: Path, table: pa.Table) -> int:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_suffix(".partial")
    pq.write_table(table, partial, compression="zstd")
    partial.rename(path)
    return path.stat().st_size


def describe(entry: CacheEntry) -> dict[str, Any]:
    """What ``GET /cache/{key}/meta`` shows."""

    def iso(value: dt.datetime) -> str:
        return _utc(value).replace(microsecond=0).isoformat().replace("+00:00", "Z")

    return {
        "cache_key": entry.key,
        "status": entry.status,
        "session_id": entry.session_id,
        "row_count": entry.rows,
        "columns": entry.columns,
        "schema": entry.schema,
        "bytes": entry.bytes,
        "created": iso(entry.created),
        "last_used": iso(entry.last_used),
        "expires": iso(entry.expires),
        "lineage": entry.lineage,
    }
