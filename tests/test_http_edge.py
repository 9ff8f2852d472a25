"""The HTTP edge against abuse: sizes, slow clients, content types, unknown fields, code
length, what /health tells strangers, CORS, and tokens kept out of the log.

Most cases run against the shared server; timeouts and CORS need settings of their own
(``EDGE_CONFIG``, a server without warm kernels); the log is read from ``dataexec serve`` in
a process of its own, as an operator would read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from dataexec_testing.api import (
    ONE_SERVER,
    OPERATOR,
    OPERATOR_TOKEN,
    TOKEN_A,
    RunningServer,
    assert_error,
    server_on,
)
from dataexec_testing.serve import serve_env, start_serve

from server.auth import hash_token
from server.embedded.postgres import EmbeddedPostgres

SQL_ONE = {"language": "sql", "code": "SELECT 1 AS one"}
EDGE_TOKEN = "edge-tenant-token-" + secrets.token_hex(8)
ORIGIN = "https://app.example.com"
EDGE_CONFIG = f"""
operator_token = "{OPERATOR_TOKEN}"
header_timeout_s = 1
body_timeout_s = 2
cors_origins = ["{ORIGIN}"]

[pools.default]
min_idle = 0
max_kernels = 1

[tenants.edge]
tokens = ["{hash_token(EDGE_TOKEN)}"]  # kept as its hash: the tests call with the token
"""


async def exchange(url: str, request: bytes, timeout: float = 30) -> bytes:
    """Send raw bytes to the server at ``url``; everything it answers until it closes."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def error_of(raw: bytes) -> tuple[int, dict[str, object], dict[str, str]]:
    """Status, error detail and headers of a raw HTTP answer in the error shape."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), json.loads(body)["detail"], headers


# --- sizes ---------------------------------------------------------------------------------


@ONE_SERVER
async def test_a_request_head_over_the_limit_is_answered_431_and_the_server_stays_healthy(
    api: RunningServer, client: httpx.AsyncClient
) -> None:
    long_path = b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    status, detail, headers = error_of(await exchange(api.url, long_path))
    assert (status, detail["type"]) == (431, "HEADERS_TOO_LARGE")
    assert detail["request_id"] == headers["x-request-id"]
    big_header = await client.get("/health", headers={"X-Big": "b" * 1_000_000})
    assert_error(big_header, 431, "HEADERS_TOO_LARGE")
    assert (await client.get("/health")).json()["status"] == "ok"


@ONE_SERVER
async def test_a_body_over_the_cap_answers_413_in_the_error_shape(
    api: RunningServer, client: httpx.AsyncClient
) -> None:
    too_big = b"x" * (api.settings.max_body_bytes + 1_000_000)
    declared = await client.post("/execute", content=too_big)
    assert_error(declared, 413, "PAYLOAD_TOO_LARGE")
    assert declared.headers["Connection"] == "close"  # answered before the body was read
    async with api.client(token="not-a-token-of-anyone-here") as stranger:
        early = await stranger.post("/execute", content=too_big[: 8 << 20])
    assert_error(early, 401, "UNAUTHORIZED")  # answered before its body, not reset

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for start in range(0, len(too_big), 1 << 20):
            yield too_big[start : start + (1 << 20)]

    chunked = await client.post("/execute", content=chunks())
    assert "content-length" not in chunked.request.headers
    assert_error(chunked, 413, "PAYLOAD_TOO_LARGE")
    assert (await client.post("/execute", json=SQL_ONE)).status_code == 200


@ONE_SERVER
async def test_code_over_max_code_bytes_is_refused_before_it_reaches_a_kernel(
    api: RunningServer, client: httpx.AsyncClient, session_id: str
) -> None:
    code = "x = 1\n" + "#" * api.settings.max_code_bytes
    for path, body in (
        ("/execute", {"code": code}),
        ("/execute-on-data", {"code": code, "input_data": {"a": [{"x": 1}]}}),
        (f"/sessions/{session_id}/execute", {"code": code}),
    ):
        detail = assert_error(await client.post(path, json=body), 400, "VALIDATION_ERROR")
        assert "max_code_bytes" in detail["message"], path
    assert_error(await client.get(f"/sessions/{session_id}"), 404, "NOT_FOUND")


# --- connections ---------------------------------------------------------------------------


async def answers_on_one_connection(url: str, requests: list[bytes]) -> list[bytes]:
    """Send ``requests`` one after another on one connection, each once the answer before
    it is read whole: the answers (an empty one where the server had closed)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    answers = []
    try:
        for request in requests:
            writer.write(request)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            except asyncio.IncompleteReadError:
                answers.append(b"")
                continue
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            answers.append(head + await reader.readexactly(int(length[1]) if length else 0))
    finally:
        writer.close()
    return answers


