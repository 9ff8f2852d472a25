"""The link to the platform: register, heartbeat, retry, goodbye (docs/platform.md).

``PlatformLink`` runs in the background of a serving DataExec. It registers once the server
listens, then sends a heartbeat every ``heartbeat_interval_s`` with the state the runtime
hands it (health, pools) plus version and capacity. A call that fails (no connection, a
timeout, any answer but 2xx) moves it to retrying: exponential backoff from
``min(1 s, heartbeat_interval_s)`` doubling up to ``platform_retry_max_s``, each wait drawn
between half and all of that ("equal jitter": agents that lost the platform together do not
come back in step, and no wait is ever zero). After a lost heartbeat it registers again
rather than resuming heartbeats, since a platform that was down may have forgotten us. At
shutdown it stops the loop and, if the platform knew us, says goodbye within
``platform_timeout_s``.

Nothing here blocks start or serving: every call is bounded by ``platform_timeout_s`` and
runs in a task of its own. Each change of state is logged once (registered, lost,
re-registered, goodbye); the token is never logged, and the platform's URL is shown
without any user info it may carry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.simple_httpclient import HTTPTimeoutError

from server import __version__
from server.clock import iso, now
from server.config import TOKEN_HASH, Settings
from server.errors import ConfigError

log = logging.getLogger(__name__)

# The settings that name the platform's paths; each may contain ``{agent_id}``.
PATHS = ("registration_path", "heartbeat_path", "deregistration_path")
# Heartbeat answers meaning "I do not know this agent": register again at once.
FORGOTTEN = (404, 410)

# The link's states; each change between them is logged once.
STARTING = "starting"  # no registration answered yet, none failed
UNREACHABLE = "unreachable"  # never registered, and registering failed
REGISTERED = "registered"
LOST = "lost"  # was registered, then a call failed: re-registering
CLOSED = "closed"


def platform_problems(settings: Settings) -> list[str]:
    """What keeps these settings from registering (empty without ``core_logic_url``)."""
    if not settings.core_logic_url:
        return []
    problems = [
        f"{name}: needed with core_logic_url (platform registration)"
        for name in ("agent_id", "agent_public_url")
        if not getattr(settings, name)
    ]
    for name in PATHS:
        path = getattr(settings, name)
        if not path.startswith("/"):
            problems.append(f"{name}: must start with '/', got {path!r}")
        try:
            path.format(agent_id="x")
        except (KeyError, IndexError, ValueError):
            problems.append(f"{name}: only {{agent_id}} may be filled in, got {path!r}")
    if not settings.platform_token:
        if settings.tenants and not settings.token:
            problems.append(
                "platform_token: needed with [tenants] and core_logic_url (there is no single "
                "agent token to send the platform)"
            )
        elif TOKEN_HASH.fullmatch(settings.token):
            problems.append(
                "platform_token: needed with core_logic_url when token is configured as "
                "sha256:<hex> (the platform needs the token itself)"
            )
    return problems


def capacity(pools: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Kernels of every pool together; ``free`` is what new sessions may still get."""
    keys = ("max_kernels", "in_use", "idle", "starting", "waiting")
    total = {key: sum(int(pool.get(key, 0)) for pool in pools.values()) for key in keys}
    total["free"] = max(0, total["max_kernels"] - total["in_use"])
    return total


@dataclass(frozen=True)
class Outcome:
    """How one call to the platform ended: ``code`` is None when no answer came."""

    ok: bool
    code: int | None
    reason: str


