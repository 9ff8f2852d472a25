"""The log of ``dataexec serve``, read as an operator reads it: on a pipe, one JSON object a
line, a line per request and one per execution carrying the request id the client got in
``X-Request-Id``; never a token or the code, unless ``log_code`` is on; text with
``log_format = "text"``.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import httpx
from dataexec_testing.api import OPERATOR_TOKEN
from dataexec_testing.serve import ServeProcess, serve_env, start_serve

from server.embedded.postgres import EmbeddedPostgres

TOKEN = "log-tenant-token-" + secrets.token_hex(12)
# Printed at start instead of a token: the banner is not a log line.
BANNER = ("DataExec ", "token: ", "try:   ")


async def serve(embedded_pg: EmbeddedPostgres, tmp_path: Path, **env: str) -> ServeProcess:
    """``dataexec serve`` with one tenant ``logs`` (token ``TOKEN``), no warm kernels."""
    config = tmp_path / "dataexec.toml"
    config.write_text(f'[pools.default]\nmin_idle = 0\n\n[tenants.logs]\ntokens = ["{TOKEN}"]\n')
    full = serve_env(tmp_path)
    full.update(
        DATAEXEC_CONFIG=str(config),
        DATAEXEC_POOLS__DEFAULT__MIN_IDLE="0",
        DATAEXEC_DATABASE_URL=embedded_pg.query_url.render_as_string(hide_password=False),
        **env,
    )
    return await start_serve(full)


def client(served: ServeProcess, token: str | None = TOKEN) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=served.url, headers=headers, timeout=60)


def events(lines: list[str], kind: str) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in lines if line.startswith("{")]
    return [line for line in found if line.get("event") == kind]


def one(found: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    matching = [line for line in found if all(line.get(k) == v for k, v in fields.items())]
    assert len(matching) == 1, (fields, found)
    return matching[0]


async def test_json_lines_per_request_and_execution_with_the_request_id_and_no_secrets(
    embedded_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    marker = "code_body_never_logged_" + secrets.token_hex(6)
    served = await serve(embedded_pg, tmp_path)
    try:
        async with client(served) as http:
            ran = await http.post(
                "/sessions/s1/execute", json={"code": f"{marker} = 41\n{marker} + 1"}
            )
            assert ran.status_code == 200, ran.text
            failed = await http.post("/execute", json={"code": f"raise ValueError('{marker}')"})
            assert failed.status_code == 400, failed.text
            sql = await http.post("/execute", json={"language": "sql", "code": "SELECT 1 AS x"})
            assert sql.status_code == 200, sql.text
        async with client(served, token=OPERATOR_TOKEN) as operator:
            assert (await operator.get("/metrics")).status_code == 200
        async with client(served, token="wrong-" + TOKEN) as stranger:
            refused = await stranger.get("/sessions")
            assert refused.status_code == 401
    finally:
        assert await served.stop() == 0
    log = "".join(served.log)
    lines = [line for line in log.splitlines() if line.strip()]
    logged = [line for line in lines if not line.startswith(BANNER)]
    assert logged and all(line.startswith("{") for line in logged), logged
    for line in logged:
        assert {"ts", "level", "logger", "message"} <= json.loads(line).keys()

    requests, executions = events(lines, "request"), events(lines, "execution")
    route = "/sessions/{session_id}/execute"
    request = one(requests, route=route, status=200)
    assert request["request_id"] == ran.headers["X-Request-Id"]
    assert request["tenant"] == "logs" and request["session"] == "s1"
    assert request["method"] == "POST" and request["path"] == "/sessions/s1/execute"
    assert request["duration_ms"] > 0 and request["error_type"] is None
    step = one(executions, request_id=ran.headers["X-Request-Id"])
    assert step["tenant"] == "logs" and step["session"] == "s1"
    assert step["execution_count"] == 1 and step["status"] == "ok"
    assert step["language"] == "python" and step["pool"] == "default"
    assert step["error_type"] is None and 0 < step["duration_ms"] <= request["duration_ms"]

    failure = one(requests, route="/execute", status=400)
    assert failure["request_id"] == failed.headers["X-Request-Id"]
    assert failure["error_type"] == "EXECUTION_ERROR"
    broken = one(executions, request_id=failed.headers["X-Request-Id"])
    assert broken["status"] == "error" and broken["error_type"] == "EXECUTION_ERROR"
    assert broken["session"] is None
    in_server = one(executions, request_id=sql.headers["X-Request-Id"])
    assert in_server["language"] == "sql" and in_server["pool"] == "server"

    one(requests, route="/metrics", status=200, tenant="__operator__")
    stranger_line = one(requests, route="/sessions", status=401)
    assert stranger_line["error_type"] == "UNAUTHORIZED" and stranger_line["tenant"] is None
    assert stranger_line["request_id"] == refused.headers["X-Request-Id"]

    assert TOKEN not in log and OPERATOR_TOKEN not in log
    assert marker not in log
    assert not [line for line in executions if "code" in line]


async def test_log_code_puts_the_code_in_text_lines(
    embedded_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    marker = "code_body_logged_on_request_" + secrets.token_hex(6)
    served = await serve(embedded_pg, tmp_path, DATAEXEC_LOG_CODE="1", DATAEXEC_LOG_FORMAT="text")
    try:
        async with client(served) as http:
            ran = await http.post(
                "/sessions/s1/execute", json={"code": f"{marker} = 41\n{marker} + 1"}
            )
            assert ran.status_code == 200, ran.text
    finally:
        assert await served.stop() == 0
    log = "".join(served.log)
    assert not [line for line in log.splitlines() if line.startswith("{")], "text, not JSON"
    assert "200 POST /sessions/s1/execute" in log
    assert "execution logs/s1 #1 python in default: ok" in log
    assert f"    | {marker} = 41" in log and f"    | {marker} + 1" in log
    assert TOKEN not in log and OPERATOR_TOKEN not in log
