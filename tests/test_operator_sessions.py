"""The operator's view of sessions: ``GET /operator/sessions`` and
``DELETE /operator/sessions/{tenant}/{session_id}``.

Owns: every tenant's sessions listed with tenant, state, pool, kernel (id, start, memory as
the sandbox's cgroup reports it, the pool's limit), idle time, created and execution count,
in both sandboxes; the tenant filter; tenant tokens refused; and a session ended by force
while its cell runs: the running request answers ``409 CANCELLED`` (reason
``session_terminated``) at once, its kernel process is gone, the list no longer shows it,
the audit says so, and the other tenant's session and new sessions keep working.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from dataexec_testing.api import (
    ONE_SERVER,
    OPERATOR_TOKEN,
    TOKEN_B,
    RunningServer,
    assert_error,
    ok,
    run,
    value_of,
    wait_for,
)

from server.handlers.operator import OperatorSessions

MiB = 1024 * 1024


@pytest.fixture
async def operator(api: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with api.client(OPERATOR_TOKEN) as http:
        yield http


@pytest.fixture
async def globex(api: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with api.client(TOKEN_B) as http:
        yield http


@pytest.fixture
async def other_id(api: RunningServer) -> AsyncIterator[str]:
    """A second fresh session id, for tenant globex; ended with the test."""
    name = "op-b-" + secrets.token_hex(6)
    yield name
    tenant = api.settings.tenants["globex"]
    if (tenant.name, name) in api.runtime.sessions.sessions:
        await api.runtime.sessions.delete(tenant, name)


async def listing(operator: httpx.AsyncClient, **params: str) -> dict[tuple[str, str], Any]:
    """The operator's session list (checked against its declared answer), by tenant and id."""
    response = await operator.get("/operator/sessions", params=params)
    assert response.status_code == 200, response.text
    msgspec.convert(response.json(), OperatorSessions)
    return {(s["tenant"], s["session_id"]): s for s in response.json()["sessions"]}


async def test_every_tenants_sessions_are_listed_with_kernel_memory(
    api: RunningServer,
    client: httpx.AsyncClient,
    globex: httpx.AsyncClient,
    operator: httpx.AsyncClient,
    session_id: str,
    other_id: str,
) -> None:
    await ok(client, session_id, "import pandas as pd\nframe = pd.DataFrame({'x': range(10)})")
    await ok(client, session_id, "frame.x.sum()")
    await ok(globex, other_id, "1 + 1")
    await asyncio.sleep(0.3)
    seen = await listing(operator)
    mine, theirs = seen[("acme", session_id)], seen[("globex", other_id)]
    assert (mine["state"], mine["pool"], mine["execution_count"]) == ("idle", "default", 2)
    assert (theirs["state"], theirs["execution_count"]) == ("idle", 1)
    for view in (mine, theirs):
        kernel = view["kernel"]
        assert kernel["status"] == "ready" and kernel["id"] and kernel["started"]
        assert kernel["memory_limit_bytes"] == 1024 * MiB
        # both sandboxes read the kernel's cgroup: a Python with pandas loaded is tens of MiB
        assert 10 * MiB < kernel["memory_bytes"] < kernel["memory_limit_bytes"]
        assert 0.3 <= view["idle_s"] < 60
        assert view["created"] <= view["last_activity"]
    session = api.runtime.sessions.sessions[("acme", session_id)]
    assert session.kernel is not None and mine["kernel"]["id"] == session.kernel.kernel_id
    # the filter: one tenant's only
    only = await listing(operator, tenant="globex")
    assert ("globex", other_id) in only and {t for t, _ in only} == {"globex"}
    assert_error(
        await operator.get("/operator/sessions", params={"tenant": "initech"}), 404, "NOT_FOUND"
    )


@ONE_SERVER
async def test_tenant_tokens_are_refused(
    api: RunningServer, client: httpx.AsyncClient, globex: httpx.AsyncClient, session_id: str
) -> None:
    await ok(client, session_id, "1")
    assert_error(await client.get("/operator/sessions"), 403, "FORBIDDEN")
    for http in (client, globex):
        refused = await http.delete(f"/operator/sessions/acme/{session_id}")
        assert_error(refused, 403, "FORBIDDEN")
    async with api.client(None) as anonymous:
        assert_error(await anonymous.get("/operator/sessions"), 401, "UNAUTHORIZED")
        assert_error(
            await anonymous.delete(f"/operator/sessions/acme/{session_id}"), 401, "UNAUTHORIZED"
        )
    assert await value_of(client, session_id, "40 + 2") == 42  # untouched


@ONE_SERVER
async def test_ending_a_busy_session_by_force_answers_its_request_cancelled(
    api: RunningServer,
    client: httpx.AsyncClient,
    globex: httpx.AsyncClient,
    operator: httpx.AsyncClient,
    session_id: str,
    other_id: str,
) -> None:
    await ok(globex, other_id, "kept = 7")
    await ok(client, session_id, "x = 1")
    kernel = api.runtime.sessions.sessions[("acme", session_id)].kernel
    assert kernel is not None
    started = time.monotonic()
    running = asyncio.ensure_future(run(client, session_id, "import time\ntime.sleep(60)"))

    async def busy() -> bool:
        view = (await listing(operator)).get(("acme", session_id), {})
        return view.get("state") == "busy" and view.get("idle_s") == 0.0

    await wait_for(busy)
    ended = await operator.delete(f"/operator/sessions/acme/{session_id}")
    assert ended.status_code == 204, ended.text
    detail = assert_error(await running, 409, "CANCELLED")
    assert detail["reason"] == "session_terminated"
    assert time.monotonic() - started < 20  # not the cell's 60 s
    await wait_for(lambda: _exited(kernel))
    seen = await listing(operator)
    assert ("acme", session_id) not in seen and ("globex", other_id) in seen
    assert_error(await client.get(f"/sessions/{session_id}"), 404, "NOT_FOUND")
    # the audit has the request's typed answer
    page = (await operator.get("/audit", params={"session_id": session_id})).json()
    assert [r["error_type"] for r in page["executions"]][:1] == ["CANCELLED"]
    # the others keep working: the other tenant's session, and the id used afresh
    assert await value_of(globex, other_id, "kept * 6") == 42
    assert await value_of(client, session_id, "1 + 1") == 2
    again = await listing(operator, tenant="acme")
    assert again[("acme", session_id)]["execution_count"] == 1


async def _exited(kernel: Any) -> bool:
    return await kernel.process.poll() is not None


@ONE_SERVER
async def test_ending_an_unknown_session_answers_not_found(
    operator: httpx.AsyncClient,
) -> None:
    assert_error(await operator.delete("/operator/sessions/acme/no-such-session"), 404, "NOT_FOUND")
    assert_error(await operator.delete("/operator/sessions/initech/s1"), 404, "NOT_FOUND")
