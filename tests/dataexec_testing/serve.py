"""``dataexec serve`` in a process of its own, started as an operator starts it.

``serve_env(tmp_path)`` is a clean environment (no ``DATAEXEC_*``/``AGENT_*``/``DB_*`` of
the test process) with a state dir, runtime dir and cgroup parent of the test's own;
``start_serve(env)`` starts the server, reads the URL and token it prints and keeps
draining its log; ``ServeProcess.stop()`` sends SIGTERM and waits.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class ServeProcess:
    process: asyncio.subprocess.Process
    url: str
    token: str
    env: dict[str, str]

    def client(self, timeout: float = 30) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {self.token}"}
        )

    async def stop(self) -> int:
        """SIGTERM, then the exit status."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 30)


def serve_env(tmp_path: Path) -> dict[str, str]:
    tag = secrets.token_hex(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATAEXEC_", "AGENT_", "DB_"))}
    env.update(
        DATAEXEC_STATE_DIR=str(tmp_path / "state"),
        DATAEXEC_RUNTIME_DIR=f"/run/dxl-{tag}",
        DATAEXEC_CGROUP_PARENT=f"dataexec-life-{tag}",
        DATAEXEC_PORT="0",
        DATAEXEC_SANDBOX="bubblewrap",
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
    asyncio.ensure_future(drain(process))
    return ServeProcess(process, url, token, env)


async def drain(process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    while await process.stdout.readline():
        pass
