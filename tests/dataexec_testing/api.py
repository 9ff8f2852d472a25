"""What tests share to drive DataExec: servers over real sockets, and the calls they make.

This module owns: the test configuration (``CONFIG``: two tenants, three pools, an operator
token) and the settings built from it (``make_settings``: a state dir, runtime dir and cgroup
parent of the test's own); ``RunningServer`` with ``start_server`` and ``server_on`` (a
Runtime behind a real Tornado HTTP server on 127.0.0.1); which sandboxes exist and whether
Docker must be there (``SANDBOXES``, ``REQUIRE_DOCKER``, ``docker_ready``); and the calls
tests make against a server (``run``, ``ok``, ``value_of``, ``connect_from_kernel``,
``assert_error``, ``wait_for``). The fixtures built on it are in ``fixtures.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import tornado.httpserver
import tornado.netutil

from server.app import make_server
from server.config import Settings, load_settings
from server.embedded.postgres import EmbeddedPostgres
from server.kernels.cgroups import CGROUP_ROOT, V1_CONTROLLERS, cgroup_version
from server.runtime import Runtime

TOKEN_A = "tenant-a-token-" + secrets.token_hex(8)
TOKEN_B = "tenant-b-token-" + secrets.token_hex(8)
OPERATOR_TOKEN = "operator-token-" + secrets.token_hex(8)
# The runtime dirs and cgroup parents of this run's test servers (``host_places``).
HOST_PLACES: list[dict[str, str]] = []
# Headers of a request as the operator (e.g. ``GET /health`` with the server's state).
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}

CONFIG = f"""
operator_token = "{OPERATOR_TOKEN}"
capacity_wait_s = 1.0
interrupt_grace_s = 1.0
output_limit_bytes = 1048576
max_rows_cap = 5000
session_queue_size = 2
shutdown_grace_s = 2.0
sql_max_result_bytes = 67108864

[pools.default]
min_idle = 2
max_kernels = 8

[pools.small]
min_idle = 0
max_kernels = 3
memory_mb = 256
pids = 64
timeout_s = 4
warm_charts = false

[pools.tiny]
min_idle = 0
max_kernels = 1

[tenants.acme]
tokens = ["{TOKEN_A}"]
pools = ["default", "small", "tiny"]

[tenants.globex]
tokens = ["{TOKEN_B}"]
pools = ["default"]
"""


def make_settings(tmp_path: Path, config: str = CONFIG, **env: str) -> Settings:
    """Settings for a test server with its own state dir, runtime dir and cgroup parent."""
    tag = secrets.token_hex(3)
    config_file = tmp_path / f"dataexec-{tag}.toml"
    config_file.write_text(config)
    base_env = {
        "DATAEXEC_STATE_DIR": str(tmp_path / f"state-{tag}"),
        **host_places("test"),
        "DATAEXEC_SANDBOX": "bubblewrap",
        "DATAEXEC_OPERATOR_TOKEN": OPERATOR_TOKEN,
    }
    for name in ("DATAEXEC_KERNEL_ENV", "DATAEXEC_DOCKER_IMAGE", "OPENBLAS_CORETYPE"):
        if name in os.environ:
            base_env[name] = os.environ[name]
    return load_settings(env={**base_env, **env}, config_file=config_file)


def host_places(kind: str) -> dict[str, str]:
    """A runtime dir and a cgroup parent of a new test server's own, as its environment;
    ``remove_host_places`` removes them at the end of the run."""
    tag = secrets.token_hex(3)
    places = {
        "DATAEXEC_RUNTIME_DIR": f"/run/dx{kind[0]}-{tag}",
        "DATAEXEC_CGROUP_PARENT": f"dataexec-{kind}-{tag}",
    }
    HOST_PLACES.append(places)
    return places


def remove_host_places() -> None:
    """Remove the runtime dirs and cgroup parents of this run's (stopped) servers."""
    version = cgroup_version()
    hierarchies = [CGROUP_ROOT] if version == 2 else [CGROUP_ROOT / c for c in V1_CONTROLLERS]
    for places in HOST_PLACES:
        shutil.rmtree(places["DATAEXEC_RUNTIME_DIR"], ignore_errors=True)
        for hierarchy in hierarchies:
            with contextlib.suppress(OSError):  # never made, or still in use
                (hierarchy / places["DATAEXEC_CGROUP_PARENT"]).rmdir()
    HOST_PLACES.clear()