@ONE_SERVER
async def test_a_connection_closes_only_after_an_answer_that_says_so(api: RunningServer) -> None:
    # A client reuses a kept-alive connection: one the server closes after an answer that
    # did not say "Connection: close" loses the client's next request as it closes.
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    auth = f"Authorization: Bearer {TOKEN_A}\r\n"
    refused_at_the_door = [
        b"GET /sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nobody\r\n\r\n",  # 401
        b"BREW /health HTTP/1.1\r\nHost: x\r\n\r\n",  # 405, before any handler code
        f"GET /audit HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode(),  # 403: operators only
    ]
    for request in refused_at_the_door:
        first, second = await answers_on_one_connection(api.url, [request, health])
        assert b"\r\nConnection: close\r\n" in first, first
        assert second == b"", "closed after an answer that said so"
    answered_after_reading = [
        f"GET /no/such/path HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode(),  # 404
        f"GET /sessions/no-such-session HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode(),  # 404
        f"POST /execute HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
        "Content-Length: 2\r\n\r\n{}".encode(),  # 400: no code
    ]
    for request in answered_after_reading:
        first, second = await answers_on_one_connection(api.url, [request, health])
        assert b" 4" in first.split(b"\r\n")[0] and b"Connection: close" not in first, first
        assert second.startswith(b"HTTP/1.1 200 "), second


# --- bodies --------------------------------------------------------------------------------


@ONE_SERVER
async def test_a_json_body_must_be_sent_as_json(client: httpx.AsyncClient) -> None:
    body = json.dumps(SQL_ONE).encode()
    for refused in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        answer = await client.post("/execute", content=body, headers={"Content-Type": refused})
        assert_error(answer, 415, "UNSUPPORTED_MEDIA_TYPE")
    for accepted in ("application/json", "application/json; charset=utf-8", None):
        headers = {"Content-Type": accepted} if accepted else {}
        answer = await client.post("/execute", content=body, headers=headers)
        assert answer.status_code == 200, (accepted, answer.text)


@ONE_SERVER
async def test_unknown_body_fields_are_refused_by_name(
    client: httpx.AsyncClient, session_id: str
) -> None:
    for path in ("/execute", "/execute-on-data", f"/sessions/{session_id}/execute", "/sessions"):
        body = {"code": "1", "tenant": "globex", "__proto__": {"admin": True}}
        if path == "/sessions":
            del body["code"]
        detail = assert_error(await client.post(path, json=body), 400, "VALIDATION_ERROR")
        assert detail["unknown_fields"] == ["tenant", "__proto__"], path
        assert "`tenant`" in detail["message"] and "`__proto__`" in detail["message"]


@ONE_SERVER
async def test_the_replaced_systems_documented_requests_still_run(
    client: httpx.AsyncClient,
) -> None:
    # The bodies of reference/replaced-system-README.md, every field it documents.
    first = await client.post("/execute", json={"language": "sql", "code": SQL_ONE["code"]})
    assert first.status_code == 200, first.text
    step = await client.post(
        "/execute-on-data",
        json={
            "code": "result_df = input_data['previous_results'].assign(two=2)",
            "input_data": {},
            "cache_keys": {"previous_results": first.json()["cache_key"]},
        },
    )
    assert step.status_code == 200, step.text
    assert step.json()["data"]["columns"] == ["one", "two"]


# --- /health -------------------------------------------------------------------------------


@ONE_SERVER
async def test_health_tells_strangers_and_tenants_only_status_and_version(
    api: RunningServer,
) -> None:
    for token in (None, TOKEN_A, "not-a-token-of-anyone-here"):
        async with api.client(token=token) as http:
            answer = await http.get("/health")
        assert answer.status_code == 200
        assert set(answer.json()) == {"status", "db_dialect", "version"}, token
        assert answer.json()["db_dialect"] == "postgresql"
        assert "Strict-Transport-Security" not in answer.headers  # plain HTTP: no HSTS
    async with api.client(token=None) as operator:
        details = (await operator.get("/health", headers=OPERATOR)).json()
    assert {"sandbox", "pools", "sessions", "database"} <= set(details)


# --- CORS ----------------------------------------------------------------------------------


