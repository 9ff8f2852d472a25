"""Platform registration (docs/platform.md), against a real HTTP platform run by the test.

``Platform`` is a Tornado server on 127.0.0.1 that records every call and answers as told:
``ok`` (200), ``503``, or ``hang`` (never answers); it can stop listening and come back on
the same port. DataExec runs as an operator runs it (``dataexec serve`` in its own process,
configured by the environment), on SQLite so that it starts fast, with short intervals.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import tornado.web
from dataexec_testing.api import wait_for
from dataexec_testing.serve import ServeProcess, serve_env, start_serve
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from server import __version__

AGENT_TOKEN = "agent-secret-token-" + "7" * 16
PUBLIC_URL = "https://agent-7.example:8001"
REGISTER, BEAT, BYE = "/agents/register", "/agents/agent-7/heartbeat", "/agents/agent-7/deregister"
INTERVAL, RETRY_MAX, TIMEOUT = 0.2, 0.8, 1.0


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float  # time.monotonic() when it arrived
    answered: int | None = None  # the status it got; None while hanging


class Platform:
    """A stand-in platform: records calls, answers as ``mode`` says: ok, 503, hang, or
    forget (404 to heartbeats, as a platform that lost its list of agents)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.mode = "ok"
        self.port = 0
        self.release = asyncio.Event()  # ends every hanging call (teardown)
        self.server: HTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def listen(self) -> None:
        app = tornado.web.Application([(r"/.*", Recorder, {"platform": self})])
        self.server = HTTPServer(app)
        sockets = bind_sockets(self.port, "127.0.0.1")  # the same port when it comes back
        self.port = sockets[0].getsockname()[1]
        self.server.add_sockets(sockets)

    async def stop(self) -> None:
        """Stop listening and drop every connection: the platform is down."""
        assert self.server is not None
        self.server.stop()
        await self.server.close_all_connections()
        self.server = None

    def to(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]

    def after(self, moment: float, path: str) -> list[Call]:
        return [c for c in self.to(path) if c.at >= moment]


class Recorder(tornado.web.RequestHandler):
    def initialize(self, platform: Platform) -> None:
        self.platform = platform

    async def post(self, *_: str) -> None:
        call = Call(
            self.request.path,
            dict(self.request.headers),
            json.loads(self.request.body),
            time.monotonic(),
        )
        self.platform.calls.append(call)
        if self.platform.mode == "hang":
            await self.platform.release.wait()
            return
        call.answered = {"503": 503, "forget": 404 if call.path == BEAT else 200}.get(
            self.platform.mode, 200
        )
        self.set_status(call.answered)
        self.write({})


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    platform = Platform()
    platform.listen()
    yield platform
    platform.release.set()
    if platform.server is not None:
        await platform.stop()


def agent_env(tmp_path: Path, platform: Platform, **extra: str) -> dict[str, str]:
    """``dataexec serve``'s environment: the replaced system's names, short intervals."""
    database = tmp_path / "data.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    env = serve_env(tmp_path)
    env.update(
        DATAEXEC_DATABASE_URL=f"sqlite:///{database}",
        CORE_LOGIC_URL=platform.url,
        AGENT_ID="agent-7",
        AGENT_PUBLIC_URL=PUBLIC_URL,
        AGENT_SECRET_TOKEN=AGENT_TOKEN,
        DATAEXEC_HEARTBEAT_INTERVAL_S=str(INTERVAL),
        DATAEXEC_PLATFORM_RETRY_MAX_S=str(RETRY_MAX),
        DATAEXEC_PLATFORM_TIMEOUT_S=str(TIMEOUT),
    )
    env.update(extra)
    return env


@pytest.fixture
async def agents() -> AsyncIterator[list[ServeProcess]]:
    """The servers a test started; any still running at the end get SIGTERM."""
    started: list[ServeProcess] = []
    yield started
    for server in started:
        if server.process.returncode is None:
            server.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(server.process.wait(), 30)