@dataclass
class RunningServer:
    """A started Runtime behind a real Tornado HTTP server on 127.0.0.1."""

    settings: Settings
    runtime: Runtime
    http: tornado.httpserver.HTTPServer
    url: str

    def client(self, token: str | None = TOKEN_A, timeout: float = 60.0) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def stop(self) -> None:
        self.http.stop()
        await self.runtime.close()
        await self.http.close_all_connections()


async def start_server(settings: Settings, env: dict[str, str] | None = None) -> RunningServer:
    runtime = Runtime(settings, env=env)
    await runtime.start()
    http = make_server(settings, runtime)
    [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    http.add_sockets([sock])
    return RunningServer(settings, runtime, http, f"http://127.0.0.1:{sock.getsockname()[1]}")


@contextlib.asynccontextmanager
async def server_on(
    embedded_pg: EmbeddedPostgres, tmp_path: Path, config: str = CONFIG, **env: str
) -> AsyncIterator[RunningServer]:
    """A server of its own (bubblewrap) on the shared database, warmed, stopped after."""
    settings = make_settings(
        tmp_path,
        config,
        DATAEXEC_DATABASE_URL=embedded_pg.query_url.render_as_string(hide_password=False),
        **env,
    )
    server = await start_server(settings)
    try:
        await server.runtime.wait_warm()
        yield server
    finally:
        await server.stop()


# Every sandbox a server can run kernels in; the shared ``api`` fixture (and the adversarial
# suite) runs once per each. DATAEXEC_TEST_SANDBOXES picks others, e.g. "docker-runsc": the
# docker sandbox with gVisor's runtime in every pool.
SANDBOXES = os.environ.get("DATAEXEC_TEST_SANDBOXES", "zygote,bubblewrap,docker").split(",")

# Set in this process's environment while the shared servers run (fixtures.host_marker):
# kernels, which the sandboxes start from this process, must not see it.
HOST_MARKER = "DXTEST_HOST_ONLY_MARKER"

# For tests that do not care which sandbox the server uses: one server is enough.
ONE_SERVER = pytest.mark.parametrize("api", ["bubblewrap"], indirect=True)

# Where Docker must be tested (CI, or DATAEXEC_REQUIRE_DOCKER=1) its absence fails the run:
# a sandbox that is never tested would pass by skipping.
REQUIRE_DOCKER = bool(os.environ.get("CI")) or os.environ.get("DATAEXEC_REQUIRE_DOCKER") == "1"


def docker_ready(settings: Settings) -> bool:
    """Whether a Docker engine answers and has the kernel image ``settings`` name."""
    from server.kernels.docker import DockerSandbox

    return DockerSandbox.available(settings)


def docker_missing(reason: str) -> NoReturn:
    """Skip the test on a developer machine; fail it where Docker is required."""
    if REQUIRE_DOCKER:
        pytest.fail(
            f"Docker is required here (CI or DATAEXEC_REQUIRE_DOCKER=1): {reason}", pytrace=False
        )
    pytest.skip(reason)


async def run(client: httpx.AsyncClient, session: str, code: str, **extra: Any) -> httpx.Response:
    """POST code to a session's execute endpoint."""
    return await client.post(f"/sessions/{session}/execute", json={"code": code, **extra})


async def ok(client: httpx.AsyncClient, session: str, code: str, **extra: Any) -> dict[str, Any]:
    """Execute and assert success; return the answer."""
    response = await run(client, session, code, **extra)
    assert response.status_code == 200, response.text
    return response.json()


async def value_of(client: httpx.AsyncClient, session: str, expression: str) -> Any:
    """The scalar value of ``expression`` evaluated in the session's kernel."""
    answer = await ok(client, session, expression)
    return answer["data"]["rows"][0][0]


async def connect_from_kernel(client: httpx.AsyncClient, session: str, port: int) -> str:
    """Try a TCP connect to the host's 127.0.0.1:``port`` from the kernel; the outcome."""
    return await value_of(
        client,
        session,
        f"""
import socket
s = socket.socket()
s.settimeout(2)
try:
    s.connect(('127.0.0.1', {port}))
    outcome = 'connected'
except OSError as exc:
    outcome = type(exc).__name__
outcome""",
    )


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    """Assert the documented error shape and return its detail."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert detail["type"] == error_type, detail
    assert isinstance(detail["message"], str) and detail["message"]
    assert detail["request_id"] == response.headers["X-Request-Id"]
    return detail


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    """Poll an async predicate until it is truthy (bounded)."""

    async def waiter() -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            result = await predicate()
            if result:
                return result
            await asyncio.sleep(0.05)
        raise AssertionError("condition not reached in time")

    return waiter()
