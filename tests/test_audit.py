"""``GET /audit``: operators query past executions of every tenant from the store.

Owns: what an execution leaves in the audit (tenant, session, count, language, pool,
status, error type, duration, request id; the code only when asked for), the filters
(tenant, session, since/until, status, language) across two tenants, pagination by
opaque cursor (newest first, no row twice or missed), bad parameters answering
VALIDATION_ERROR, tenant tokens refused, and retention: a server with a short
``audit_retention_s`` and ``cull_interval_s`` deletes old rows from the store for real while
newer ones stay.

The audit sits above the sandbox (the session manager's door), so one server (bubblewrap)
runs it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import sqlalchemy as sa
from dataexec_testing.api import (
    CONFIG,
    ONE_SERVER,
    OPERATOR_TOKEN,
    TOKEN_B,
    RunningServer,
    assert_error,
    run,
    server_on,
    wait_for,
)

from server.embedded.postgres import EmbeddedPostgres
from server.handlers.operator import AuditPage
from server.store.models import AuditRow

SECRET = "hunter2-" + secrets.token_hex(4)


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


async def audit(operator: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    """One page of ``GET /audit``, checked against its declared answer."""
    response = await operator.get("/audit", params=params)
    assert response.status_code == 200, response.text
    msgspec.convert(response.json(), AuditPage)
    return response.json()


@pytest.fixture
async def operator(api: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with api.client(OPERATOR_TOKEN) as http:
        yield http


@pytest.fixture(scope="module")
async def traffic(api: RunningServer) -> AsyncIterator[dict[str, Any]]:
    """Executions of two tenants: acme's session (python, sql, an error) and one without a
    session, globex's session (one step holding a secret); their times and request ids."""
    async with api.client() as client, api.client(TOKEN_B) as globex:
        async for made in _traffic(client, globex):
            yield made


async def _traffic(
    client: httpx.AsyncClient, globex: httpx.AsyncClient
) -> AsyncIterator[dict[str, Any]]:
    tag = secrets.token_hex(4)
    a, b = f"audit-a-{tag}", f"audit-b-{tag}"
    before = dt.datetime.now(dt.UTC)
    ids: dict[str, str] = {}

    async def step(http: httpx.AsyncClient, name: str, session: str | None, **body: Any) -> None:
        path = "/execute" if session is None else f"/sessions/{session}/execute"
        response = await http.post(path, json=body)
        assert response.status_code in (200, 400), response.text
        ids[name] = response.headers["X-Request-Id"]

    await step(client, "a1", a, code="1 + 1")
    middle = dt.datetime.now(dt.UTC)
    await asyncio.sleep(0.01)
    await step(client, "a2", a, language="sql", code="SELECT 1 AS x")
    await step(client, "a3", a, code="1 / 0")
    await step(client, "a4", None, language="sql", code="SELECT 2 AS y")
    await step(globex, "b1", b, code="2 + 2")
    await step(globex, "b2", b, code=f"token = {SECRET!r}\n3")
    after = dt.datetime.now(dt.UTC)
    yield {"a": a, "b": b, "before": before, "middle": middle, "after": after, "ids": ids}
    await client.delete(f"/sessions/{a}")
    await globex.delete(f"/sessions/{b}")


@ONE_SERVER
async def test_each_execution_leaves_a_row_without_its_code(
    operator: httpx.AsyncClient, traffic: dict[str, Any]
) -> None:
    page = await audit(operator, tenant="acme", session_id=traffic["a"])
    rows = page["executions"]
    assert [r["execution_count"] for r in rows] == [3, 2, 1]  # newest first
    assert [r["status"] for r in rows] == ["error", "success", "success"]
    assert [r["error_type"] for r in rows] == ["EXECUTION_ERROR", None, None]
    assert [r["language"] for r in rows] == ["python", "sql", "python"]
    assert {(r["tenant"], r["pool"], r["kind"]) for r in rows} == {("acme", "default", "execute")}
    assert [r["request_id"] for r in rows] == [traffic["ids"][n] for n in ("a3", "a2", "a1")]
    assert all(r["duration_ms"] > 0 for r in rows)
    assert rows[1]["row_count"] == 1
    assert rows[2]["code_bytes"] == len("1 + 1")
    assert all("code" not in r and "params" not in r for r in rows)
    assert page["next_cursor"] is None and page["retention_s"] == 2592000.0
    for row in rows:
        started = dt.datetime.fromisoformat(row["started"])
        assert traffic["before"] - dt.timedelta(seconds=1) <= started <= traffic["after"]