async def health_time(server: ServeProcess) -> float:
    """Seconds GET /health took; it must answer 200 (the server is serving)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        began = time.monotonic()
        answer = await http.get("/health")
        took = time.monotonic() - began
    assert answer.status_code == 200, answer.text
    return took


async def serving_while(server: ServeProcess, seconds: float) -> list[float]:
    """Poll /health for ``seconds``; each answer's time."""
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        times.append(await health_time(server))
        await asyncio.sleep(0.1)
    return times


def log_count(server: ServeProcess, text: str) -> int:
    return sum(text in line for line in server.log)


def platform_lines(server: ServeProcess) -> str:
    """The server's log lines about the platform (for a failure's message)."""
    return "".join(line for line in server.log if "platform" in line)


async def heartbeats_since(platform: Platform, moment: float, count: int, path: str = BEAT) -> None:
    async def enough() -> bool:
        return len([c for c in platform.after(moment, path) if c.answered == 200]) >= count

    await wait_for(enough, timeout=15)


async def test_registers_with_the_agent_token_then_heartbeats_health_capacity_and_pools(
    tmp_path: Path, platform: Platform, agents: list[ServeProcess]
) -> None:
    server = await start_serve(agent_env(tmp_path, platform))
    agents.append(server)
    await heartbeats_since(platform, 0, 3)

    register = platform.calls[0]
    assert register.path == REGISTER
    assert register.headers["Authorization"] == f"Bearer {AGENT_TOKEN}"
    assert register.headers["Content-Type"] == "application/json"
    body = register.body
    assert body["agent_id"] == "agent-7" and body["url"] == PUBLIC_URL
    assert body["version"] == __version__ and body["db_dialect"] == "sqlite"
    assert body["sandbox"] == "bubblewrap" and body["languages"] == ["python", "sql"]
    assert body["pools"]["default"]["max_kernels"] == 8
    assert body["heartbeat_interval_s"] == INTERVAL
    assert body["capacity"]["max_kernels"] == 8

    # A heartbeat carries health, version, capacity and live pool counts: the warm kernel
    # the pool starts shows up as idle.
    async def warm_kernel_reported() -> bool:
        last = platform.to(BEAT)[-1].body
        return last["pools"]["default"]["idle"] == 1

    await wait_for(warm_kernel_reported, timeout=30)
    beat = platform.to(BEAT)[-1]
    assert beat.headers["Authorization"] == f"Bearer {AGENT_TOKEN}"
    assert beat.body["status"] == "ok" and beat.body["version"] == __version__
    assert beat.body["instance_id"] == register.body["instance_id"]
    assert beat.body["health"]["sandbox"] == "bubblewrap"
    assert beat.body["health"]["database"]["dialect"] == "sqlite"
    assert beat.body["capacity"] == {
        "max_kernels": 8,
        "in_use": 0,
        "idle": 1,
        "starting": 0,
        "waiting": 0,
        "free": 8,
    }
    beats = platform.to(BEAT)
    gaps = [b.at - a.at for a, b in zip(beats, beats[1:], strict=False)]
    assert all(INTERVAL * 0.9 <= gap < INTERVAL + 1.0 for gap in gaps), gaps

    # A session's kernel counts as in use, and no longer as free.
    async with server.client() as http:
        assert (await http.post("/sessions", json={"session_id": "s1"})).status_code == 201
        moment = time.monotonic()
        await heartbeats_since(platform, moment, 2)
    assert platform.to(BEAT)[-1].body["capacity"]["in_use"] == 1
    assert platform.to(BEAT)[-1].body["capacity"]["free"] == 7
    assert platform.to(BEAT)[-1].body["health"]["sessions"] == 1

    assert await server.stop() == 0
    goodbye = platform.calls[-1]
    assert goodbye.path == BYE and goodbye.answered == 200
    assert goodbye.headers["Authorization"] == f"Bearer {AGENT_TOKEN}"
    assert goodbye.body["reason"] == "shutdown"
    assert goodbye.body["instance_id"] == register.body["instance_id"]
    assert log_count(server, "platform: registered as 'agent-7'") == 1, platform_lines(server)
    assert log_count(server, "platform: said goodbye") == 1, platform_lines(server)
    assert not [line for line in server.log if "platform" in line and AGENT_TOKEN in line]


