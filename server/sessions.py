"""Sessions: a tenant's analysis, its kernel, its history, its order of requests.

A session is keyed by (tenant, client id); another tenant's id is simply unknown. It takes
a kernel from its pool when it first needs one and gives it back (to be destroyed) when it
ends. Requests to one session run one at a time, in arrival order; at most
``session_queue_size`` may wait behind the running one, past that ``SessionBusy``.

A kernel can be lost (timeout that an interrupt did not end, output flood, memory kill,
crash, idle culling): the session lives on, and its next request gets a fresh kernel and
says ``kernel_replaced: true`` and why. ``execution_count`` runs on across replacements.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from server.broker import Broker, Caller
from server.cache import CacheStore
from server.config import Settings, TenantSettings
from server.errors import (
    Conflict,
    DatabaseUnavailable,
    DataExecError,
    ExecutionError,
    ExecutionTimeout,
    Forbidden,
    KernelDied,
    NotFound,
    OutputTooLarge,
    SessionBusy,
    SqlNotAllowed,
    ValidationError,
)
from server.kernels.kernel import Kernel
from server.kernels.pool import KernelPool
from server.results import table_result

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
RESULT_EXPRESSION = "__dataexec__.result({max_rows})"
RESULT_MIMETYPE = "application/vnd.dataexec.result+json"
# Exceptions of dataexec_kernel that stand for one of our error types.
KERNEL_ERRORS: dict[str, type[DataExecError]] = {
    "SqlNotAllowed": SqlNotAllowed,
    "QueryTimeout": ExecutionTimeout,
    "ResultTooLarge": OutputTooLarge,
    "DatabaseUnavailable": DatabaseUnavailable,
    "CacheKeyNotFound": NotFound,
}


@dataclass(frozen=True)
class ExecutionRequest:
    """One request to run code: Python, or SQL (run as ``%%sql name`` in a session)."""

    code: str
    max_rows: int
    language: str = "python"
    result_name: str | None = None

    def kernel_code(self, execution_count: int) -> str:
        """What the kernel runs: the code itself, or the ``%%sql`` cell of the query."""
        if self.language == "sql":
            return f"%%sql {self.sql_name(execution_count)}\n{self.code}"
        return self.code

    def sql_name(self, execution_count: int) -> str:
        return self.result_name or f"df_{execution_count}"


@dataclass
class HistoryEntry:
    """One execution as the session remembers it (for listing and notebook export)."""

    execution_count: int
    code: str
    started: float
    language: str = "python"
    result_name: str | None = None
    status: str = "running"
    elapsed_ms: float = 0.0
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error_type: str | None = None
    row_count: int | None = None
    kernel_replaced: str | None = None


@dataclass
class Session:
    """One analysis: see the module docstring."""

    tenant: str
    client_id: str
    pool: KernelPool
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.time)
    execution_count: int = 0
    kernel: Kernel | None = None
    lost_reason: str | None = None  # why the last kernel went, until a new one serves
    history: list[HistoryEntry] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0
    running: HistoryEntry | None = None

    def describe(self) -> dict[str, Any]:
        """The session as ``GET /sessions/{id}`` shows it."""
        if self.running is not None:
            state = "busy"
        elif self.kernel is not None:
            state = "idle"
        else:
            state = "no_kernel"
        return {
            "session_id": self.client_id,
            "state": state,
            "pool": self.pool.name,
            "kernel": {
                "status": "ready" if self.kernel else "none",
                "lost_reason": self.lost_reason,
            },
            "created": _iso(self.created),
            "last_activity": _iso(self.last_activity),
            "execution_count": self.execution_count,
            "queued": self.waiting,
        }


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


class SessionManager:
    """All sessions of all tenants, and the throwaway runs of session-less requests."""

    def __init__(
        self,
        settings: Settings,
        pools: Mapping[str, KernelPool],
        broker: Broker,
        cache: CacheStore,
    ) -> None:
        self.settings = settings
        self.pools = pools
        self.broker = broker
        self.cache = cache
        self.sessions: dict[tuple[str, str], Session] = {}
        self.throwaway_running = 0

    # --- lookup and lifecycle -------------------------------------------------------------

    def _pool_for(self, tenant: TenantSettings, pool: str | None) -> KernelPool:
        name = pool or tenant.default_pool
        if name not in self.pools:
            raise ValidationError(f"unknown pool {name!r}; known: {', '.join(self.pools)}")
        if name not in tenant.pools:
            raise Forbidden(f"this tenant may not use pool {name!r}")
        return self.pools[name]

    @staticmethod
    def check_id(client_id: str) -> str:
        if not isinstance(client_id, str) or not SESSION_ID.match(client_id):
            raise ValidationError("session_id must be 1-128 characters of A-Z a-z 0-9 . _ -")
        return client_id

    def get(self, tenant: TenantSettings, client_id: str) -> Session:
        session = self.sessions.get((tenant.name, client_id))
        if session is None:
            raise NotFound(f"no session {client_id!r}")
        return session

    def list(self, tenant: TenantSettings) -> list[Session]:
        return [s for (t, _), s in self.sessions.items() if t == tenant.name]

    async def create(
        self, tenant: TenantSettings, client_id: str | None = None, pool: str | None = None
    ) -> Session:
        """A new session with a kernel from its pool; Conflict when the id is taken."""
        client_id = self.check_id(client_id) if client_id is not None else uuid.uuid4().hex
        if (tenant.name, client_id) in self.sessions:
            raise Conflict(f"session {client_id!r} already exists")
        session = Session(
            tenant=tenant.name, client_id=client_id, pool=self._pool_for(tenant, pool)
        )
        self.sessions[(tenant.name, client_id)] = session
        try:
            async with session.lock:
                await self._ensure_kernel(session)
        except BaseException:
            self.sessions.pop((tenant.name, client_id), None)
            raise
        return session

    def get_or_create(self, tenant: TenantSettings, client_id: str) -> Session:
        """The session with this id, created (without a kernel yet) on first use."""
        key = (tenant.name, self.check_id(client_id))
        if key not in self.sessions:
            self.sessions[key] = Session(
                tenant=tenant.name, client_id=client_id, pool=self._pool_for(tenant, None)
            )
        return self.sessions[key]

    async def delete(self, tenant: TenantSettings, client_id: str) -> None:
        """End a session now: a running cell is interrupted and its kernel destroyed."""
        session = self.get(tenant, client_id)
        del self.sessions[(tenant.name, client_id)]
        self._drop_kernel(session, "session_deleted")

    def _drop_kernel(self, session: Session, reason: str) -> None:
        kernel, session.kernel = session.kernel, None
        if kernel is not None:
            self.broker.detach(kernel.kernel_id)
            kernel.lost = kernel.lost or reason
            session.pool.release(kernel)

    async def _ensure_kernel(self, session: Session) -> str | None:
        """Give the session a live kernel; return why its previous one was replaced, if it was."""
        kernel = session.kernel
        if kernel is not None and not await kernel.usable():
            reason = kernel.lost or (
                "out_of_memory" if await kernel.process.oom_killed() else "kernel_died"
            )
            self._drop_kernel(session, reason)
            session.lost_reason = reason
        if session.kernel is None:
            kernel = await session.pool.acquire()
            caller = Caller(session.tenant, session.client_id, kernel.kernel_id)
            try:
                await self.broker.attach(kernel.kernel_dir.srv, caller)
            except BaseException:
                session.pool.release(kernel)
                raise
            session.kernel = kernel
            replaced, session.lost_reason = session.lost_reason, None
            return replaced
        return None

    # --- execution ---------------------------------------------------------------------

    async def execute(self, session: Session, request: ExecutionRequest) -> dict[str, Any]:
        """Run a request in the session, in order behind earlier requests."""
        if session.lock.locked() and session.waiting >= self.settings.session_queue_size:
            raise SessionBusy(
                f"session {session.client_id!r} already has {session.waiting} requests waiting",
                session_id=session.client_id,
            )
        session.waiting += 1
        try:
            await session.lock.acquire()
        finally:
            session.waiting -= 1
        try:
            return await self._run(session, request)
        finally:
            session.last_activity = time.time()
            session.lock.release()

    async def run_once(self, tenant: TenantSettings, request: ExecutionRequest) -> dict[str, Any]:
        """Run a request without a session: SQL in the server, Python in a throwaway kernel."""
        if request.language == "sql":
            return await self._run_sql_in_server(tenant, request)
        session = Session(tenant=tenant.name, client_id="", pool=self._pool_for(tenant, None))
        self.throwaway_running += 1
        try:
            async with session.lock:
                result = await self._run(session, request)
        finally:
            self.throwaway_running -= 1
            self._drop_kernel(session, "throwaway")
        result["session_id"] = None
        return result

    async def _run_sql_in_server(
        self, tenant: TenantSettings, request: ExecutionRequest
    ) -> dict[str, Any]:
        started = time.perf_counter()
        table = await self.broker.query_table(Caller(tenant.name, "", ""), request.code)
        result = table_result(table, request.max_rows)
        result["metadata"]["execution_time_ms"] = round((time.perf_counter() - started) * 1000, 3)
        key = await self.cache.spill(tenant.name, None, table, {"sql": request.code, "inputs": {}})
        result.update(
            session_id=None, execution_count=None, kernel_replaced=False, outputs=[], cache_key=key
        )
        return result

    async def _run(self, session: Session, request: ExecutionRequest) -> dict[str, Any]:
        replaced = await self._ensure_kernel(session)
        kernel = session.kernel
        assert kernel is not None
        session.execution_count += 1
        count = session.execution_count
        entry = HistoryEntry(
            execution_count=count,
            code=request.code,
            started=time.time(),
            language=request.language,
            result_name=request.sql_name(count) if request.language == "sql" else None,
            kernel_replaced=replaced,
        )
        session.history.append(entry)
        session.running = entry
        context: dict[str, Any] = {
            "session_id": session.client_id or None,
            "execution_count": count,
            "kernel_replaced": replaced is not None,
        }
        try:
            execution = await kernel.run(
                request.kernel_code(count),
                {"dataexec": RESULT_EXPRESSION.format(max_rows=request.max_rows)},
                self.settings.output_limit_bytes,
            )
        except DataExecError as exc:
            entry.status, entry.error_type = "failed", exc.type
            self._forget_lost_kernel(session, kernel)
            exc.extra.update(context)
            raise
        except asyncio.CancelledError:
            entry.status = "cancelled"
            self._forget_lost_kernel(session, kernel)
            raise
        finally:
            session.running = None
        entry.elapsed_ms = execution.elapsed_ms
        entry.outputs = execution.outputs
        if execution.status != "ok":
            error = execution.error or {"ename": "Aborted", "evalue": "aborted", "traceback": []}
            kind = KERNEL_ERRORS.get(error["ename"], ExecutionError)
            entry.status, entry.error_type = "failed", kind.type
            message = (
                error["evalue"]
                if kind is not ExecutionError
                else (f"{error['ename']}: {error['evalue']}")
            )
            raise kind(message, **error, outputs=execution.outputs, **context)
        entry.status = "ok"
        result = _result_payload(execution.user_expressions)
        entry.row_count = result["metadata"]["row_count"]
        result["metadata"]["execution_time_ms"] = round(execution.elapsed_ms, 3)
        result.update(context, outputs=execution.outputs)
        if entry.result_name is not None:
            result["result_name"] = entry.result_name
        if replaced is not None:
            result.update(replaced_reason=replaced, restored_frames=[])
        return result

    def _forget_lost_kernel(self, session: Session, kernel: Kernel) -> None:
        """After a failure that cost the kernel, the session's next request gets a new one."""
        if kernel.lost:
            self._drop_kernel(session, kernel.lost)
            session.lost_reason = kernel.lost

    async def interrupt(self, session: Session) -> bool:
        """Interrupt the session's running cell (skips the queue); False if none was running."""
        if session.running is None or session.kernel is None:
            return False
        session.kernel.client.interrupt()
        return True

    # --- housekeeping ------------------------------------------------------------------

    async def cull(self) -> None:
        """Cull idle kernels and expire idle sessions; logged with the rule that fired."""
        now = time.time()
        for key, session in list(self.sessions.items()):
            idle_for = now - session.last_activity
            is_idle = not session.lock.locked() and session.waiting == 0
            if is_idle and idle_for > self.settings.session_ttl_s:
                log.info("session %s expired (idle %.0f s > ttl)", session.id, idle_for)
                del self.sessions[key]
                self._drop_kernel(session, "session_expired")
            elif is_idle and session.kernel and idle_for > session.pool.settings.idle_timeout_s:
                log.info("session %s: kernel culled (idle %.0f s)", session.id, idle_for)
                self._drop_kernel(session, "culled")
                session.lost_reason = "culled"
        for pool in self.pools.values():
            await pool.check_idle()

    def busy(self) -> bool:
        return self.throwaway_running > 0 or any(s.lock.locked() for s in self.sessions.values())

    async def close(self, grace: float) -> None:
        """Let running cells finish up to ``grace`` seconds, then destroy every kernel."""
        deadline = time.monotonic() + grace
        # Bounded polling: "no session busy" spans many locks and has no single event.
        while self.busy() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for session in list(self.sessions.values()):
            self._drop_kernel(session, "server_shutdown")


def _result_payload(user_expressions: dict[str, Any]) -> dict[str, Any]:
    """The result part of an answer, from the kernel's capture (see dataexec_kernel)."""
    captured = user_expressions.get("dataexec", {})
    if captured.get("status") != "ok":
        raise KernelDied("the kernel did not report the cell's result")
    payload = orjson.loads(captured["data"][RESULT_MIMETYPE])
    if payload["kind"] == "none":
        return {
            "status": "success",
            "metadata": {"row_count": 0, "truncated": False, "result_schema": []},
            "data": None,
            "cache_key": None,
        }
    return {
        "status": "success",
        "metadata": {
            "row_count": payload["row_count"],
            "truncated": payload["truncated"],
            "result_schema": payload["result_schema"],
        },
        "data": {"columns": payload["columns"], "rows": payload["rows"]},
        "cache_key": payload.get("cache_key"),
    }
