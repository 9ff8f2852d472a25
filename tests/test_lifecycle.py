"""The server as an operator runs it: `dataexec serve` in its own process, signals, orphans.

``--version`` and bad configuration, which start no server, are in ``tests/unit/test_cli.py``.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dataexec_testing.api import REQUIRE_DOCKER, docker_ready, make_settings, start_server, wait_for
from dataexec_testing.serve import ServeProcess, kernel_leftovers, serve_env, start_serve

from server.config import with_default_tenant


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[ServeProcess]:
    server = await start_serve(serve_env(tmp_path))
    yield server
    if server.process.returncode is None:
        server.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.process.wait(), 30)


async def test_serve_prints_url_and_token_and_answers(serve: ServeProcess) -> None:
    async with serve.client() as http:
        assert (await http.get("/health")).json()["status"] == "ok"
        answer = await http.post("/execute", json={"code": "pd.DataFrame({'x': range(3)})"})
    assert answer.status_code == 200
    assert answer.json()["metadata"]["row_count"] == 3
    token_file = Path(serve.env["DATAEXEC_STATE_DIR"]) / "token"
    assert token_file.read_text().strip() == serve.token
    assert token_file.stat().st_mode & 0o777 == 0o600


async def test_sigterm_lets_a_running_cell_finish_then_removes_every_kernel(
    serve: ServeProcess,
) -> None:
    async with serve.client() as http:
        await http.post("/sessions/s1/execute", json={"code": "x = 1"})
        running = asyncio.ensure_future(
            http.post("/sessions/s1/execute", json={"code": "import time; time.sleep(1.5); x + 41"})
        )

        async def running_cell() -> bool:
            return (await http.get("/sessions/s1")).json()["state"] == "busy"

        await wait_for(running_cell)
        serve.process.send_signal(signal.SIGTERM)
        answer = await running
    assert answer.status_code == 200
    assert answer.json()["data"]["rows"] == [[42]]
    assert await asyncio.wait_for(serve.process.wait(), 30) == 0
    assert kernel_leftovers(serve.env) == []


async def test_a_restarted_server_removes_what_a_killed_one_left(serve: ServeProcess) -> None:
    async with serve.client() as http:
        assert (await http.post("/sessions", json={"session_id": "left"})).status_code == 201
    serve.process.send_signal(signal.SIGKILL)
    await serve.process.wait()
    left = kernel_leftovers(serve.env)
    assert left, "a killed server leaves kernel dirs and cgroups behind"
    successor = await start_serve(serve.env)
    try:

        async def cleaned() -> bool:
            return not any(p in kernel_leftovers(serve.env) for p in left)

        await wait_for(cleaned)
    finally:
        successor.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(successor.process.wait(), 30) == 0
    assert kernel_leftovers(serve.env) == []


CULL_CONFIG = """
cull_interval_s = 0.2
session_ttl_s = 3
[pools.default]
min_idle = 0
max_kernels = 2
idle_timeout_s = 1
"""


async def test_idle_kernels_are_culled_and_idle_sessions_expire(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, CULL_CONFIG, DATAEXEC_TOKEN="cull-token-0123456789")
    server = await start_server(with_default_tenant(settings))
    try:
        async with server.client(token="cull-token-0123456789") as http:
            await http.post("/sessions/c1/execute", json={"code": "v = 1"})
            pool = server.runtime.pools["default"]

            async def culled() -> bool:
                state = (await http.get("/sessions/c1")).json()
                return state["state"] == "no_kernel" and pool.in_use == 0

            await wait_for(culled)
            answer = await http.post("/sessions/c1/execute", json={"code": "'v' in dir()"})
            assert answer.json()["kernel_replaced"] is True
            assert answer.json()["replaced_reason"] == "culled"

            async def expired() -> bool:
                return (await http.get("/sessions/c1")).status_code == 404

            await wait_for(expired, timeout=15)
            assert pool.in_use == 0
    finally:
        await server.stop()


async def test_docker_server_leaves_no_container_after_stop(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, CULL_CONFIG, DATAEXEC_SANDBOX="docker", DATAEXEC_TOKEN="docker-token-0123456789"
    )
    if not docker_ready(settings):
        message = "no Docker engine with the kernel image"
        if REQUIRE_DOCKER:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    import docker

    engine = docker.from_env(version="auto")
    label = {"label": f"dataexec.runtime_dir={settings.runtime_dir}"}
    server = await start_server(with_default_tenant(settings))
    try:
        async with server.client(token="docker-token-0123456789") as http:
            answer = await http.post("/sessions/d1/execute", json={"code": "1 + 1"})
            assert answer.status_code == 200
        assert len(engine.containers.list(all=True, filters=label)) == 1
    finally:
        await server.stop()
    assert engine.containers.list(all=True, filters=label) == []
    assert not any((settings.runtime_dir / "k").iterdir())