@ONE_SERVER
async def test_code_is_answered_only_when_asked_for(
    operator: httpx.AsyncClient, traffic: dict[str, Any]
) -> None:
    plain = await operator.get("/audit", params={"tenant": "globex"})
    assert plain.status_code == 200 and SECRET not in plain.text
    page = await audit(operator, tenant="globex", session_id=traffic["b"], include_code="true")
    assert [r["code"] for r in page["executions"]] == [f"token = {SECRET!r}\n3", "2 + 2"]
    sql = await audit(operator, tenant="acme", language="sql", include_code="true", limit=50)
    assert "SELECT 2 AS y" in [r["code"] for r in sql["executions"]]


@ONE_SERVER
async def test_filters_select_across_two_tenants(
    operator: httpx.AsyncClient, traffic: dict[str, Any]
) -> None:
    since = iso(traffic["before"])
    mine = {traffic["ids"][n] for n in ("a1", "a2", "a3", "a4", "b1", "b2")}

    async def request_ids(**params: Any) -> set[str]:
        page = await audit(operator, **{"since": since, "limit": 1000, **params})
        return {r["request_id"] for r in page["executions"]} & mine

    ids = traffic["ids"]
    assert await request_ids() == mine
    assert await request_ids(tenant="globex") == {ids["b1"], ids["b2"]}
    assert await request_ids(tenant="acme") == {ids[n] for n in ("a1", "a2", "a3", "a4")}
    assert await request_ids(session_id=traffic["b"]) == {ids["b1"], ids["b2"]}
    assert await request_ids(status="error") == {ids["a3"]}
    assert await request_ids(status="EXECUTION_ERROR") == {ids["a3"]}
    assert await request_ids(status="TIMEOUT") == set()
    assert await request_ids(status="success", tenant="globex") == {ids["b1"], ids["b2"]}
    assert await request_ids(language="sql") == {ids["a2"], ids["a4"]}
    assert await request_ids(language="sql", tenant="globex") == set()
    later = await request_ids(since=iso(traffic["middle"]))
    assert later == mine - {ids["a1"]}
    assert await request_ids(until=iso(traffic["middle"])) == {ids["a1"]}
    hour_before = iso(traffic["before"] - dt.timedelta(hours=1))
    assert await request_ids(since=hour_before, until=iso(traffic["before"])) == set()
    # without a session: no session id, no pool (the server ran the SQL itself)
    [once] = [
        r
        for r in (await audit(operator, tenant="acme", since=since))["executions"]
        if r["request_id"] == ids["a4"]
    ]
    assert (once["session_id"], once["pool"], once["execution_count"]) == (None, None, None)


