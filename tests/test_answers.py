"""Real answers held against the bodies ``/openapi.json`` is built from (server/handlers/
bodies.py): every answer the API gives in a short session decodes as its declared Struct,
with no field the declaration lacks, so the document describes the API truthfully."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import msgspec
import pyarrow as pa
from dataexec_testing.api import ONE_SERVER, OPERATOR_TOKEN, RunningServer, assert_error

from server.handlers import bodies


def holds(answer: httpx.Response, kind: type[Any], status: int = 200) -> Any:
    """The answer's JSON as ``kind`` (a declared body); fails on any mismatch."""
    assert answer.status_code == status, answer.text
    return msgspec.convert(answer.json(), kind)


@ONE_SERVER
async def test_every_answer_of_a_session_matches_its_declared_body(api: RunningServer) -> None:
    session = "answers-" + secrets.token_hex(4)
    async with api.client() as http:
        holds(await http.post("/sessions", json={"session_id": session}), bodies.SessionState, 201)
        holds(await http.get(f"/sessions/{session}"), bodies.SessionState)
        holds(await http.get("/sessions"), bodies.SessionList)
        sql = await http.post(
            f"/sessions/{session}/execute",
            json={
                "language": "sql",
                "code": "SELECT carrier, count(*) AS n FROM flights GROUP BY 1",
            },
        )
        result = holds(sql, bodies.ExecutionResult)
        assert result.result_name == "df_1" and result.cache_key
        holds(
            await http.post(f"/sessions/{session}/execute", json={"code": "print(1); 2 + 2"}),
            bodies.ExecutionResult,
        )
        on_data = await http.post(
            "/execute-on-data",
            json={"code": "result_df = input_data['p']", "cache_keys": {"p": result.cache_key}},
        )
        holds(on_data, bodies.ExecutionResult)
        holds(await http.post("/execute", json={"code": "1"}), bodies.ExecutionResult)
        holds(await http.get(f"/cache/{result.cache_key}/meta"), bodies.CacheMeta)
        holds(await http.get(f"/sessions/{session}/variables"), bodies.Variables)
        holds(await http.post(f"/sessions/{session}/interrupt"), bodies.Interrupted)
        holds(await http.post(f"/sessions/{session}/restart"), bodies.Restarted)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, pa.schema([("a", pa.int64())])) as writer:
            writer.write_table(pa.table({"a": [1, 2]}))
        upload = await http.post(
            "/cache",
            content=sink.getvalue().to_pybytes(),
            headers={"Content-Type": "application/vnd.apache.arrow.stream"},
        )
        holds(upload, bodies.CacheMeta, 201)
        holds(await http.get("/schema"), bodies.SchemaAnswer)
        holds(await http.get("/schema/flights/profile"), bodies.Profile)
        error = assert_error(await http.get("/sessions/nope-nope"), 404, "NOT_FOUND")
        msgspec.convert({"detail": error}, bodies.ErrorAnswer)
        imported = await http.post("/sessions", json={"cells": ["x = 1", "x + 1"]})
        holds(imported, bodies.SessionState, 201)
        name = imported.json()["session_id"]
        holds(await http.get(f"/sessions/{name}/import"), bodies.ImportProgress)
        for ended in (session, name):
            assert (await http.delete(f"/sessions/{ended}")).status_code == 204
    async with api.client(token=None) as anonymous:
        holds(await anonymous.get("/health"), bodies.Health)
        holds(await anonymous.get("/client"), bodies.ClientInfo)
    async with api.client(token=OPERATOR_TOKEN) as operator:
        holds(await operator.get("/pools"), bodies.Pools)


def test_a_declared_answer_refuses_a_field_it_does_not_declare() -> None:
    # The check above can fail: an answer with a field the document lacks does not decode.
    answer = {"session_id": "a", "interrupted": True, "undeclared": 1}
    try:
        msgspec.convert(answer, bodies.Interrupted)
    except msgspec.ValidationError as exc:
        assert "undeclared" in str(exc)
    else:
        raise AssertionError("an undeclared field was accepted")
