"""The Parquet cache: result frames under unguessable keys, scoped to their tenant.

``spill`` answers a new key (UUID4) at once and writes the frame off the request path: first
to the hot tier (``hot.py``: an Arrow file that ``load()`` maps), then to Parquet (zstd). The
key is usable immediately, since a read of a key whose write is still running waits for it
(``load()`` only for the hot file). A write that fails marks the key failed, and reads then
say so.

Files live under ``<state_dir>/cache/<tenant digest>/<key>.parquet``: the path is built from
the key (checked to be a UUID) and a digest of the tenant name, never from user input. The
index (tenant, status, shape, schema, lineage, created, last used, expiry) is the store's
``cache_entries`` table. Another tenant's key is simply unknown (``NOT_FOUND``). A frame is
kept with its index (pandas metadata); the index records the columns an answer shows of
it (``protocol.answer_columns``).

Retention: every tenant has a quota of Parquet bytes (checkpoints included) and every key a
TTL. A spill reserves about the frame's Arrow size (Parquet is rarely larger) before it answers;
when the reservation does not fit, the tenant's least recently used ready keys are evicted
until it does (waiting for the tenant's running writes when only they stand in the way),
and a frame that cannot fit at all answers ``QUOTA_EXCEEDED`` instead of writing past the
quota. Every eviction (``quota``, ``ttl``, ``deleted``) is recorded in
``cache_evictions``, so a read of a key that went away says when and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from dataexec_kernel.protocol import answer_columns
from sqlalchemy.orm.exc import StaleDataError

from server import clock
from server.cache.downloads import open_frame
from server.cache.hot import HotTier
from server.cache.lineage import upload_lineage
from server.cache.memory import FrameMemory, Hold
from server.errors import DataExecError, NotFound, QuotaExceeded, ValidationError
from server.store.database import StoreDatabase
from server.store.models import CacheEntry, CacheEviction
from server.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

KEY = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
WRITERS = 2  # Parquet writes at once
WRITER_NICE = 10
EVICTION_REASONS = {
    "quota": "evicted to stay within the tenant's cache quota",
    "ttl": "expired",
    "deleted": "deleted",
}


class Cache:
    """Writes, finds and deletes cached frames; see the module docstring."""

    def __init__(
        self,
        root: Path,
        store: StoreDatabase,
        ttl_s: float,
        quotas: dict[str, int],
        default_quota: int,
        write: Callable[[Path, pa.Table], int] | None = None,
        memory: FrameMemory | None = None,
        metrics: Metrics | None = None,
        hot_bytes: int = 0,
    ) -> None:
        self.root = root
        self.hot = HotTier(root / "hot", hot_bytes)
        self.metrics = metrics or Metrics()
        # Frames held whole until written (broker puts, the server's own queries).
        self.memory = memory or FrameMemory(limit=2**62, wait_s=0)
        self.write = write or write_parquet  # a test may slow the disk down
        # Parquet is written behind the answers: in threads of low priority, so that when
        # steps come back-to-back the next one's work is not slowed by the last one's file.
        self.writer = ThreadPoolExecutor(
            max_workers=WRITERS, thread_name_prefix="cache-write", initializer=_background
        )
        self.store = store
        self.ttl = dt.timedelta(seconds=ttl_s)
        self.quotas = quotas
        self.default_quota = default_quota
        self.writes: dict[str, asyncio.Future[None]] = {}
        self.hot_writes: dict[str, asyncio.Future[None]] = {}  # until the hot file is there
        # Bytes reserved by writes still running, per tenant and key.
        self.reserved: dict[str, dict[str, int]] = {}
        # Quota decisions of one tenant are made one at a time.
        self.tenant_locks: dict[str, asyncio.Lock] = {}

    def _path(self, tenant: str, key: str) -> Path:
        tenant_dir = hashlib.sha256(tenant.encode()).hexdigest()[:16]
        return Path(tenant_dir) / f"{key}.parquet"

    async def spill(
        self,
        tenant: str,
        session_id: str | None,
        table: pa.Table,
        lineage: dict[str, Any],
        hold: Hold | None = None,
    ) -> str:
        """A new key for ``table``; the Parquet write goes on in the background.

        Room is made within the tenant's quota first (``QuotaExceeded`` when there is none).
        ``hold``, the frame's share of ``memory``, is released once the write is over; the
        caller releases it if this raises.
        """
        key = str(uuid.uuid4())
        relative = self._path(tenant, key)
        columns = answer_columns(table.schema)
        now = clock.now()
        entry = CacheEntry(
            key=key,
            tenant=tenant,
            session_id=session_id,
            status="pending",
            rows=table.num_rows,
            # What the answer showed of the frame: no remnant row-number index.
            columns=[name for _, name in columns],
            schema=[{"name": name, "type": str(table.schema.field(i).type)} for i, name in columns],
            bytes=None,
            path=str(relative),
            created=now,
            last_used=now,
            expires=now + self.ttl,
            lineage=lineage,
        )
        need = reservation(table)
        lock = self.tenant_locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            while True:
                reserved = self.reserved.get(tenant, {})
                if await asyncio.to_thread(self._make_room, tenant, need, sum(reserved.values())):
                    break
                # Writes still running hold the rest: once written they can be evicted.
                running = [self.writes[k] for k in reserved if k in self.writes]
                await asyncio.gather(*map(asyncio.shield, running), return_exceptions=True)
            await asyncio.to_thread(self._insert, entry)
            self.reserved.setdefault(tenant, {})[key] = need
        hot = self.hot_writes[key] = asyncio.get_running_loop().create_future()
        hot.add_done_callback(lambda _: self.hot_writes.pop(key, None))
        write = self.writes[key] = asyncio.ensure_future(
            self._write(tenant, key, relative, table, hold)
        )

        def written(_: Any) -> None:
            self.writes.pop(key, None)
            if not hot.done():  # cancelled before its hot file
                hot.set_result(None)

        write.add_done_callback(written)
        return key

    async def upload(self, tenant: str, table: pa.Table, name: str | None) -> CacheEntry:
        """Keep a frame uploaded over HTTP under a new key; its ready entry."""
        key = await self.spill(tenant, None, table, upload_lineage(name))
        return await self.entry(tenant, key)

    def quota(self, tenant: str) -> int:
        return self.quotas.get(tenant, self.default_quota)

    def _make_room(self, tenant: str, need: int, pending: int) -> bool:
        """Evict the tenant's least recently used ready keys until ``need`` more bytes fit;
        False (nothing evicted) when they cannot while ``pending`` bytes are being written."""
        quota = self.quota(tenant)
        if need > quota:
            raise QuotaExceeded(
                f"the frame needs about {need:,} bytes, more than this tenant's whole cache "
                f"quota ({quota:,} bytes)"
            )
        with self.store.session() as db, db.begin():
            used = db.scalar(
                sa.select(sa.func.coalesce(sa.func.sum(CacheEntry.bytes), 0)).where(
                    CacheEntry.tenant == tenant, CacheEntry.status == "ready"
                )
            )
            over = int(used or 0) + pending + need - quota
            if over <= 0:
                return True
            oldest_first = db.scalars(
                sa.select(CacheEntry)
                .where(CacheEntry.tenant == tenant, CacheEntry.status == "ready")
                .order_by(CacheEntry.last_used, CacheEntry.created)
            )
            evicted = []
            for entry in oldest_first:
                if over <= 0:
                    break
                evicted.append(entry)
                over -= entry.bytes or 0
            if over > 0:
                return False
            self._forget(db, evicted, "quota")
        for entry in evicted:
            self._unlink(entry)
        log.info("cache quota of tenant %s: evicted %d keys", tenant, len(evicted))
        return True

    def _forget(self, db: Any, entries: list[CacheEntry], reason: str) -> None:
        """Delete ``entries`` from the index and record why (the files go after commit)."""
        if not entries:
            return
        keys = [entry.key for entry in entries]
        db.execute(sa.delete(CacheEntry).where(CacheEntry.key.in_(keys)))
        now = clock.now()
        db.add_all(
            CacheEviction(key=e.key, tenant=e.tenant, reason=reason, at=now) for e in entries
        )
        for entry in entries:
            self.metrics.cache_eviction(entry.tenant, reason)

    def _insert(self, entry: CacheEntry) -> None:
        with self.store.session() as db, db.begin():
            db.add(entry)

    async def _write(
        self, tenant: str, key: str, relative: Path, table: pa.Table, hold: Hold | None
    ) -> None:
        path = self.root / relative
        hot = self.hot_writes.get(key)
        try:
            try:
                await asyncio.to_thread(self.hot.write, key, table)
            except Exception as exc:  # a copy only: loads read the Parquet file instead
                log.warning("hot file of cache key %s not written: %s", key, exc)
            finally:
                if hot is not None and not hot.done():
                    hot.set_result(None)
            loop = asyncio.get_running_loop()
            size = await loop.run_in_executor(self.writer, self.write, path, table)
        except Exception:
            log.exception("cache write of %s failed", key)
            self.hot.discard(key)
            await asyncio.to_thread(self._update, key, {"status": "failed"})
            return
        finally:
            self.reserved.get(tenant, {}).pop(key, None)
            if hold is not None:
                hold.release()
        await asyncio.to_thread(self._update, key, {"status": "ready", "bytes": size})
        self.metrics.cache_write(tenant, size)

    def _update(self, key: str, values: dict[str, Any]) -> None:
        with self.store.session() as db, db.begin():
            db.execute(sa.update(CacheEntry).where(CacheEntry.key == key).values(**values))

    async def entry(self, tenant: str, key: str, hot: bool = False) -> CacheEntry:
        """The ready entry of ``key`` for ``tenant`` (waits for a running write; with
        ``hot``, only until its hot file is written, when its status may still be pending)."""
        if not KEY.match(key):
            raise NotFound(f"no cache key {key!r}")
        running = (hot and self.hot_writes.get(key)) or self.writes.get(key)
        if running is not None:
            await asyncio.shield(running)
        entry = await asyncio.to_thread(self._touch, tenant, key)
        if entry.status == "failed":
            raise DataExecError(f"writing cache key {key} failed; run the step again")
        return entry

    def _touch(self, tenant: str, key: str) -> CacheEntry:
        try:
            return self._touch_once(tenant, key)
        except StaleDataError:
            # Deleted (or evicted) between our read and our write of last_used: now gone,
            # so reading again answers NOT_FOUND with why.
            return self._touch_once(tenant, key)

    def _touch_once(self, tenant: str, key: str) -> CacheEntry:
        with self.store.session() as db, db.begin():
            entry = db.get(CacheEntry, key)
            if entry is None or entry.tenant != tenant or clock.utc(entry.expires) < clock.now():
                eviction = db.scalar(
                    sa.select(CacheEviction).where(
                        CacheEviction.key == key, CacheEviction.tenant == tenant
                    )
                )
                if eviction is None:
                    raise NotFound(f"no cache key {key!r}")
                raise NotFound(
                    f"cache key {key} was removed ({EVICTION_REASONS[eviction.reason]}) at "
                    f"{clock.iso(eviction.at)}"
                )
            entry.last_used = clock.now()
            db.flush()  # before expunge, which would drop the change
            db.expunge(entry)
            return entry

    def path(self, entry: CacheEntry) -> Path:
        return self.root / entry.path

    def open(self, entry: CacheEntry) -> pq.ParquetFile:
        """The entry's Parquet file, open: a key deleted after this is still read whole
        (the file stays readable while open); one deleted before is ``NotFound``."""
        try:
            return open_frame(self.path(entry))  # read in bounded batches: downloads.py
        except FileNotFoundError:
            raise NotFound(f"cache key {entry.key} was deleted while it was read") from None

    async def delete(self, tenant: str, key: str) -> None:
        """Forget a key and remove its file."""
        entry = await self.entry(tenant, key)
        await asyncio.to_thread(self._remove, [entry], "deleted")

    def _remove(self, entries: list[CacheEntry], reason: str) -> None:
        with self.store.session() as db, db.begin():
            self._forget(db, entries, reason)
        for entry in entries:
            self._unlink(entry)

    def _unlink(self, entry: CacheEntry) -> None:
        self.hot.discard(entry.key)
        self.path(entry).unlink(missing_ok=True)

    async def sweep(self) -> int:
        """Remove keys past their TTL; return how many went."""
        return await asyncio.to_thread(self._sweep)

    def _sweep(self) -> int:
        with self.store.session() as db:
            expired = list(
                db.scalars(
                    sa.select(CacheEntry).where(
                        CacheEntry.expires < clock.now(), CacheEntry.status != "pending"
                    )
                )
            )
        self._remove(expired, "ttl")
        return len(expired)

    def usage(self) -> dict[str, tuple[int, int]]:
        """Each tenant's ready keys and their Parquet bytes (for the metrics; blocking)."""
        with self.store.session() as db:
            rows = db.execute(
                sa.select(
                    CacheEntry.tenant,
                    sa.func.count(),
                    sa.func.coalesce(sa.func.sum(CacheEntry.bytes), 0),
                )
                .where(CacheEntry.status == "ready")
                .group_by(CacheEntry.tenant)
            )
            return {tenant: (int(keys), int(size or 0)) for tenant, keys, size in rows}

    def recover(self) -> None:
        """At start: a write a previous server left running never finished; mark it failed."""
        with self.store.session() as db, db.begin():
            db.execute(
                sa.update(CacheEntry).where(CacheEntry.status == "pending").values(status="failed")
            )

    async def close(self) -> None:
        """Let running writes finish."""
        if self.writes:
            await asyncio.gather(*list(self.writes.values()), return_exceptions=True)
        self.writer.shutdown(wait=False)


