"""The cache on its own, over a SQLite store: quota, least-recently-used eviction, TTL.

No server, kernel or PostgreSQL: ``Cache`` is built directly on a store in a temporary
directory. The cache through the API (keys of results, downloads, isolation between tenants,
the PostgreSQL store) is in ``tests/test_cache.py``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa

from server.cache.cache import Cache, reservation, write_parquet
from server.errors import NotFound, QuotaExceeded
from server.store.database import StoreDatabase
from server.store.models import CacheEviction


def random_table(rows: int) -> pa.Table:
    """Incompressible floats: the Parquet file is about as big as the table."""
    return pa.table({"x": pa.array(np.random.default_rng(rows).random(rows))})


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[StoreDatabase]:
    store = StoreDatabase(f"sqlite:///{tmp_path / 'store.db'}")
    await asyncio.get_running_loop().run_in_executor(None, store.upgrade)
    yield store
    store.close()


async def test_quota_evicts_least_recently_used_keys_first(
    sqlite_store: StoreDatabase, tmp_path: Path
) -> None:
    table = random_table(40_000)  # 320 kB
    cache = Cache(tmp_path / "cache", sqlite_store, 60, {}, default_quota=2**40)
    first, second, third = [await cache.spill("t", None, table, {}) for _ in range(3)]
    for key in (first, second, third):
        size = (await cache.entry("t", key)).bytes  # `first` is the least recently used...
    await cache.entry("t", first)  # ...until it is read again: now `second` is
    # One byte short of room for a fourth: each new spill evicts one key.
    cache.quotas["t"] = 3 * size + reservation(table) - 1
    fourth = await cache.spill("t", None, table, {})
    fifth = await cache.spill("t", None, table, {})
    await cache.close()
    with pytest.raises(NotFound, match="evicted to stay within the tenant's cache quota"):
        await cache.entry("t", second)
    with pytest.raises(NotFound, match="evicted"):
        await cache.entry("t", third)
    for key in (first, fourth, fifth):
        assert (await cache.entry("t", key)).status == "ready"
    assert sorted(p.stem for p in (tmp_path / "cache").rglob("*.parquet")) == sorted(
        [first, fourth, fifth]
    )
    with sqlite_store.session() as db:
        evictions = db.execute(sa.select(CacheEviction.key, CacheEviction.reason)).all()
    assert [tuple(e) for e in evictions] == [(second, "quota"), (third, "quota")]


async def test_a_frame_over_the_whole_quota_is_refused_and_nothing_is_evicted(
    sqlite_store: StoreDatabase, tmp_path: Path
) -> None:
    small, big = random_table(1_000), random_table(100_000)
    cache = Cache(tmp_path / "cache", sqlite_store, 60, {"t": reservation(big) - 1}, 2**40)
    kept = await cache.spill("t", None, small, {})
    with pytest.raises(QuotaExceeded, match="more than this tenant's whole cache quota"):
        await cache.spill("t", None, big, {})
    assert (await cache.entry("t", kept)).status == "ready"
    other = await cache.spill("other-tenant", None, big, {})  # the default quota applies
    assert (await cache.entry("other-tenant", other)).rows == 100_000


async def test_a_spill_waits_for_running_writes_rather_than_pass_the_quota(
    sqlite_store: StoreDatabase, tmp_path: Path
) -> None:
    # A slow disk, faked: the only way to keep real writes running on cue.
    disk = threading.Event()

    def slow_write(path: Path, table: pa.Table) -> int:
        disk.wait(10)
        return write_parquet(path, table)

    table = random_table(40_000)
    quota = 2 * reservation(table)
    cache = Cache(tmp_path / "cache", sqlite_store, 60, {"t": quota}, 2**40, write=slow_write)
    # Seen from outside, the moment the third spill finds no room is when it starts to wait.
    no_room = threading.Event()
    make_room = cache._make_room

    def watched_make_room(tenant: str, need: int, pending: int) -> bool:
        made = make_room(tenant, need, pending)
        if not made:
            no_room.set()
        return made

    cache._make_room = watched_make_room  # type: ignore[method-assign]
    # Two spills reserve the whole quota; a third waits for their writes, then evicts the
    # older of them.
    first, second = [await cache.spill("t", None, table, {}) for _ in range(2)]
    third = asyncio.ensure_future(cache.spill("t", None, table, {}))
    assert await asyncio.to_thread(no_room.wait, 10), "the third spill never found the quota full"
    assert not third.done() and cache.reserved["t"].keys() == {first, second}
    disk.set()
    third_key = await third
    await cache.close()
    with pytest.raises(NotFound, match="evicted"):
        await cache.entry("t", first)
    kept = [await cache.entry("t", k) for k in (second, third_key)]
    assert sum(e.bytes for e in kept) <= quota


async def test_expired_keys_are_swept_and_say_so(
    sqlite_store: StoreDatabase, tmp_path: Path
) -> None:
    cache = Cache(tmp_path / "cache", sqlite_store, 0.05, {}, 2**40)
    key = await cache.spill("t", None, pa.table({"a": [1]}), {})
    await cache.close()
    await asyncio.sleep(0.1)  # the wait is the point: the key's 0.05 s TTL must run out
    assert await cache.sweep() == 1
    with pytest.raises(NotFound, match=r"\(expired\)"):
        await cache.entry("t", key)
    assert not list((tmp_path / "cache").rglob("*.parquet"))
