"""Cache keys of SQL results: Parquet spill, downloads in four formats, meta, isolation.

Quota, eviction and TTL of the cache on its own are in ``tests/unit/test_cache_quota.py``.
"""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from dataexec_testing.api import TOKEN_B, RunningServer, assert_error

from server.cache.cache import Cache, describe
from server.embedded.postgres import EmbeddedPostgres
from server.errors import NotFound
from server.store.database import StoreDatabase

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


async def test_a_frame_arrow_cannot_hold_as_it_is_is_cached_renamed(
    client: httpx.AsyncClient, session_id: str
) -> None:
    answer = await client.post(
        f"/sessions/{session_id}/execute",
        json={"code": "pd.DataFrame([[1, 2]], columns=['a', 'a'])"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"] == {"columns": ["a", "a_1"], "rows": [[1, 2]]}
    assert answer.json()["cache_key"]  # more odd frames: tests/test_odd_frames.py


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
