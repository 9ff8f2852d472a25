"""The replaced system's multi-step flow: SQL -> key -> execute-on-data -> key -> download."""

from __future__ import annotations

import io

import httpx
import pandas as pd
import pyarrow.parquet as pq
import sqlalchemy as sa
from dataexec_testing.api import TOKEN_B, RunningServer, assert_error, ok

STEP = (
    "result_df = input_data['flights'].groupby('carrier').agg("
    "n=('flight', 'size'), delay=('dep_delay', 'mean')).reset_index()"
)


async def sql_key(client: httpx.AsyncClient, query: str) -> str:
    response = await client.post("/execute", json={"language": "sql", "code": query})
    assert response.status_code == 200, response.text
    return response.json()["cache_key"]


async def test_sql_then_execute_on_data_then_downloads_match_pandas(
    client: httpx.AsyncClient, admin_engine: sa.Engine
) -> None:
    flights_key = await sql_key(client, "SELECT carrier, flight, dep_delay FROM flights")
    response = await client.post(
        "/execute-on-data", json={"code": STEP, "cache_keys": {"flights": flights_key}}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "success" and answer["metadata"]["row_count"] == 16
    key = answer["cache_key"]
    assert key and key != flights_key
    with admin_engine.connect() as conn:
        direct = pd.read_sql(sa.text("SELECT carrier, flight, dep_delay FROM flights"), conn)
    want = (
        direct.groupby("carrier")
        .agg(n=("flight", "size"), delay=("dep_delay", "mean"))
        .reset_index()
        .sort_values("carrier")
        .reset_index(drop=True)
    )
    want = want.astype({"carrier": str, "n": "int64"})

    def same(frame: pd.DataFrame) -> None:
        frame = frame.sort_values("carrier").reset_index(drop=True)
        frame = frame.astype({"carrier": str, "n": "int64", "delay": "float64"})
        pd.testing.assert_frame_equal(frame, want, check_exact=False)

    parquet = await client.get(f"/cache/{key}", params={"format": "parquet"})
    same(pq.read_table(io.BytesIO(parquet.content)).to_pandas())
    csv = await client.get(f"/cache/{key}", params={"format": "csv"})
    same(pd.read_csv(io.BytesIO(csv.content)))
    as_json = (await client.get(f"/cache/{key}", params={"format": "json"})).json()
    same(pd.DataFrame(as_json["rows"], columns=as_json["columns"]))


async def test_literal_rows_and_sessions(client: httpx.AsyncClient, session_id: str) -> None:
    response = await client.post(
        "/execute-on-data",
        json={
            "session_id": session_id,
            "code": "result_df = input_data['a'].merge(input_data['b'], on='k')",
            "input_data": {
                "a": [{"k": 1, "x": "one"}, {"k": 2, "x": "two"}],
                "b": {"k": [2, 1], "y": [20.0, 10.0]},
            },
        },
    )
    assert response.status_code == 200, response.text
    rows = sorted(response.json()["data"]["rows"])
    assert rows == [[1, "one", 10.0], [2, "two", 20.0]]
    # The session keeps input_data and result_df for the next step; load() works in code.
    key = response.json()["cache_key"]
    again = await ok(client, session_id, f"len(load({key!r})) + len(input_data['a'])")
    assert again["data"]["rows"] == [[4]]


async def test_each_mistake_has_its_own_clear_error(
    api: RunningServer, client: httpx.AsyncClient
) -> None:
    missing = await client.post("/execute-on-data", json={"code": "x = 1"})
    detail = assert_error(missing, 400, "EXECUTION_ERROR")
    assert "result_df" in detail["message"]
    unknown = await client.post(
        "/execute-on-data",
        json={"code": STEP, "cache_keys": {"flights": "00000000-0000-4000-8000-000000000000"}},
    )
    assert_error(unknown, 404, "NOT_FOUND")
    for bad in ({"a": 5}, {"a": [1, 2]}, {"a": {"k": [1], "y": [1, 2]}}, [1]):
        malformed = await client.post("/execute-on-data", json={"code": STEP, "input_data": bad})
        assert_error(malformed, 400, "VALIDATION_ERROR")
    assert_error(
        await client.post("/execute-on-data", json={"input_data": {}}), 400, "VALIDATION_ERROR"
    )
    mine = await sql_key(client, "SELECT * FROM airlines")
    async with api.client(token=TOKEN_B) as other:
        stolen = await other.post(
            "/execute-on-data",
            json={"code": "result_df = input_data['a']", "cache_keys": {"a": mine}},
        )
        assert_error(stolen, 404, "NOT_FOUND")
        in_code = await other.post("/execute", json={"code": f"load({mine!r})"})
        assert_error(in_code, 404, "NOT_FOUND")