class PlatformLink:
    """Registration, heartbeats and goodbye for one run of the server."""

    def __init__(self, settings: Settings, health: Callable[[], dict[str, Any]]) -> None:
        self.settings = settings
        self.health = health
        # A run of the server: the platform tells a restart from a duplicate by this.
        self.instance_id = str(uuid.uuid4())
        self.state = STARTING
        self._token = settings.platform_token or settings.token
        self._base = settings.core_logic_url.rstrip("/")
        self._random = random.Random()
        self._client: AsyncHTTPClient | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def configured(
        cls, settings: Settings, health: Callable[[], dict[str, Any]]
    ) -> PlatformLink | None:
        """The link these settings ask for (None without ``core_logic_url``).

        Raises ConfigError naming what is missing or malformed.
        """
        problems = platform_problems(settings)
        if problems:
            raise ConfigError(problems)
        return cls(settings, health) if settings.core_logic_url else None

    @property
    def shown_url(self) -> str:
        """The platform's URL for logs: no user info."""
        parts = urlsplit(self._base)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"

    def start(self) -> None:
        """Begin registering in the background; returns at once."""
        self._client = AsyncHTTPClient(force_instance=True)
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Stop the heartbeats; say goodbye if the platform knew us (bounded)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.state in (REGISTERED, LOST):
            outcome = await self._call("deregistration_path", self._goodbye_body())
            if outcome.ok:
                log.info("platform: said goodbye to %s", self.shown_url)
            else:
                log.warning("platform: goodbye not delivered (%s)", outcome.reason)
        self.state = CLOSED
        if self._client is not None:
            self._client.close()

    def backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed calls in a row (capped, jittered)."""
        cap = self.settings.platform_retry_max_s
        base = min(1.0, self.settings.heartbeat_interval_s, cap)
        delay = min(cap, base * 2 ** min(failures - 1, 30))
        return self._random.uniform(delay / 2, delay)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if self.state == REGISTERED:
                    outcome = await self._call("heartbeat_path", self._heartbeat_body())
                else:
                    outcome = await self._call("registration_path", self._register_body())
            except Exception as exc:  # a bug of ours must not end the heartbeats for good
                log.exception("platform: could not build a call")
                outcome = Outcome(False, None, f"{type(exc).__name__}: {exc}")
            if outcome.ok:
                self._succeeded()
                failures = 0
                await asyncio.sleep(self.settings.heartbeat_interval_s)
                continue
            forgotten = self.state == REGISTERED and outcome.code in FORGOTTEN
            self._failed(outcome.reason)
            failures += 1
            if not forgotten:
                await asyncio.sleep(self.backoff(failures))

    def _succeeded(self) -> None:
        if self.state == REGISTERED:
            return
        if self.state == LOST:
            log.info(
                "platform: re-registered as %r with %s", self.settings.agent_id, self.shown_url
            )
        else:
            log.info(
                "platform: registered as %r with %s (heartbeat every %.3g s)",
                self.settings.agent_id,
                self.shown_url,
                self.settings.heartbeat_interval_s,
            )
        self.state = REGISTERED

    def _failed(self, reason: str) -> None:
        retry = f"retrying with backoff, at most {self.settings.platform_retry_max_s:.3g} s apart"
        if self.state == REGISTERED:
            log.warning("platform: lost %s (%s); re-registering, %s", self.shown_url, reason, retry)
            self.state = LOST
        elif self.state == STARTING:
            log.warning("platform: cannot register with %s (%s); %s", self.shown_url, reason, retry)
            self.state = UNREACHABLE

    async def _call(self, path_setting: str, body: Mapping[str, Any]) -> Outcome:
        """POST ``body`` to the platform; any failure is an Outcome, never an exception."""
        assert self._client is not None
        timeout = self.settings.platform_timeout_s
        path = getattr(self.settings, path_setting).format(
            agent_id=quote(self.settings.agent_id, safe="")
        )
        request = HTTPRequest(
            self._base + path,
            method="POST",
            body=json.dumps(body, default=str),
            headers={
                "Authorization": f"Bearer {self._token}",
                "Content-Type": "application/json",
                "User-Agent": f"dataexec/{__version__}",
            },
            connect_timeout=timeout,
            request_timeout=timeout,
            follow_redirects=False,
        )
        try:
            # tornado's own timeouts, and this one as the hard bound on the whole call
            answer = await asyncio.wait_for(self._client.fetch(request, raise_error=False), timeout)
        except (TimeoutError, HTTPTimeoutError):
            return Outcome(False, None, f"no answer within {timeout:.3g} s")
        except Exception as exc:  # connection refused, reset, DNS, TLS: the platform is down
            return Outcome(False, None, f"{type(exc).__name__}: {exc}")
        if 200 <= answer.code < 300:
            return Outcome(True, answer.code, "")
        return Outcome(False, answer.code, f"HTTP {answer.code} {answer.reason}")

    def _register_body(self) -> dict[str, Any]:
        health = self.health()
        return {
            "agent_id": self.settings.agent_id,
            "instance_id": self.instance_id,
            "url": self.settings.agent_public_url,
            "version": __version__,
            "db_dialect": self.settings.db_dialect,
            "sandbox": health.get("sandbox"),
            "languages": ["python", "sql"],
            "heartbeat_interval_s": self.settings.heartbeat_interval_s,
            "pools": {
                name: {
                    "min_idle": pool.min_idle,
                    "max_kernels": pool.max_kernels,
                    "memory_mb": pool.memory_mb,
                    "cpus": pool.cpus,
                    "timeout_s": pool.timeout_s,
                }
                for name, pool in self.settings.pools.items()
            },
            "capacity": capacity(health.get("pools", {})),
            "sent_at": iso(now(), "milliseconds"),
        }

    def _heartbeat_body(self) -> dict[str, Any]:
        health = dict(self.health())
        pools = health.pop("pools", {})
        return {
            "agent_id": self.settings.agent_id,
            "instance_id": self.instance_id,
            "status": "ok",
            "version": __version__,
            "health": health,
            "capacity": capacity(pools),
            "pools": pools,
            "sent_at": iso(now(), "milliseconds"),
        }

    def _goodbye_body(self) -> dict[str, Any]:
        return {
            "agent_id": self.settings.agent_id,
            "instance_id": self.instance_id,
            "reason": "shutdown",
            "sent_at": iso(now(), "milliseconds"),
        }