@ONE_SERVER
async def test_without_cors_origins_no_answer_carries_cors_headers(
    client: httpx.AsyncClient,
) -> None:
    origin = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    preflight = await client.options("/execute", headers=origin)
    assert preflight.status_code == 405
    for answer in (preflight, await client.post("/execute", json=SQL_ONE, headers=origin)):
        assert not [h for h in answer.headers if h.lower().startswith("access-control-")]


# --- slow clients and CORS, on a server of their own ---------------------------------------


@pytest.fixture(scope="module")
async def edge(
    tmp_path_factory: pytest.TempPathFactory, embedded_pg: EmbeddedPostgres
) -> AsyncIterator[RunningServer]:
    async with server_on(embedded_pg, tmp_path_factory.mktemp("edge"), EDGE_CONFIG) as server:
        yield server


@pytest.mark.parametrize(
    "partial",
    [
        b"",  # connected, says nothing
        b"GET /health HTTP/1.1\r\nHost: x\r\n",  # headers that never end
        b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",  # a body neither
    ],
    ids=["idle", "slow-headers", "slow-body"],
)
async def test_slow_clients_are_disconnected(edge: RunningServer, partial: bytes) -> None:
    # Unbounded before: Tornado waited an hour for headers and forever for a body.
    assert b"HTTP/1.1 200" not in await exchange(edge.url, partial, timeout=30)


async def test_a_listed_origin_gets_its_preflight_and_cors_headers(edge: RunningServer) -> None:
    async with edge.client(token=EDGE_TOKEN) as http:
        preflight = await http.options(
            "/execute",
            headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 204, preflight.text
        assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
        listed = await http.get("/sessions", headers={"Origin": ORIGIN})
        assert listed.headers["Access-Control-Allow-Origin"] == ORIGIN
        refused = await http.get("/nope", headers={"Origin": ORIGIN})
        assert_error(refused, 404, "NOT_FOUND")
        assert refused.headers["Access-Control-Allow-Origin"] == ORIGIN
        stranger = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        other = await http.options("/execute", headers=stranger)
        assert other.status_code == 405
        assert "Access-Control-Allow-Origin" not in other.headers
        assert (
            "Access-Control-Allow-Origin"
            not in (await http.get("/sessions", headers={"Origin": "https://evil.example"})).headers
        )


# --- the log -------------------------------------------------------------------------------


async def test_no_token_reaches_the_log_whatever_the_request_looks_like(tmp_path: Path) -> None:
    token = "logged-never-" + secrets.token_hex(12)
    password = "pw-never-logged-" + secrets.token_hex(6)
    config = tmp_path / "dataexec.toml"
    config.write_text(f'[pools.default]\nmin_idle = 0\n\n[tenants.t]\ntokens = ["{token}"]\n')
    env = {**serve_env(tmp_path), "DATAEXEC_CONFIG": str(config)}
    env.update(DATAEXEC_LOG_LEVEL="DEBUG", DATAEXEC_POOLS__DEFAULT__MIN_IDLE="0")
    served = await start_serve(env)
    try:
        malformed = [
            f"Authorization: Bearer {token}\x01",  # a control character: Tornado refuses it
            f"Authorization: Bearer\x00{token}",
            f"{token}: header-named-by-the-token\x7f",
            f"Host: {token} with spaces",
        ]
        for line in malformed:
            raw = f"GET /sessions HTTP/1.1\r\nHost: x\r\n{line}\r\n\r\n".encode("latin-1")
            assert b" 400 " in await exchange(served.url, raw)
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
            for authorization in (f"Basic {token}", token, f"Bearer {token} x", f"Token {token}"):
                answer = await http.get("/sessions", headers={"Authorization": authorization})
                assert answer.status_code == 401
            odd = {"X-Api-Key": token, "Cookie": f"token={token}", "Proxy-Authorization": token}
            query = {"token": token, "access_token": token, "password": password, token: "x"}
            for path in ("/health", "/sessions", "/no/such/path", "/execute"):
                await http.get(path, headers=odd, params=query)
            with contextlib.suppress(httpx.TransportError):  # what matters here is the log
                await http.post("/execute", params=query, headers={"X-Big": token * 10_000})
            await http.get("/sessions", params={"format": token}, headers={"Authorization": "x"})
    finally:
        assert await served.stop() == 0
    log = "".join(served.log)
    assert "Malformed HTTP message" in log and "/no/such/path" in log, "the requests were logged"
    assert token not in log and password not in log
