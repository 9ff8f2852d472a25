"""The one wiring module: it builds every room once and may import all of them.

The running parts of a server: sandbox, kernel launcher, pools, the query database, the
store database, the cache, the broker and the session manager.

``Runtime.start`` checks the sandbox, removes what an earlier run left behind and starts
warming the pools; ``Runtime.close`` lets running cells finish (bounded) and removes every
kernel. Tests and the CLI both build a server this way.

``Runtime.reload`` (SIGHUP, ``POST /config/reload``) reads the configuration again and,
when all of it is good and only pools, tenants and tokens changed, swaps ``settings`` for
the new object: pools are reconfigured in place (sessions keep theirs), added or retired,
and the parts that keep settings of their own (``reloaded``: the authenticator and the
HTTP handlers' settings) are told. Consumers read settings through the runtime.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from server.broker.broker import Broker
from server.cache.cache import Cache
from server.cache.memory import FrameMemory
from server.config import PoolSettings, Settings
from server.config.reload import ConfigSource, describe_changes, reload_settings
from server.errors import ConfigError, SandboxUnavailable
from server.kernels.kernel import KernelLauncher
from server.kernels.kerneldir import check_runtime_dir, install_kernel_lib
from server.kernels.pool import KernelPool
from server.kernels.sandbox import Sandbox
from server.platform import PlatformLink
from server.sessions.audit import AuditLog
from server.sessions.manager import SessionManager
from server.sessions.records import SessionRecords
from server.sql.database import QueryDatabase
from server.sql.guard import check_query
from server.store.database import StoreDatabase
from server.telemetry.metrics import Metrics, State

if TYPE_CHECKING:
    from server.embedded.postgres import EmbeddedPostgres

log = logging.getLogger(__name__)


async def choose_sandbox(settings: Settings) -> Sandbox:
    """The configured sandbox; for ``auto``, Docker when it can run kernels, else the zygote."""
    choice = settings.sandbox
    if choice == "none":
        from server.kernels.unsandboxed import UnsandboxedSandbox

        return UnsandboxedSandbox(settings)
    if choice == "bubblewrap":
        from server.kernels.bubblewrap import BubblewrapSandbox

        return BubblewrapSandbox(settings)
    if choice in ("docker", "auto"):
        from server.kernels.docker import DockerSandbox

        if choice == "docker" or await asyncio.to_thread(DockerSandbox.available, settings):
            return DockerSandbox(settings)
    from server.kernels.zygote import ZygoteSandbox

    return ZygoteSandbox(settings)


class Runtime:
    """Everything a request handler needs below HTTP."""

    def __init__(
        self,
        settings: Settings,
        env: dict[str, str] | None = None,
        source: ConfigSource | None = None,
    ) -> None:
        self.settings = settings
        self.env = dict(os.environ if env is None else env)
        # What a reload reads again: the file and environment (and flags) of the start.
        self.source = source or ConfigSource(settings.config_file, self.env)
        self.pools: dict[str, KernelPool] = {}
        # Pools a reload removed, still serving the sessions that use them.
        self.retired_pools: dict[str, KernelPool] = {}
        # Called with the new settings after each reload that applied.
        self.reloaded: list[Callable[[Settings], None]] = []
        self._reloading = asyncio.Lock()
        self.embedded: EmbeddedPostgres | None = None
        # Made by start(), in this order; close() releases those that were made.
        self.sandbox: Sandbox
        self.database: QueryDatabase
        self.store: StoreDatabase
        self.cache: Cache
        self.audit: AuditLog
        self.sessions: SessionManager
        self.launcher: KernelLauncher
        self.started = False
        self.closing = False
        self._culler: asyncio.Task[Any] | None = None
        self.metrics = Metrics()  # this server's own registry: GET /metrics
        # Checked here, so settings that cannot register stop the server before it starts.
        self.platform = PlatformLink.configured(settings, self.health)

    async def start(self) -> None:
        """Check the sandbox, reap orphans, start the pools warming and the culler."""
        settings = self.settings
        check_runtime_dir(settings.runtime_dir)
        settings.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.sandbox = await choose_sandbox(settings)
        await self.sandbox.check()
        reaped = await self.sandbox.reap_orphans()
        if reaped:
            log.info("removed %d kernels left by an earlier run", reaped)
        self.database = QueryDatabase(settings, await self._database_url(), self.metrics)
        self.store = StoreDatabase(self._store_url())
        await asyncio.to_thread(self.store.upgrade)
        self.cache = Cache(
            settings.state_dir / "cache",
            self.store,
            settings.cache_ttl_s,
            quotas=settings.cache_quotas(),
            default_quota=settings.cache_quota_bytes,
            memory=FrameMemory(settings.frame_memory_bytes, settings.capacity_wait_s),
            metrics=self.metrics,
            hot_bytes=settings.cache_hot_bytes,
        )
        await asyncio.to_thread(self.cache.recover)
        # Fails early on a dialect the guard cannot parse, and loads sqlglot (~0.1 s) now
        # rather than in the first query.
        try:
            await asyncio.to_thread(check_query, "SELECT 1", self.database.backend)
        except ValueError as exc:
            raise ConfigError([f"database_url: {exc}"]) from None
        broker = Broker(
            self.database,
            self.cache,
            kernel_gid=settings.kernel_uid,
            max_frame_bytes=settings.sql_max_result_bytes,
            metrics=self.metrics,
        )
        self.audit = AuditLog(self.store, settings.audit_retention_s)
        self.sessions = SessionManager(
            settings,
            self.pools,
            broker,
            self.cache,
            SessionRecords(self.store),
            self.audit,
            metrics=self.metrics,
        )
        lib_dir = install_kernel_lib(settings.runtime_dir)
        self.launcher = KernelLauncher(settings, self.sandbox, lib_dir, self.env)
        for pool_settings in settings.pools.values():
            self._add_pool(pool_settings, settings)
        self._culler = asyncio.ensure_future(self._cull_forever())
        self.started = True
        log.info(
            "sandbox: %s; pools: %s",
            self.sandbox.name,
            ", ".join(
                f"{p.name} (min_idle {p.settings.min_idle}, max {p.settings.max_kernels})"
                for p in self.pools.values()
            ),
        )

    def _add_pool(self, pool_settings: PoolSettings, settings: Settings) -> None:
        name = pool_settings.name
        self.pools[name] = KernelPool(
            pool_settings,
            self.launcher.start,
            settings.capacity_wait_s,
            settings.kernel_start_timeout_s,
            tenants_sharing=_sharing(name, settings),
        )
        self.pools[name].fill()

    async def reload(self) -> list[str]:
        """Read the configuration again and apply it (see the module docstring); the
        changes, one line each. ConfigError naming every problem leaves all as it was."""
        async with self._reloading:
            where = self.settings.config_file or "the environment"
            try:
                if not self.started or self.closing:
                    raise ConfigError(["the server is starting or stopping; reload once it runs"])
                new = await asyncio.to_thread(reload_settings, self.source, self.settings)
            except ConfigError as exc:
                log.error(
                    "configuration reload from %s refused; the old configuration stays:\n  %s",
                    where,
                    "\n  ".join(exc.problems),
                )
                raise
            changes = describe_changes(self.settings, new)
            self._apply(new)
            log.info(
                "configuration reloaded from %s: %s", where, "; ".join(changes) or "no changes"
            )
            return changes

    def _apply(self, new: Settings) -> None:
        """Swap in ``new`` (checked by ``reload_settings``); no await, so no request runs
        while half of it is applied."""
        for name, pool_settings in new.pools.items():
            pool = self.pools.get(name) or self.retired_pools.pop(name, None)
            if pool is None:
                self._add_pool(pool_settings, new)
                continue
            self.pools[name] = pool
            pool.reconfigure(pool_settings, _sharing(name, new))
        for name in [n for n in self.pools if n not in new.pools]:
            pool = self.pools.pop(name)
            pool.retire()
            self.retired_pools[name] = pool
            log.info("pool %s removed: its %d kernels in use serve on", name, pool.in_use)
        self.cache.quotas = new.cache_quotas()
        self.settings = self.sessions.settings = new
        if self.platform is not None:  # its own settings are fixed; it reports the pools
            self.platform.settings = new
        for listener in self.reloaded:
            listener(new)

    async def _database_url(self) -> str:
        """The configured database, else the embedded PostgreSQL (started, demo data loaded)."""
        if self.settings.database_url:
            return self.settings.database_url
        from server.embedded.postgres import EmbeddedPostgres

        self.embedded = EmbeddedPostgres(
            self.settings.state_dir,
            self.settings.demo_data,
            temp_file_limit_mb=self.settings.sql_temp_file_limit_mb,
        )
        await asyncio.to_thread(self.embedded.start)
        log.info("embedded PostgreSQL on 127.0.0.1:%d", self.embedded.port)
        return self.embedded.query_url.render_as_string(hide_password=False)

    def _store_url(self) -> str:
        """The configured store, else the embedded PostgreSQL's, else SQLite in the state dir."""
        if self.settings.store_url:
            return self.settings.store_url
        if self.embedded is not None:
            return self.embedded.store_url.render_as_string(hide_password=False)
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.settings.state_dir / 'store.db'}"

    async def _cull_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.cull_interval_s)
            try:
                await self.sessions.cull()
                swept = await self.cache.sweep()
                if swept:
                    log.info("cache: %d keys past their TTL removed", swept)
                purged = await self.audit.purge()
                if purged:
                    log.info("audit: %d rows past audit_retention_s removed", purged)
            except Exception:
                log.exception("cull failed")

    async def wait_warm(self, timeout: float = 60.0) -> None:
        """Wait until every pool has its min_idle kernels ready (tests, benchmarks)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while any(len(p.idle) < p.settings.min_idle for p in self.pools.values()):
            if asyncio.get_running_loop().time() > deadline:
                raise SandboxUnavailable("pools did not warm up in time")
            await asyncio.sleep(0.05)

    def announce(self) -> None:
        """Start registering with the platform, if one is configured (once serving)."""
        if self.platform is not None:
            self.platform.start()

    async def scrape(self) -> bytes:
        """``GET /metrics``: every metric, the gauges as the pools, sessions and cache are now."""
        state = State()
        if self.started:
            sessions: dict[tuple[str, str], int] = {}
            queued: dict[str, int] = {}
            for session in list(self.sessions.sessions.values()):
                key = (session.tenant, session.describe()["state"])
                sessions[key] = sessions.get(key, 0) + 1
                queued[session.tenant] = queued.get(session.tenant, 0) + session.waiting
            state = State(
                pools={name: pool.stats() for name, pool in self.pools.items()},
                sessions=sessions,
                queued=queued,
                cache=await asyncio.to_thread(self.cache.usage),
                throwaway_running=self.sessions.throwaway_running,
                queries=self.database.gate.stats(),
            )
        return self.metrics.render(state)

    def health(self) -> dict[str, Any]:
        return {
            "sandbox": self.sandbox.name if hasattr(self, "sandbox") else None,
            "pools": {name: pool.stats() for name, pool in self.pools.items()},
            "sessions": len(self.sessions.sessions) if self.started else 0,
            "database": self.database.describe() if hasattr(self, "database") else None,
        }

    async def close(self) -> None:
        """Graceful stop: running cells get ``shutdown_grace_s``, then every kernel goes."""
        self.closing = True
        if self.platform is not None:  # first, so the platform stops sending work
            await self.platform.close()
        if self._culler is not None:
            self._culler.cancel()
        if self.started:
            await self.sessions.close(self.settings.shutdown_grace_s)
        for pool in [*self.pools.values(), *self.retired_pools.values()]:
            await pool.close()
        if hasattr(self, "sandbox"):
            await self.sandbox.reap_orphans()
            await self.sandbox.close()
        if hasattr(self, "launcher"):
            self.launcher.close()
        if hasattr(self, "database"):
            self.database.close()
        if hasattr(self, "cache"):
            await self.cache.close()
        if hasattr(self, "audit"):
            await self.audit.flush()  # the entries of requests answered while stopping
        if hasattr(self, "store"):
            self.store.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)


def _sharing(pool: str, settings: Settings) -> int:
    """How many tenants may use ``pool``: its kernels are shared fairly among them."""
    return sum(pool in t.pools for t in settings.tenants.values())