def _background() -> None:
    """Lower the calling thread's cpu priority (nice, on Linux per thread)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)


def read_ipc(body: bytes | pa.Buffer) -> pa.Table:
    """A frame sent to be cached (an Arrow IPC stream), or ValidationError if it is none."""
    try:
        return pa.ipc.open_stream(body).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValidationError(f"not an Arrow IPC stream: {exc}") from None


def reservation(table: pa.Table) -> int:
    """Bytes to hold for ``table``'s Parquet file until it is written.

    Its Arrow size and a quarter: incompressible data does not shrink, and a failed
    dictionary encoding, page headers and statistics add to it (measured: +17 % for random
    floats).
    """
    return table.nbytes + table.nbytes // 4 + 64 * 1024


def write_parquet(path: Path, table: pa.Table) -> int:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_suffix(".partial")
    pq.write_table(table, partial, compression="zstd")
    partial.rename(path)
    return path.stat().st_size


def describe(entry: CacheEntry) -> dict[str, Any]:
    """What ``GET /cache/{key}/meta`` shows."""
    return {
        "cache_key": entry.key,
        "status": entry.status,
        "session_id": entry.lineage.get("session"),
        "row_count": entry.rows,
        "columns": entry.columns,
        "schema": entry.schema,
        "bytes": entry.bytes,
        "created": clock.iso(entry.created),
        "last_used": clock.iso(entry.last_used),
        "expires": clock.iso(entry.expires),
        "lineage": entry.lineage,
    }