async def test_platform_down_and_back_re_registers_while_serving_throughout(
    tmp_path: Path, platform: Platform, agents: list[ServeProcess]
) -> None:
    server = await start_serve(agent_env(tmp_path, platform))
    agents.append(server)
    await heartbeats_since(platform, 0, 2)

    # The platform answers 503: DataExec keeps serving and re-registers with backoff that
    # grows from min(1 s, interval) and stops at platform_retry_max_s, jittered, never zero.
    outage = time.monotonic()
    platform.mode = "503"
    assert max(await serving_while(server, 3.5)) < 1.0
    failed = [c for c in platform.calls if c.at >= outage]
    assert failed[0].path == BEAT and {c.path for c in failed[1:]} == {REGISTER}
    gaps = [b.at - a.at for a, b in zip(failed, failed[1:], strict=False)]
    assert len(gaps) >= 4, gaps
    assert INTERVAL / 2 * 0.9 <= gaps[0] <= INTERVAL + 0.3, gaps  # the first wait: base
    assert all(INTERVAL / 2 * 0.9 <= gap <= RETRY_MAX + 0.3 for gap in gaps), gaps  # capped
    assert max(gaps) >= 2 * INTERVAL, gaps  # it grew
    platform.mode = "ok"
    back = time.monotonic()
    await heartbeats_since(platform, back, 2)
    assert platform.after(back, REGISTER)[0].answered == 200
    # Each change is logged once, not once per attempt.
    assert log_count(server, "platform: lost") == 1, platform_lines(server)
    assert log_count(server, "platform: re-registered as 'agent-7'") == 1, platform_lines(server)

    # The platform is gone altogether (nothing listens), then back on the same port.
    await platform.stop()
    assert max(await serving_while(server, 2.0)) < 1.0
    gone = len(platform.calls)
    platform.listen()
    back = time.monotonic()
    await heartbeats_since(platform, back, 2)
    assert platform.calls[gone].path == REGISTER  # re-registered before any heartbeat
    assert log_count(server, "platform: lost") == 2, platform_lines(server)
    assert log_count(server, "platform: re-registered as 'agent-7'") == 2, platform_lines(server)
    assert log_count(server, "platform: registered as 'agent-7'") == 1, platform_lines(server)

    # A platform that forgot the agent (a heartbeat answered 404) gets a registration at
    # once, without waiting out a backoff.
    platform.mode = "forget"
    forgot = time.monotonic()

    async def registered_again() -> bool:
        return bool(platform.after(forgot, REGISTER))

    await wait_for(registered_again)
    platform.mode = "ok"
    beat, register = platform.after(forgot, BEAT)[0], platform.after(forgot, REGISTER)[0]
    assert beat.answered == 404 and register.answered == 200
    assert register.at - beat.at < INTERVAL / 2, register.at - beat.at
    await heartbeats_since(platform, time.monotonic(), 1)

    assert await server.stop() == 0
    assert platform.calls[-1].path == BYE and platform.calls[-1].answered == 200


