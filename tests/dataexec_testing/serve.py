"""``dataexec serve`` in a process of its own, started as an operator starts it.

``serve_env(tmp_path)`` is a clean environment (no ``DATAEXEC_*``/``AGENT_*``/``DB_*`` of
the test process) with a state dir, runtime dir and cgroup parent of the test's own;
``start_serve(env)`` starts the server, reads the URL and token it prints and keeps
draining its log into ``ServeProcess.log``; its operator token is ``api.OPERATOR_TOKEN``;
``ServeProcess.stop()`` sends SIGTERM and waits; ``kernel_leftovers(env)`` lists the kernel
directories and cgroups such a server left on the host.

With ``DATAEXEC_TEST_LOG_DIR`` set, each server's log is also written there as it comes, as
``serve-<pid>.log`` (to read what a server did around a failure the test output only shows
from the client's side).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import httpx

from dataexec_testing.api import OPERATOR_TOKEN, host_places
from server.kernels.cgroups import CGROUP_ROOT, cgroup_version


@dataclass
class ServeProcess:
    process: asyncio.subprocess.Process
    url: str
    token: str
    env: dict[str, str]
    log: list[str] = field(default_factory=list)  # everything it printed so far

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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATAEXEC_", "AGENT_", "DB_"))}
    env.update(
        DATAEXEC_STATE_DIR=str(tmp_path / "state"),
        **host_places("life"),
        DATAEXEC_PORT="0",
        DATAEXEC_SANDBOX="bubblewrap",
        DATAEXEC_POOLS__DEFAULT__MIN_IDLE="1",
        DATAEXEC_SHUTDOWN_GRACE_S="5",
        DATAEXEC_OPERATOR_TOKEN=OPERATOR_TOKEN,
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
        if match := re.search(r"listening on (https?://\S+)", line):
            url = match.group(1)
        if line.startswith("token: "):
            token = line.split()[1]
    # Keep draining the log so the server never blocks on a full pipe.
    asyncio.ensure_future(drain(process, lines))
    return ServeProcess(process, url, token, env, lines)


def log_copy(pid: int) -> TextIO | None:
    """The file a server's log is copied to (``DATAEXEC_TEST_LOG_DIR``), or None."""
    log_dir = os.environ.get("DATAEXEC_TEST_LOG_DIR")
    return open(Path(log_dir) / f"serve-{pid}.log", "a") if log_dir else None  # noqa: SIM115


async def drain(process: asyncio.subprocess.Process, lines: list[str]) -> None:
    assert process.stdout is not None
    copy = log_copy(process.pid)
    if copy:
        copy.writelines(lines)
    while line := await process.stdout.readline():
        lines.append(line.decode(errors="replace"))
        if copy:
            copy.write(lines[-1])
            copy.flush()
    if copy:
        copy.close()


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
