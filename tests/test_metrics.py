"""GET /metrics: Prometheus text that prometheus_client's own parser reads, moving with the
traffic it describes, for the operator only on the API port and for anyone on
``metrics_port``.

The traffic runs on the shared server (counters only grow, so each check compares a scrape
before with one after); the separate port is tried on ``dataexec serve`` in a process of
its own, as an operator starts it.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import httpx
from dataexec_testing.api import (
    ONE_SERVER,
    OPERATOR,
    TOKEN_A,
    RunningServer,
    assert_error,
    ok,
    wait_for,
)
from dataexec_testing.scrapes import Samples, parse, scrape, value
from dataexec_testing.serve import serve_env, start_serve

from server.embedded.postgres import EmbeddedPostgres


@ONE_SERVER
async def test_metrics_move_with_requests_executions_queries_cache_and_replacements(
    api: RunningServer, session_id: str
) -> None:
    before = await scrape(api)
    async with api.client() as client:
        frame = await ok(client, session_id, "df = pd.DataFrame({'x': range(1000)})\ndf")
        assert frame["cache_key"]
        await ok(client, session_id, "SELECT carrier FROM airlines", language="sql")
        failed = await client.post(f"/sessions/{session_id}/execute", json={"code": "1/0"})
        assert_error(failed, 400, "EXECUTION_ERROR")
        restarted = await client.post(f"/sessions/{session_id}/restart")
        assert restarted.status_code == 200, restarted.text
        await ok(client, session_id, "df.shape[0]")
        sql = await client.post("/execute", json={"language": "sql", "code": "SELECT 1 AS one"})
        assert sql.status_code == 200, sql.text
        assert_error(await client.get("/no/such/path"), 404, "NOT_FOUND")
    after = await scrape(api)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/sessions/{session_id}/execute"
    ok_requests = grew("dataexec_http_requests_total", route=route, method="POST", status="200")
    assert ok_requests == 3
    assert grew("dataexec_http_requests_total", route=route, method="POST", status="400") == 1
    assert grew("dataexec_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert not [labels for _, labels in after if any(session_id in v for _, v in labels)]
    assert grew("dataexec_http_request_duration_seconds_count", route="/execute") == 1

    # At least: a notebook import another test left replaying may run steps meanwhile.
    assert grew("dataexec_executions_total", language="python", pool="default", status="ok") >= 2
    assert grew("dataexec_executions_total", language="sql", pool="default", status="ok") >= 1
    assert grew("dataexec_executions_total", language="sql", pool="server", status="ok") == 1
    errors = grew(
        "dataexec_executions_total", language="python", pool="default", status="EXECUTION_ERROR"
    )
    assert errors >= 1
    histogram = "dataexec_execution_duration_seconds"
    assert grew(f"{histogram}_count", language="python", pool="default") >= 3
    assert grew(f"{histogram}_sum", language="python", pool="default") > 0
    le_inf = grew(f"{histogram}_bucket", language="python", pool="default", le="+Inf")
    assert le_inf == grew(f"{histogram}_count", language="python", pool="default")

    # The session's first kernel and the restart's: both from the default pool.
    taken = grew("dataexec_pool_hits_total", pool="default") + grew(
        "dataexec_pool_cold_starts_total", pool="default"
    )
    assert taken >= 2
    assert grew("dataexec_kernel_replacements_total", pool="default", reason="restart") == 1
    assert value(after, "dataexec_kernels", pool="default", state="in_use") >= 1
    assert value(after, "dataexec_pool_max_kernels", pool="default") == 8
    assert ("dataexec_pool_waiters", frozenset({("pool", "default")})) in after
    assert value(after, "dataexec_sessions", tenant="acme", state="idle") >= 1
    assert ("dataexec_session_queue_depth", frozenset({("tenant", "acme")})) in after

    assert grew("dataexec_db_query_duration_seconds_count", status="ok") >= 2
    assert grew("dataexec_db_result_bytes_total") > 0
    assert grew("dataexec_broker_bytes_total", op="sql", direction="to_kernel") > 0
    assert grew("dataexec_broker_bytes_total", op="put", direction="from_kernel_mapped") > 0

    # Parquet writes finish after the answer: the written bytes and the keys follow.
    async def written() -> Samples | None:
        now = await scrape(api)
        more = value(now, "dataexec_cache_written_bytes_total", tenant="acme")
        return (
            now
            if more > value(before, "dataexec_cache_written_bytes_total", tenant="acme")
            else None
        )

    now = await wait_for(written)
    assert value(now, "dataexec_cache_keys", tenant="acme") >= 1
    assert value(now, "dataexec_cache_bytes", tenant="acme") > 0


@ONE_SERVER
async def test_cache_evictions_are_counted_by_tenant_and_reason(api: RunningServer) -> None:
    before = await scrape(api)
    async with api.client() as client:
        answer = await client.post("/execute", json={"language": "sql", "code": "SELECT 2 AS two"})
        assert answer.status_code == 200, answer.text
        key = answer.json()["cache_key"]
        deleted = await client.delete(f"/cache/{key}")
        assert deleted.status_code == 204, deleted.text
    after = await scrape(api)
    name = "dataexec_cache_evictions_total"
    grew = value(after, name, tenant="acme", reason="deleted")
    assert grew - value(before, name, tenant="acme", reason="deleted") == 1


@ONE_SERVER
async def test_metrics_need_the_operator_token(api: RunningServer) -> None:
    async with api.client(token=None) as stranger:
        assert_error(await stranger.get("/metrics"), 401, "UNAUTHORIZED")
    async with api.client(token=TOKEN_A) as tenant:
        assert_error(await tenant.get("/metrics"), 403, "FORBIDDEN")
    async with api.client(token=None) as operator:
        answer = await operator.get("/metrics", headers=OPERATOR)
        assert answer.status_code == 200
        assert "dataexec_http_requests_total" in answer.text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_metrics_port_serves_metrics_without_a_token_and_nothing_else(
    embedded_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    port = free_port()
    env = serve_env(tmp_path)
    env.update(
        DATAEXEC_METRICS_PORT=str(port),
        DATAEXEC_POOLS__DEFAULT__MIN_IDLE="0",
        DATAEXEC_DATABASE_URL=embedded_pg.query_url.render_as_string(hide_password=False),
    )
    served = await start_serve(env)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as open_:
            answer = await open_.get("/metrics")
            assert answer.status_code == 200, answer.text
            samples = parse(answer.text)
            assert value(samples, "dataexec_pool_max_kernels", pool="default") == 8
            assert_error(await open_.get("/health"), 404, "NOT_FOUND")
            assert_error(await open_.get("/sessions"), 404, "NOT_FOUND")
            # The scrape itself is counted, under the route pattern.
            again = parse((await open_.get("/metrics")).text)
            counted = value(
                again, "dataexec_http_requests_total", route="/metrics", method="GET", status="200"
            )
            assert counted >= 1
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as api_port:
            assert_error(await api_port.get("/metrics"), 401, "UNAUTHORIZED")
            wrong = {"Authorization": f"Bearer {secrets.token_hex(16)}"}
            assert_error(await api_port.get("/metrics", headers=wrong), 401, "UNAUTHORIZED")
    finally:
        assert await served.stop() == 0
