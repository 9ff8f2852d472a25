"""The server as an operator runs it: `dataexec serve` in its own process, signals, orphans."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import wait_for

from server.kernels.cgroups import CGROUP_ROOT, cgroup_version


@dataclass
class ServeProcess:
    process: asyncio.subprocess.Process
    url: str
    token: str
    env: dict[str, str]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {self.token}"}
        )


def serve_env(tmp_path: Path) -> dict[str, str]:
    tag = secrets.token_hex(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATAEXEC_", "AGENT_"))}
    env.update(
        DATAEXEC_STATE_DIR=str(tmp_path / "state"),
        DATAEXEC_RUNTIME_DIR=f"/run/dxl-{tag}",
        DATAEXEC_CGROUP_PARENT=f"dataexec-life-{tag}",
        DATAEXEC_PORT="0",
        DATAEXEC_SANDBOX=os.environ.get("DATAEXEC_TEST_SANDBOX", "bubblewrap"),
        DATAEXEC_POOLS__DEFAULT__MIN_IDLE="1",
        DATAEXEC_SHUTDOWN_GRACE_S="5",
    )
    for name in ("DATAEXEC_KERNEL_ENV", "DATAEXEC_DOCKER_IMAGE"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


async def start_serve(env: dict[str, str]) -> ServeProcess:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    lines: list[str] = []
    url = token = ""
    while not (url and token):
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert line, "server exited early:\n" + "".join(lines)
        lines.append(line)
        if match := re.search(r"listening on (http://\S+)", line):
            url = match.group(1)
        if line.startswith("token: "):
            token = line.split()[1]
    # Keep draining the log so the server never blocks on a full pipe.
    asyncio.ensure_future(_drain(process))
    return ServeProcess(process, url, token, env)


async def _drain(process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    while await process.stdout.readline():
        pass


def kernel_leftovers(env: dict[str, str]) -> list[str]:
    """Kernel directories and cgroups of this server still on the host."""
    found = []
    kernels = Path(env["DATAEXEC_RUNTIME_DIR"]) / "k"
    if kernels.is_dir():
        found += [str(p) for p in kernels.iterdir()]
    parent = env["DATAEXEC_CGROUP_PARENT"]
    base = CGROUP_ROOT / parent if cgroup_version() == 2 else CGROUP_ROOT / "memory" / parent
    if base.is_dir():
        found += [str(p) for p in base.iterdir() if p.is_dir()]
    return found


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
        await asyncio.sleep(0.5)
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


def test_version_and_bad_config_exit_with_clear_messages(tmp_path: Path) -> None:
    version = subprocess.run(
        [sys.executable, "-m", "server", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("dataexec ")
    env = {
        **serve_env(tmp_path),
        "DATAEXEC_PORT": "eighty",
        "DB_HOST": "db",
        "DB_USER": "u",
        "DB_NAME": "d",
        "DB_SSL_MODE": "sometimes",
        "DATAEXEC_POOLS__DEFAULT__MEMORY_MB": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    for name in ("DATAEXEC_PORT", "DB_SSL_MODE", "DATAEXEC_POOLS__DEFAULT__MEMORY_MB"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr
