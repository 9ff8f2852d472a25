"""Per-tenant limits over HTTP: fair pool shares, sessions, concurrent executions, request rate.

Every refusal is ``429 RATE_LIMITED`` with ``Retry-After``, and a tenant within its limits
is never refused because another tenant is over its own.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import httpx
import pytest
from dataexec_testing.api import RunningServer, assert_error, server_on, value_of

from server.embedded.postgres import EmbeddedPostgres

GREEDY = "greedy-tenant-token-" + secrets.token_hex(6)
CALM = "calm-tenant-token-" + secrets.token_hex(6)
CAPPED = "capped-tenant-token-" + secrets.token_hex(6)
CHATTY = "chatty-tenant-token-" + secrets.token_hex(6)

CONFIG = f"""
capacity_wait_s = 1.0
[pools.default]
min_idle = 0
max_kernels = 2
[pools.shared]
min_idle = 1
max_kernels = 4
[pools.own]
min_idle = 0
max_kernels = 4

[tenants.greedy]
tokens = ["{GREEDY}"]
pools = ["shared"]
default_pool = "shared"

[tenants.calm]
tokens = ["{CALM}"]
pools = ["shared"]
default_pool = "shared"

[tenants.capped]
tokens = ["{CAPPED}"]
pools = ["own"]
default_pool = "own"
max_sessions = 2
max_concurrent_executions = 2

[tenants.chatty]
tokens = ["{CHATTY}"]
pools = ["default"]
requests_per_minute = 20
"""


@pytest.fixture(scope="module")
async def server(
    tmp_path_factory: pytest.TempPathFactory, embedded_pg: EmbeddedPostgres
) -> AsyncIterator[RunningServer]:
    async with server_on(embedded_pg, tmp_path_factory.mktemp("tenants"), CONFIG) as running:
        yield running


def assert_limited(response: httpx.Response) -> dict[str, object]:
    detail = assert_error(response, 429, "RATE_LIMITED")
    assert int(response.headers["Retry-After"]) >= 1
    return detail


async def test_a_tenant_past_its_pool_share_is_refused_and_the_other_still_gets_kernels(
    server: RunningServer,
) -> None:
    # Two tenants share a pool of 4: each may hold 2 kernels, whatever the other asks for.
    async with server.client(GREEDY) as greedy, server.client(CALM) as calm:
        answers = await asyncio.gather(*[greedy.post("/sessions", json={}) for _ in range(6)])
        created = [a.json()["session_id"] for a in answers if a.status_code == 201]
        assert len(created) == 2, [a.status_code for a in answers]
        for refused in (a for a in answers if a.status_code != 201):
            detail = assert_limited(refused)
            assert detail["pool"] == "shared" and detail["tenant_share"] == 2
        # Sessionless Python takes a kernel too: over the share, refused; the calm tenant's
        # session and its sessionless step both get one.
        assert_limited(await greedy.post("/execute", json={"code": "1 + 1"}))
        session = (await calm.post("/sessions", json={})).json()["session_id"]
        assert await value_of(calm, session, "21 * 2") == 42
        once = await calm.post("/execute", json={"code": "pd.DataFrame({'x': [1]})"})
        assert once.status_code == 200, once.text
        # An ended session gives its share back.
        await greedy.delete(f"/sessions/{created[0]}")
        again = await greedy.post("/sessions", json={})
        assert again.status_code == 201, again.text
        for name in (*created[1:], again.json()["session_id"]):
            await greedy.delete(f"/sessions/{name}")
        await calm.delete(f"/sessions/{session}")
    assert server.runtime.pools["shared"].held == {}


async def test_max_sessions_refuses_the_next_session_until_one_ends(
    server: RunningServer,
) -> None:
    async with server.client(CAPPED) as capped:
        first = await capped.post("/sessions", json={})
        second = await capped.post("/sessions", json={})
        assert first.status_code == second.status_code == 201
        detail = assert_limited(await capped.post("/sessions", json={}))
        assert detail["limit"] == 2 and "live sessions" in str(detail["message"])
        # A session made on first use by an execute counts too.
        assert_limited(await capped.post("/sessions/made-on-use/execute", json={"code": "1"}))
        await capped.delete(f"/sessions/{first.json()['session_id']}")
        third = await capped.post("/sessions", json={})
        assert third.status_code == 201
        for answer in (second, third):
            await capped.delete(f"/sessions/{answer.json()['session_id']}")


async def test_max_concurrent_executions_counts_every_path(server: RunningServer) -> None:
    async with server.client(CAPPED) as capped, server.client(GREEDY) as other:
        names = [(await capped.post("/sessions", json={})).json()["session_id"] for _ in range(2)]
        slow = [
            asyncio.ensure_future(
                capped.post(
                    f"/sessions/{name}/execute", json={"code": "import time; time.sleep(4)"}
                )
            )
            for name in names
        ]
        await asyncio.sleep(1.0)
        # Two run: a third of any kind is refused at once, queued nowhere.
        assert_limited(await capped.post("/execute", json={"language": "sql", "code": "SELECT 1"}))
        detail = assert_limited(
            await capped.post(f"/sessions/{names[0]}/execute", json={"code": "1"})
        )
        assert detail["limit"] == 2
        # Another tenant is not affected.
        sql = await other.post("/execute", json={"language": "sql", "code": "SELECT 1 AS one"})
        assert sql.status_code == 200
        assert [a.status_code for a in await asyncio.gather(*slow)] == [200, 200]
        after = await capped.post("/execute", json={"language": "sql", "code": "SELECT 2 AS two"})
        assert after.status_code == 200
        for name in names:
            await capped.delete(f"/sessions/{name}")


async def test_requests_per_minute_allow_a_burst_then_answer_retry_after(
    server: RunningServer,
) -> None:
    async with server.client(CHATTY) as chatty, server.client(CALM) as calm:
        statuses = [(await chatty.get("/sessions")).status_code for _ in range(20)]
        assert statuses == [200] * 20
        refused = await chatty.get("/sessions")
        detail = assert_limited(refused)
        assert detail["limit"] == 20
        # 20 a minute: one comes back every 3 s, and Retry-After says so.
        assert 1 <= int(refused.headers["Retry-After"]) <= 3
        assert (await calm.get("/sessions")).status_code == 200
        # Unauthenticated requests never spend a tenant's budget; /health stays open.
        async with server.client(None) as anonymous:
            assert (await anonymous.get("/health")).status_code == 200
        await asyncio.sleep(int(refused.headers["Retry-After"]))
        assert (await chatty.get("/sessions")).status_code == 200