async def test_a_platform_that_never_answers_delays_neither_serving_nor_shutdown(
    tmp_path: Path, platform: Platform, agents: list[ServeProcess]
) -> None:
    timeout = 3.0
    platform.mode = "hang"
    server = await start_serve(
        agent_env(tmp_path, platform, DATAEXEC_PLATFORM_TIMEOUT_S=str(timeout))
    )
    agents.append(server)

    async def registering() -> bool:
        return bool(platform.to(REGISTER))

    await wait_for(registering)
    # The registration hangs; the server answers meanwhile.
    assert max(await serving_while(server, 1.0)) < 1.0
    assert len(platform.calls) == 1 and platform.calls[0].answered is None

    async def gave_up() -> bool:
        return log_count(server, "cannot register") == 1

    await wait_for(gave_up, timeout=timeout + 5)
    assert log_count(server, f"no answer within {timeout:.3g} s") == 1, platform_lines(server)

    platform.mode = "ok"
    await heartbeats_since(platform, time.monotonic(), 1)
    assert log_count(server, "platform: registered as 'agent-7'") == 1, platform_lines(server)
    # Registered, then the platform hangs again: SIGTERM's goodbye waits no longer than
    # platform_timeout_s.
    platform.mode = "hang"
    hanging = time.monotonic()

    async def heartbeat_hanging() -> bool:
        return any(c.answered is None for c in platform.after(hanging, BEAT))

    await wait_for(heartbeat_hanging)
    began = time.monotonic()
    assert await server.stop() == 0
    took = time.monotonic() - began
    goodbye = platform.to(BYE)
    assert len(goodbye) == 1 and goodbye[0].answered is None
    assert timeout * 0.9 <= took < timeout + 5, took
    assert log_count(server, "platform: goodbye not delivered") == 1, platform_lines(server)


async def test_configured_paths_and_platform_token_are_used_with_tenants(
    tmp_path: Path, platform: Platform, agents: list[ServeProcess]
) -> None:
    platform_token = "platform-only-secret-" + "9" * 16
    tenant_token = "acme-tenant-token-" + "1" * 16
    config = tmp_path / "dataexec.toml"
    config.write_text(
        f'core_logic_url = "{platform.url}/api/v2/"\n'
        'agent_id = "edge 7"\n'
        f'platform_token = "{platform_token}"\n'
        'registration_path = "/hello"\n'
        'heartbeat_path = "/edge/{agent_id}/beat"\n'
        'deregistration_path = "/edge/{agent_id}/bye"\n'
        "[tenants.acme]\n"
        f'tokens = ["{tenant_token}"]\n'
    )
    env = agent_env(tmp_path, platform, DATAEXEC_CONFIG=str(config))
    for name in ("CORE_LOGIC_URL", "AGENT_ID", "AGENT_SECRET_TOKEN"):
        del env[name]
    server = await start_serve(env)
    agents.append(server)
    await heartbeats_since(platform, 0, 2, path="/api/v2/edge/edge%207/beat")
    assert platform.calls[0].path == "/api/v2/hello"
    assert platform.calls[0].body["agent_id"] == "edge 7"
    assert {c.headers["Authorization"] for c in platform.calls} == {f"Bearer {platform_token}"}
    assert await server.stop() == 0
    assert platform.calls[-1].path == "/api/v2/edge/edge%207/bye"
    assert not [line for line in server.log if platform_token in line]


async def test_settings_that_cannot_register_refuse_to_start(tmp_path: Path) -> None:
    config = tmp_path / "dataexec.toml"
    config.write_text('[tenants.acme]\ntokens = ["acme-tenant-token-0123456789"]\n')
    env = serve_env(tmp_path)
    env.update(
        CORE_LOGIC_URL="http://127.0.0.1:9",
        DATAEXEC_CONFIG=str(config),
        DATAEXEC_HEARTBEAT_PATH="beat",
        DATAEXEC_DEREGISTRATION_PATH="/bye/{agent}",
    )

    async def run(command: str) -> tuple[int | None, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server",
            command,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), 60)
        return process.returncode, err.decode()

    commands = ("check-config", "serve")
    answers = await asyncio.gather(*map(run, commands))
    for command, (status, text) in zip(commands, answers, strict=True):
        assert status == 2, (command, text)
        for problem in (
            "agent_id: needed",
            "agent_public_url: needed",
            "heartbeat_path: must start with '/'",
            "deregistration_path: only {agent_id}",
            "platform_token: needed with [tenants]",
        ):
            assert problem in text, (command, problem, text)
