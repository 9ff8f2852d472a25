"""Sessions: a tenant's analysis, its kernel, its history, its order of requests.

A session is keyed by (tenant, client id); another tenant's id is simply unknown. It takes
a kernel from its pool when it first needs one and gives it back (to be destroyed) when it
ends. Requests to one session run one at a time, in arrival order; at most
``session_queue_size`` may wait behind the running one, past that ``SessionBusy``.

A kernel can be lost (timeout that an interrupt did not end, output flood, memory kill,
crash, idle culling, a server restart): the session lives on. After each step, once the
client has its answer, a checkpoint pass sends the session's named DataFrames that changed
to the cache (within ``checkpoint_budget_bytes``) and the step is written to the store. The
next request after a loss gets a fresh kernel with those frames loaded back, and says
``kernel_replaced: true``, why, and ``restored_frames``. ``execution_count`` runs on across
replacements. Sessions and their steps live in the store (``server.sessions.records``), so
they outlive the server too.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from server.broker.broker import Broker, Caller
from server.cache.cache import CacheStore
from server.cache.results import table_result
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
    QuotaExceeded,
    SessionBusy,
    SqlNotAllowed,
    ValidationError,
)
from server.kernels.kernel import Kernel
from server.kernels.pool import KernelPool
from server.sessions.history import ExecutionRecord, FrameRecord
from server.sessions.records import SessionStore

if TYPE_CHECKING:
    from server.sessions.replay import Replay

log = logging.getLogger(__name__)
T = TypeVar("T")

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
    "QuotaExceeded": QuotaExceeded,
}


@dataclass(frozen=True)
class ExecutionRequest:
    """One request to run code: Python, or SQL (run as ``%%sql name`` in a session).

    ``kind`` is ``execute`` or ``execute_on_data`` (whose ``code`` is the prepared cell).
    """

    code: str
    max_rows: int
    language: str = "python"
    result_name: str | None = None
    kind: str = "execute"
    params: dict[str, Any] | None = None  # SQL ``:name`` parameters

    def kernel_code(self, execution_count: int) -> str:
        """What the kernel runs: the code itself, or the cell of the query (``%%sql name``,
        or ``name = sql(query, params)`` when it has parameters)."""
        if self.language != "sql":
            return self.code
        name = self.sql_name(execution_count)
        if self.params:
            return f"{name} = sql({self.code!r}, {self.params!r})\n{name}"
        return f"%%sql {name}\n{self.code}"

    def sql_name(self, execution_count: int) -> str:
        return self.result_name or f"df_{execution_count}"

    def lineage(self, execution_count: int | None) -> dict[str, Any]:
        """What produced the frames of this step, for their cache keys."""
        source = {"sql": self.code} if self.language == "sql" else {"code": self.code}
        if self.params:
            source["params"] = self.params
        return {**source, "execution_count": execution_count}


@dataclass(frozen=True)
class Replacement:
    """A session got a fresh kernel: why, and which frames came back into it."""

    reason: str
    restored: list[str]
    failed: dict[str, str]

    def describe(self) -> dict[str, Any]:
        return {
            "kernel_replaced": True,
            "replaced_reason": self.reason,
            "restored_frames": self.restored,
            "unrestored_frames": self.failed,
        }


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
    caller: Caller | None = None
    lost_reason: str | None = None  # why the last kernel went, until a new one serves
    # A replacement done outside a step (restart) that the next step's record shows.
    replacement: Replacement | None = None
    frames: dict[str, FrameRecord] = field(default_factory=dict)
    frames_as_of: int = 0  # the execution count after which they were last checkpointed
    frames_changed: bool = True  # whether the last step may have changed them
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0
    running: ExecutionRecord | None = None
    after_step: asyncio.Future[None] | None = None  # the checkpoint pass after a step
    store_write: asyncio.Future[None] | None = None  # the last step's write to the store
    replay: Replay | None = None  # an imported notebook being replayed into the session

    @property
    def persistent(self) -> bool:
        """Throwaway sessions (no client id) are neither stored nor checkpointed."""
        return bool(self.client_id)

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
            "frames": sorted(self.frames),
        }


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SessionManager:
    """All sessions of all tenants, and the throwaway runs of session-less requests."""

    def __init__(
        self,
        settings: Settings,
        pools: Mapping[str, KernelPool],
        broker: Broker,
        cache: CacheStore,
        records: SessionStore,
    ) -> None:
        self.settings = settings
        self.pools = pools
        self.broker = broker
        self.cache = cache
        self.records = records
        self.sessions: dict[tuple[str, str], Session] = {}
        self.throwaway_running = 0
        self.closing = False

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

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

    async def _find(self, tenant: TenantSettings, client_id: str) -> Session | None:
        """The session in memory, else from the store (after a restart: no kernel yet)."""
        session = self.sessions.get((tenant.name, client_id))
        if session is not None or not SESSION_ID.match(client_id):
            return session
        stored = await self._in_thread(
            self.records.find, tenant.name, client_id, self.settings.session_ttl_s
        )
        if stored is None:
            return None
        session = self.sessions.get((tenant.name, client_id))  # found meanwhile
        if session is None:
            pool = self.pools.get(stored.pool) or self._pool_for(tenant, None)
            session = Session(
                tenant=tenant.name,
                client_id=client_id,
                pool=pool,
                id=stored.id,
                created=stored.created.timestamp(),
                last_activity=stored.last_activity.timestamp(),
                execution_count=stored.execution_count,
                frames_as_of=stored.execution_count,
                lost_reason="server_restart" if stored.execution_count else None,
                frames={f.name: f for f in stored.frames},
            )
            self.sessions[(tenant.name, client_id)] = session
        return session

    async def get(self, tenant: TenantSettings, client_id: str) -> Session:
        session = await self._find(tenant, client_id)
        if session is None:
            raise NotFound(f"no session {client_id!r}")
        return session

    async def list(self, tenant: TenantSettings) -> list[Session]:
        ids = await self._in_thread(
            self.records.active_ids, tenant.name, self.settings.session_ttl_s
        )
        found = [await self._find(tenant, client_id) for client_id in ids]
        return [s for s in found if s is not None]

    async def _new(self, tenant: TenantSettings, client_id: str, pool: str | None) -> Session:
        session = Session(
            tenant=tenant.name, client_id=client_id, pool=self._pool_for(tenant, pool)
        )
        self.sessions[(tenant.name, client_id)] = session
        try:
            await self._in_thread(
                self.records.create, session.id, tenant.name, client_id, session.pool.name
            )
        except Exception:
            self.sessions.pop((tenant.name, client_id), None)
            raise
        return session

    async def create(
        self, tenant: TenantSettings, client_id: str | None = None, pool: str | None = None
    ) -> Session:
        """A new session with a kernel from its pool; Conflict when the id is taken."""
        client_id = self.check_id(client_id) if client_id is not None else uuid.uuid4().hex
        if await self._find(tenant, client_id) is not None:
            raise Conflict(f"session {client_id!r} already exists")
        session = await self._new(tenant, client_id, pool)
        try:
            async with session.lock:
                await self._ensure_kernel(session)
        except BaseException:
            self.sessions.pop((tenant.name, client_id), None)
            await self._in_thread(self.records.end, session.id, "deleted")
            raise
        return session

    async def get_or_create(self, tenant: TenantSettings, client_id: str) -> Session:
        """The session with this id, created (without a kernel yet) on first use."""
        session = await self._find(tenant, self.check_id(client_id))
        if session is None:
            session = await self._new(tenant, client_id, None)
        return session

    async def delete(self, tenant: TenantSettings, client_id: str) -> None:
        """End a session now: a running cell is interrupted and its kernel destroyed.

        Its history and cache keys stay in the store (keys live to their own TTL).
        """
        session = await self.get(tenant, client_id)
        await self._end(session, "deleted")

    async def _end(self, session: Session, state: str) -> None:
        self.sessions.pop((session.tenant, session.client_id), None)
        self._drop_kernel(session, f"session_{state}")
        await self._in_thread(self.records.end, session.id, state)

    def _drop_kernel(self, session: Session, reason: str) -> None:
        kernel, session.kernel = session.kernel, None
        if kernel is not None:
            self.broker.detach(kernel.kernel_id)
            kernel.lost = kernel.lost or reason
            session.pool.release(kernel)

    async def _ensure_kernel(self, session: Session) -> Replacement | None:
        """Give the session a live kernel; say why the previous one was replaced, if it was.

        A fresh kernel of a session that had one gets the session's checkpointed frames
        back before anything runs in it.
        """
        kernel = session.kernel
        if kernel is not None and not await kernel.usable():
            reason = kernel.lost or (
                "out_of_memory" if await kernel.process.oom_killed() else "kernel_died"
            )
            self._drop_kernel(session, reason)
            session.lost_reason = reason
        if session.kernel is not None:
            return None
        kernel = await session.pool.acquire()
        store_id = session.id if session.persistent else None
        caller = Caller(session.tenant, session.client_id, kernel.kernel_id, store_id)
        try:
            await self.broker.attach(kernel.kernel_dir.srv, caller)
        except BaseException:
            session.pool.release(kernel)
            raise
        session.kernel, session.caller = kernel, caller
        reason, session.lost_reason = session.lost_reason, None
        if reason is None:
            return None
        restored, failed = await self._restore(session, kernel)
        return Replacement(reason, restored, failed)

    async def _restore(self, session: Session, kernel: Kernel) -> tuple[list[str], dict[str, str]]:
        """Load the session's checkpoints into ``kernel``; which came back, which did not."""
        keys = {f.name: f.cache_key for f in session.frames.values() if f.cache_key}
        failed = {
            f.name: f.note or "never checkpointed"
            for f in session.frames.values()
            if not f.cache_key
        }
        if not keys:
            return [], failed
        answer = await self._ask_kernel(kernel, f"__dataexec__.restore({keys!r})")
        for name, why in answer["failed"].items():
            failed[name] = why
        for name in failed:
            session.frames.pop(name, None)
        return answer["restored"], failed

    async def _ask_kernel(self, kernel: Kernel, expression: str) -> dict[str, Any]:
        """Evaluate one helper call silently (no history, no count) and decode its JSON."""
        execution = await kernel.run(
            "", {"dataexec": expression}, self.settings.output_limit_bytes, silent=True
        )
        captured = execution.user_expressions.get("dataexec", {})
        if captured.get("status") != "ok":
            raise KernelDied(f"the kernel failed a helper call: {captured.get('evalue', '')}")
        return orjson.loads(captured["data"][RESULT_MIMETYPE])

    async def restart(self, session: Session) -> dict[str, Any]:
        """A fresh kernel on purpose, with the session's frames restored (queues like a step)."""
        async with self._turn(session):
            await self._settled(session)
            self._drop_kernel(session, "restart")
            session.lost_reason = "restart"
            replacement = await self._ensure_kernel(session)
            assert replacement is not None
            session.replacement = replacement
            session.last_activity = time.time()
        return {"session_id": session.client_id, **replacement.describe()}

    async def variables(self, session: Session) -> dict[str, Any]:
        """The session's named frames as its last checkpoint pass saw them.

        Between steps that is after the last step (its pass is awaited); while a step runs,
        before it.
        """
        if session.running is None:
            await self._settled(session)
        frames = [
            {
                "name": f.name,
                "shape": [f.rows, len(f.columns)],
                "dtypes": f.dtypes,
                "bytes": f.bytes,
                "cache_key": f.cache_key,
                "restorable": f.cache_key is not None,
                "note": f.note,
            }
            for f in sorted(session.frames.values(), key=lambda f: f.name)
        ]
        return {
            "session_id": session.client_id,
            "in_kernel": session.kernel is not None,
            "as_of_execution_count": session.frames_as_of,
            "checkpoint_budget_bytes": self.settings.checkpoint_budget_bytes,
            "frames": frames,
        }

    async def history(self, session: Session) -> list[ExecutionRecord]:
        """The session's recorded steps, in order (waits for the last one's write)."""
        await self._settled(session, written=True)
        return await self._in_thread(self.records.history, session.id)

    # --- execution ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _turn(self, session: Session) -> AsyncIterator[None]:
        """The session's lock, in arrival order, with a bounded queue."""
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
            yield
        finally:
            session.lock.release()

    async def _settled(self, session: Session, written: bool = False) -> None:
        """Wait for the previous step's checkpoint pass (and, if ``written``, its store write).

        The next step waits for the pass only: it needs the kernel, not the store.
        """
        if session.after_step is not None:
            await asyncio.shield(session.after_step)
        if written and session.store_write is not None:
            await asyncio.shield(session.store_write)

    async def execute(self, session: Session, request: ExecutionRequest) -> dict[str, Any]:
        """Run a request in the session, in order behind earlier requests."""
        async with self._turn(session):
            await self._settled(session)
            try:
                return await self._run(session, request)
            finally:
                session.last_activity = time.time()
                record, session.running = session.running, None
                if record is not None and session.persistent:
                    session.after_step = asyncio.ensure_future(
                        self._after_step(session, record, session.frames_changed)
                    )

    async def _after_step(
        self, session: Session, record: ExecutionRecord, checkpoint: bool
    ) -> None:
        """Checkpoint the session's frames, then queue the step's store write; runs after
        the answer."""
        frames = None
        kernel = session.kernel
        try:
            if checkpoint and kernel is not None and await kernel.usable():
                frames = await self._checkpoint(session, kernel)
            else:
                session.frames_as_of = session.execution_count
        except Exception as exc:  # the step's answer is out; keep the session going
            if session.kernel is kernel:  # not merely dropped meanwhile (delete, shutdown)
                log.warning("session %s: checkpoint failed: %s", session.id, exc)
        session.store_write = asyncio.ensure_future(
            self._write_step(session, record, frames, session.lost_reason, session.store_write)
        )

    async def _write_step(
        self,
        session: Session,
        record: ExecutionRecord,
        frames: list[FrameRecord] | None,
        lost_reason: str | None,
        previous: asyncio.Future[None] | None,
    ) -> None:
        """Write a step to the store, after the step before it (writes keep their order)."""
        if previous is not None:
            await asyncio.shield(previous)
        try:
            await self._in_thread(self.records.record_step, session.id, record, frames, lost_reason)
        except Exception:
            log.exception(
                "session %s: recording step %d failed", session.id, record.execution_count
            )

    async def _checkpoint(self, session: Session, kernel: Kernel) -> list[FrameRecord]:
        budget = self.settings.checkpoint_budget_bytes
        answer = await self._ask_kernel(kernel, f"__dataexec__.checkpoint({budget})")
        now = _now()
        previous = session.frames
        frames = [
            FrameRecord(
                name=f["name"],
                rows=f["rows"],
                columns=f["columns"],
                dtypes=f["dtypes"],
                bytes=f["bytes"],
                cache_key=f["cache_key"],
                updated=now
                if f["changed"] or f["name"] not in previous
                else previous[f["name"]].updated,
                note=f["note"],
            )
            for f in answer["frames"]
        ]
        session.frames = {f.name: f for f in frames}
        session.frames_as_of = session.execution_count
        return frames

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
        caller = Caller(tenant.name, "", "")
        table = await self.broker.query_table(caller, request.code, request.params)
        result = table_result(table, request.max_rows)
        result["metadata"]["execution_time_ms"] = round((time.perf_counter() - started) * 1000, 3)
        caller.begin_step(request.lineage(None))
        key = await self.cache.spill(tenant.name, None, table, caller.lineage("result", None))
        result.update(
            session_id=None, execution_count=None, kernel_replaced=False, outputs=[], cache_key=key
        )
        return result

    async def _run(self, session: Session, request: ExecutionRequest) -> dict[str, Any]:
        replacement = await self._ensure_kernel(session)
        kernel, caller = session.kernel, session.caller
        assert kernel is not None and caller is not None
        session.execution_count += 1
        count = session.execution_count
        shown = replacement or session.replacement
        session.replacement = None
        record = ExecutionRecord(
            execution_count=count,
            language=request.language,
            code=request.code,
            cell=request.kernel_code(count),
            started=_now(),
            kind=request.kind,
            result_name=request.sql_name(count) if request.language == "sql" else None,
            kernel_replaced=shown.reason if shown else None,
            restored_frames=shown.restored if shown else [],
        )
        session.running = record
        session.frames_changed = True  # unless the step's answer says otherwise
        caller.begin_step(request.lineage(count))
        context: dict[str, Any] = {
            "session_id": session.client_id or None,
            "execution_count": count,
            "kernel_replaced": replacement is not None,
        }
        if replacement is not None:
            context.update(replacement.describe())
        try:
            execution = await kernel.run(
                record.cell,
                {"dataexec": RESULT_EXPRESSION.format(max_rows=request.max_rows)},
                self.settings.output_limit_bytes,
            )
        except DataExecError as exc:
            record.status, record.error_type = "failed", exc.type
            record.error = {"message": exc.message}
            self._forget_lost_kernel(session, kernel)
            exc.extra.update(context)
            raise
        except asyncio.CancelledError:
            record.status = "cancelled"
            self._forget_lost_kernel(session, kernel)
            raise
        record.elapsed_ms = execution.elapsed_ms
        record.outputs = execution.outputs
        if execution.status != "ok":
            error = execution.error or {"ename": "Aborted", "evalue": "aborted", "traceback": []}
            kind = KERNEL_ERRORS.get(error["ename"], ExecutionError)
            message = (
                error["evalue"]
                if kind is not ExecutionError
                else (f"{error['ename']}: {error['evalue']}")
            )
            record.status, record.error_type = "failed", kind.type
            record.error = {"message": message, "ename": error["ename"], "evalue": error["evalue"]}
            raise kind(message, **error, outputs=execution.outputs, **context)
        result = _result_payload(execution.user_expressions)
        session.frames_changed = result.pop("frames_changed")
        cache_error = result.pop("cache_error", None)
        if cache_error and cache_error["type"] == QuotaExceeded.type:
            record.status, record.error_type = "failed", QuotaExceeded.type
            record.error = {"message": cache_error["message"]}
            raise QuotaExceeded(
                f"{cache_error['message']}; the result is in the kernel but has no cache key",
                outputs=execution.outputs,
                **context,
            )
        record.status = "ok"
        record.row_count = result["metadata"]["row_count"]
        record.cache_key = result["cache_key"]
        result["metadata"]["execution_time_ms"] = round(execution.elapsed_ms, 3)
        if cache_error:
            result["metadata"]["cache_error"] = cache_error["message"]
        result.update(context, outputs=execution.outputs)
        if record.result_name is not None:
            result["result_name"] = record.result_name
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
        for session in list(self.sessions.values()):
            idle_for = now - session.last_activity
            is_idle = not session.lock.locked() and session.waiting == 0
            if is_idle and idle_for > self.settings.session_ttl_s:
                log.info("session %s expired (idle %.0f s > ttl)", session.id, idle_for)
                await self._end(session, "expired")
            elif is_idle and session.kernel and idle_for > session.pool.settings.idle_timeout_s:
                log.info("session %s: kernel culled (idle %.0f s)", session.id, idle_for)
                self._drop_kernel(session, "culled")
                session.lost_reason = "culled"
        for pool in self.pools.values():
            await pool.check_idle()
        # Ended sessions' history lives as long as their keys may.
        keep_s = max(self.settings.session_ttl_s, self.settings.cache_ttl_s)
        purged = await self._in_thread(self.records.purge, keep_s)
        if purged:
            log.info("removed %d sessions idle past %.0f s from the store", purged, keep_s)

    def is_live(self, session: Session) -> bool:
        """Whether ``session`` is still one of the manager's (not ended, not shutting down)."""
        return (
            not self.closing and self.sessions.get((session.tenant, session.client_id)) is session
        )

    def busy(self) -> bool:
        return self.throwaway_running > 0 or any(
            s.lock.locked()
            or any(task is not None and not task.done() for task in (s.after_step, s.store_write))
            for s in self.sessions.values()
        )

    async def close(self, grace: float) -> None:
        """Let running cells finish up to ``grace`` seconds, then destroy every kernel."""
        self.closing = True
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
            "frames_changed": payload.get("frames_changed", True),
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
        "cache_error": payload.get("cache_error"),
        "frames_changed": payload.get("frames_changed", True),
    }
