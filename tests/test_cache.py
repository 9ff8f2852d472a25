"""Cache keys of SQL results: Parquet spill, downloads in four formats, meta, isolation."""

from __future__ import annotations

import asyncio
import io
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from dataexec_testing.api import TOKEN_B, RunningServer, assert_error

from server.cache.cache import Cache, describe, reservation, write_parquet
from server.embedded.postgres import EmbeddedPostgres
from server.errors import NotFound, QuotaExceeded
from server.store.database import StoreDatabase
from server.store.models import CacheEviction

QUERY = "SELECT carrier, count(*) AS n, avg(dep_delay) AS delay FROM flights GROUP BY carrier"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


async def sql_key(client: httpx.AsyncClient, query: str = QUERY) -> str:
    response = await client.post("/execute", json={"language": "sql", "code": query})
    assert response.status_code == 200, response.text
    key = response.json()["cache_key"]
    assert UUID4.match(key)
    return key


def expected(admin_engine: sa.Engine) -> pd.DataFrame:
    with admin_engine.connect() as conn:
        frame = pd.read_sql(sa.text(QUERY), conn)
    return frame.sort_values("carrier").reset_index(drop=True)


def normal(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.sort_values("carrier").reset_index(drop=True)
    return frame.astype({"carrier": str, "n": "int64", "delay": "float64"})


async def test_a_sql_result_downloads_equal_in_every_format(
    client: httpx.AsyncClient, admin_engine: sa.Engine
) -> None:
    key = await sql_key(client)
    want = normal(expected(admin_engine))
    parquet = await client.get(f"/cache/{key}")  # waits for the write if still running
    assert parquet.status_code == 200
    assert parquet.headers["Content-Type"] == "application/vnd.apache.parquet"
    assert parquet.headers["Content-Disposition"] == f'attachment; filename="{key}.parquet"'
    assert int(parquet.headers["Content-Length"]) == len(parquet.content)
    pd.testing.assert_frame_equal(
        normal(pq.read_table(io.BytesIO(parquet.content)).to_pandas()), want
    )
    arrow = await client.get(f"/cache/{key}", params={"format": "arrow"})
    assert arrow.headers["Content-Type"] == "application/vnd.apache.arrow.stream"
    pd.testing.assert_frame_equal(
        normal(pa.ipc.open_stream(arrow.content).read_all().to_pandas()), want
    )
    csv = await client.get(f"/cache/{key}", params={"format": "csv"})
    assert csv.headers["Content-Type"].startswith("text/csv")
    pd.testing.assert_frame_equal(
        normal(pd.read_csv(io.BytesIO(csv.content))), want, check_exact=False
    )
    as_json = (await client.get(f"/cache/{key}", params={"format": "json"})).json()
    assert as_json["columns"] == ["carrier", "n", "delay"]
    pd.testing.assert_frame_equal(
        normal(pd.DataFrame(as_json["rows"], columns=as_json["columns"])), want
    )


async def test_meta_shows_shape_schema_and_lineage(client: httpx.AsyncClient) -> None:
    key = await sql_key(client)
    await client.get(f"/cache/{key}")
    meta = (await client.get(f"/cache/{key}/meta")).json()
    assert meta["cache_key"] == key and meta["status"] == "ready"
    assert meta["row_count"] == 16 and meta["columns"] == ["carrier", "n", "delay"]
    assert meta["bytes"] > 0 and meta["lineage"]["sql"] == QUERY
    assert [c["name"] for c in meta["schema"]] == ["carrier", "n", "delay"]
    assert meta["expires"] > meta["created"]


async def test_keys_are_invisible_to_another_tenant(
    api: RunningServer, client: httpx.AsyncClient
) -> None:
    key = await sql_key(client)
    async with api.client(token=TOKEN_B) as other:
        assert_error(await other.get(f"/cache/{key}"), 404, "NOT_FOUND")
        assert_error(await other.get(f"/cache/{key}/meta"), 404, "NOT_FOUND")
        assert_error(await other.delete(f"/cache/{key}"), 404, "NOT_FOUND")
    assert (await client.get(f"/cache/{key}/meta")).status_code == 200


async def test_delete_removes_the_key_and_its_file(
    api: RunningServer, client: httpx.AsyncClient
) -> None:
    key = await sql_key(client)
    entry = await api.runtime.cache.entry("acme", key)
    path = api.runtime.cache.path(entry)
    assert path.exists()
    assert (await client.delete(f"/cache/{key}")).status_code == 204
    assert not path.exists()
    assert_error(await client.get(f"/cache/{key}"), 404, "NOT_FOUND")


async def test_concurrent_reads_of_a_key_being_written_wait_for_it(
    client: httpx.AsyncClient,
) -> None:
    key = await sql_key(client, "SELECT * FROM flights")
    downloads = await asyncio.gather(*[client.get(f"/cache/{key}") for _ in range(3)])
    for download in downloads:
        assert download.status_code == 200
        assert pq.read_table(io.BytesIO(download.content)).num_rows == 336_776


async def test_bad_keys_and_formats_answer_in_the_error_shape(client: httpx.AsyncClient) -> None:
    for bad in ("nope", "../../etc/passwd", "00000000-0000-4000-8000-000000000000"):
        assert_error(await client.get(f"/cache/{bad}"), 404, "NOT_FOUND")
    key = await sql_key(client)
    assert_error(
        await client.get(f"/cache/{key}", params={"format": "xlsx"}), 400, "VALIDATION_ERROR"
    )


async def test_python_and_session_sql_results_get_keys_too(
    client: httpx.AsyncClient, session_id: str
) -> None:
    frame = await client.post(
        f"/sessions/{session_id}/execute",
        json={"code": "pd.DataFrame({'x': [1, 2, 3], 'y': list('abc')})"},
    )
    key = frame.json()["cache_key"]
    assert UUID4.match(key)
    table = pq.read_table(io.BytesIO((await client.get(f"/cache/{key}")).content))
    assert table.to_pydict() == {"x": [1, 2, 3], "y": ["a", "b", "c"]}
    in_session = await client.post(
        f"/sessions/{session_id}/execute",
        json={"language": "sql", "code": "SELECT * FROM airlines"},
    )
    sql_key_ = in_session.json()["cache_key"]
    meta = (await client.get(f"/cache/{sql_key_}/meta")).json()
    assert meta["row_count"] == 16
    scalar = await client.post(f"/sessions/{session_id}/execute", json={"code": "1 + 1"})
    assert scalar.json()["cache_key"] is None


async def test_a_frame_arrow_cannot_hold_still_answers(
    client: httpx.AsyncClient, session_id: str
) -> None:
    answer = await client.post(
        f"/sessions/{session_id}/execute",
        json={"code": "pd.DataFrame([[1, 2]], columns=['a', 'a'])"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["rows"] == [[1, 2]]
    assert answer.json()["cache_key"] is None


async def test_the_cache_index_works_in_the_postgresql_store(
    embedded_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    store = StoreDatabase(embedded_pg.store_url)
    await asyncio.get_running_loop().run_in_executor(None, store.upgrade)
    cache = Cache(tmp_path / "cache", store, ttl_s=60, quotas={}, default_quota=2**40)
    try:
        key = await cache.spill("pg-tenant", None, pa.table({"a": [1, 2]}), {"sql": "q"})
        entry = await cache.entry("pg-tenant", key)
        assert describe(entry)["status"] == "ready" and entry.rows == 2
        assert pq.read_table(cache.path(entry)).to_pydict() == {"a": [1, 2]}
        await cache.delete("pg-tenant", key)
        with pytest.raises(NotFound):
            await cache.entry("pg-tenant", key)
    finally:
        store.close()


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
    # Two spills reserve the whole quota; a third waits for their writes, then evicts the
    # older of them.
    first, second = [await cache.spill("t", None, table, {}) for _ in range(2)]
    third = asyncio.ensure_future(cache.spill("t", None, table, {}))
    await asyncio.sleep(0.2)
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
    await asyncio.sleep(0.1)
    assert await cache.sweep() == 1
    with pytest.raises(NotFound, match=r"\(expired\)"):
        await cache.entry("t", key)
    assert not list((tmp_path / "cache").rglob("*.parquet"))
