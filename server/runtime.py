"""The one wiring module: it builds every room once and may import all of them.

The running parts of a server: sandbox, kernel launcher, pools, the query database, the
store database, the cache, the broker and the session manager.

``Runtime.start`` checks the sandbox, removes what an earlier run left behind and starts
warming the pools; ``Runtime.close`` lets running cells finish (bounded) and removes every
kernel. Tests and the CLI both build a server this way.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from server.broker.broker import Broker
from server.cache.cache import Cache
from server.config import Settings
from server.errors import ConfigError, SandboxUnavailable
from server.kernels.kernel import KernelLauncher
from server.kernels.kerneldir import check_runtime_dir, install_kernel_lib
from server.kernels.pool import KernelPool
from server.kernels.sandbox import Sandbox
from server.sessions.manager import SessionManager
from server.sessions.records import SessionRecords
from server.sql.database import QueryDatabase
from server.sql.guard import check_query
from server.store.database import StoreDatabase

if TYPE_CHECKING:
    from server.embedded.postgres import EmbeddedPostgres

log = logging.getLogger(__name__)


async def choose_sandbox(settings: Settings) -> Sandbox:
    """The configured sandbox; for ``auto``, Docker when it can run kernels, else bubblewrap."""
    from server.kernels.bubblewrap import BubblewrapSandbox

    choice = settings.sandbox
    if choice == "none":
        from server.kernels.unsandboxed import UnsandboxedSandbox

        return UnsandboxedSandbox(settings)
    if choice in ("docker", "auto"):
        from server.kernels.docker import DockerSandbox

        if choice == "docker" or await asyncio.to_thread(DockerSandbox.available, settings):
            return DockerSandbox(settings)
    return BubblewrapSandbox(settings)


class Runtime:
    """Everything a request handler needs below HTTP."""

    def __init__(self, settings: Settings, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.env = dict(os.environ if env is None else env)
        self.pools: dict[str, KernelPool] = {}
        self.embedded: EmbeddedPostgres | None = None
        # Made by start(), in this order; close() releases those that were made.
        self.sandbox: Sandbox
        self.database: QueryDatabase
        self.store: StoreDatabase
        self.cache: Cache
        self.sessions: SessionManager
        self.launcher: KernelLauncher
        self.started = False
        self.closing = False
        self._culler: asyncio.Task[Any] | None = None

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
        self.database = QueryDatabase(settings, await self._database_url())
        self.store = StoreDatabase(self._store_url())
        await asyncio.to_thread(self.store.upgrade)
        self.cache = Cache(
            settings.state_dir / "cache",
            self.store,
            settings.cache_ttl_s,
            quotas=settings.cache_quotas(),
            default_quota=settings.cache_quota_bytes,
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
        )
        self.sessions = SessionManager(
            settings, self.pools, broker, self.cache, SessionRecords(self.store)
        )
        lib_dir = install_kernel_lib(settings.runtime_dir)
        self.launcher = KernelLauncher(settings, self.sandbox, lib_dir, self.env)
        for name, pool_settings in settings.pools.items():
            self.pools[name] = KernelPool(
                pool_settings,
                self.launcher.start,
                settings.capacity_wait_s,
                settings.kernel_start_timeout_s,
                tenants_sharing=sum(name in t.pools for t in settings.tenants.values()),
            )
            self.pools[name].fill()
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
            except Exception:
                log.exception("cull failed")

    async def wait_warm(self, timeout: float = 60.0) -> None:
        """Wait until every pool has its min_idle kernels ready (tests, benchmarks)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while any(len(p.idle) < p.settings.min_idle for p in self.pools.values()):
            if asyncio.get_running_loop().time() > deadline:
                raise SandboxUnavailable("pools did not warm up in time")
            await asyncio.sleep(0.05)

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
        if self._culler is not None:
            self._culler.cancel()
        if self.started:
            await self.sessions.close(self.settings.shutdown_grace_s)
        for pool in self.pools.values():
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
        if hasattr(self, "store"):
            self.store.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