@ONE_SERVER
async def test_pages_walk_every_row_once_newest_first(
    operator: httpx.AsyncClient, traffic: dict[str, Any]
) -> None:
    since = iso(traffic["before"])
    whole = (await audit(operator, since=since, limit=1000))["executions"]
    assert len(whole) >= 6
    keys = [(r["started"], r["id"]) for r in whole]
    assert keys == sorted(keys, reverse=True)
    walked: list[int] = []
    cursor = None
    pages = 0
    while True:
        params = {"since": since, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await audit(operator, **params)
        assert len(page["executions"]) <= 2
        walked += [r["id"] for r in page["executions"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert walked == [r["id"] for r in whole]
    assert pages >= 3
    # a cursor stays valid with filters: the rest of one tenant's rows
    first = await audit(operator, since=since, tenant="acme", limit=1)
    rest = await audit(operator, since=since, tenant="acme", cursor=first["next_cursor"])
    ids = [r["id"] for r in first["executions"] + rest["executions"]]
    assert ids == [r["id"] for r in whole if r["tenant"] == "acme"]


@ONE_SERVER
async def test_a_client_that_goes_away_is_audited_as_disconnected(
    api: RunningServer, operator: httpx.AsyncClient, session_id: str
) -> None:
    async with api.client(timeout=60) as http:
        assert (await run(http, session_id, "1")).status_code == 200
    async with api.client(timeout=1.0) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await run(impatient, session_id, "import time\ntime.sleep(30)")

    async def disconnected() -> list[dict[str, Any]]:
        page = await audit(operator, session_id=session_id, status="disconnected")
        return page["executions"]

    [row] = await wait_for(disconnected)
    assert (row["tenant"], row["language"], row["error_type"]) == ("acme", "python", None)
    assert 900 <= row["duration_ms"] < 10000


@ONE_SERVER
async def test_an_imported_notebooks_cells_are_audited_with_the_import_request(
    client: httpx.AsyncClient, operator: httpx.AsyncClient, session_id: str
) -> None:
    cells = ["x = 20", {"code": "SELECT 22 AS y", "language": "sql"}, "x + 22"]
    made = await client.post("/sessions", json={"session_id": session_id, "cells": cells})
    assert made.status_code == 201, made.text
    rows = (await audit(operator, session_id=session_id, include_code="true"))["executions"]
    assert [(r["execution_count"], r["language"], r["code"]) for r in rows] == [
        (3, "python", "x + 22"),
        (2, "sql", "SELECT 22 AS y"),
        (1, "python", "x = 20"),
    ]
    assert {(r["status"], r["request_id"], r["pool"]) for r in rows} == {
        ("success", made.headers["X-Request-Id"], "default")
    }


@ONE_SERVER
@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01T00:00:00Z"}, "until"),
        ({"since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"}, "since"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "51", "include_code": "true"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"status": "maybe"}, "status"),
        ({"language": "cobol"}, "language"),
        ({"include_code": "perhaps"}, "include_code"),
        ({"tenant_name": "acme"}, "tenant_name"),
    ],
)
async def test_bad_parameters_answer_validation_error(
    operator: httpx.AsyncClient, params: dict[str, str], named: str
) -> None:
    detail = assert_error(await operator.get("/audit", params=params), 400, "VALIDATION_ERROR")
    assert named in detail["message"]


@ONE_SERVER
async def test_tenant_tokens_are_refused(api: RunningServer, client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/audit"), 403, "FORBIDDEN")
    async with api.client(TOKEN_B) as globex:
        assert_error(await globex.get("/audit", params={"tenant": "globex"}), 403, "FORBIDDEN")
    async with api.client(None) as anonymous:
        assert_error(await anonymous.get("/audit"), 401, "UNAUTHORIZED")


# --- retention ------------------------------------------------------------------------------

RETENTION_S = 4.0
RETENTION_CONFIG = f"audit_retention_s = {RETENTION_S}\ncull_interval_s = 0.2\n" + CONFIG.replace(
    "min_idle = 2", "min_idle = 0"
)


async def test_rows_past_the_retention_are_deleted_from_the_store(
    embedded_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    async with server_on(embedded_pg, tmp_path, RETENTION_CONFIG) as server:
        async with server.client() as http, server.client(OPERATOR_TOKEN) as operator:

            async def execute(code: str) -> str:
                response = await http.post("/execute", json={"language": "sql", "code": code})
                assert response.status_code == 200, response.text
                return response.headers["X-Request-Id"]

            async def kept() -> list[str]:
                return [r["request_id"] for r in (await audit(operator))["executions"]]

            await execute("SELECT 0 AS warm_up")  # the first query connects and loads the guard
            old = await execute("SELECT 1 AS old")
            assert old in await kept()
            await asyncio.sleep(RETENTION_S / 2)
            new = await execute("SELECT 2 AS new")
            assert (await kept())[:2] == [new, old]
            assert (await audit(operator))["retention_s"] == RETENTION_S

            async def old_gone() -> bool:
                return old not in await kept()

            await wait_for(old_gone, timeout=RETENTION_S + 5)
            # the newer row is younger than the retention: still there
            assert await kept() == [new]

            def stored() -> list[str | None]:
                with server.runtime.store.session() as db:
                    return list(db.scalars(sa.select(AuditRow.request_id)))

            assert await asyncio.to_thread(stored) == [new]
