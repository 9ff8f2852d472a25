"""The session manager: every session of every tenant, and the one door for running code.

A session is keyed by (tenant, client id); another tenant's id is simply unknown. It takes
a kernel from its pool when it first needs one and gives it back (to be destroyed) when it
ends. Requests to one session run one at a time, in arrival order; at most
``session_queue_size`` may wait behind the running one, past that ``SessionBusy``.

``submit`` runs a request in a session (created on first use) or, without one, once: SQL
in the server, Python in a throwaway kernel; with an ``OutputFeed`` (``outputs``) the
request's outputs are handed over as they happen. ``create`` may start the replay of an
imported notebook.

A kernel can be lost (timeout that an interrupt did not end, output flood, memory kill,
crash, idle culling, a server restart): the session lives on (see ``checkpoints``). The
next request after a loss gets a fresh kernel with the session's frames loaded back, and
says ``kernel_replaced: true``, why, and ``restored_frames``. ``execution_count`` runs on
across replacements. Sessions and their steps live in the store (``records``), so they
outlive the server too.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from dataexec_kernel import protocol

from server.broker.broker import Broker
from server.broker.caller import Caller
from server.cache.cache import Cache
from server.cache.results import answer, table_result
from server.config import Settings, TenantSettings
from server.errors import (
    Cancelled,
    Conflict,
    DataExecError,
    Forbidden,
    NotFound,
    QuotaExceeded,
    SessionBusy,
    ValidationError,
)
from server.kernels.kernel import Kernel
from server.kernels.pool import KernelPool
from server.sessions import execution
from server.sessions.audit import AuditLog
from server.sessions.checkpoints import FORGED_KEY, Checkpoints
from server.sessions.execution import ExecutionRequest
from server.sessions.history import ExecutionRecord
from server.sessions.limits import TenantLimits
from server.sessions.outputs import OutputFeed
from server.sessions.records import SessionRecords
from server.sessions.replay import Replay
from server.sessions.session import SESSION_ID, Replacement, Session, cancelled, check_id
from server.telemetry.metrics import Metrics
from server.telemetry.steps import Step, observe_step

log = logging.getLogger(__name__)


class SessionManager:
    """All sessions of all tenants, and the throwaway runs of session-less requests."""

    def __init__(
        self,
        settings: Settings,
        pools: Mapping[str, KernelPool],
        broker: Broker,
        cache: Cache,
        records: SessionRecords,
        audit: AuditLog,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.audit = audit
        self.metrics = metrics or Metrics()
        self.pools = pools
        self.broker = broker
        self.cache = cache
        self.records = records
        self.checkpoints = Checkpoints(
            records, settings.checkpoint_budget_bytes, settings.output_limit_bytes
        )
        self.sessions: dict[tuple[str, str], Session] = {}
        self.limits = TenantLimits()
        self.throwaway_running = 0
        self.closing = False

    # --- lookup and lifecycle -------------------------------------------------------------

    def _pool_for(self, tenant: TenantSettings, pool: str | None) -> KernelPool:
        name = pool or tenant.default_pool
        if name not in self.pools:
            raise ValidationError(f"unknown pool {name!r}; known: {', '.join(self.pools)}")
        if name not in tenant.pools:
            raise Forbidden(f"this tenant may not use pool {name!r}")
        return self.pools[name]

    async def _find(self, tenant: TenantSettings, client_id: str) -> Session | None:
        """The session in memory, else from the store (after a restart: no kernel yet)."""
        session = self.sessions.get((tenant.name, client_id))
        if session is not None or not SESSION_ID.match(client_id):
            return session
        stored = await asyncio.to_thread(
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
        ids = await asyncio.to_thread(
            self.records.active_ids, tenant.name, self.settings.session_ttl_s
        )
        found = [await self._find(tenant, client_id) for client_id in ids]
        return [s for s in found if s is not None]

    async def _new(self, tenant: TenantSettings, client_id: str, pool: str | None) -> Session:
        if (tenant.name, client_id) in self.sessions:  # made by a request that raced ours
            raise Conflict(f"session {client_id!r} already exists")
        self.limits.admit_session(tenant, sum(t == tenant.name for t, _ in self.sessions))
        session = Session(
            tenant=tenant.name, client_id=client_id, pool=self._pool_for(tenant, pool)
        )
        self.sessions[(tenant.name, client_id)] = session
        try:
            await asyncio.to_thread(
                self.records.create, session.id, tenant.name, client_id, session.pool.name
            )
        except Exception:
            self._forget(session)
            raise
        return session

    def _forget(self, session: Session) -> None:
        """Drop ``session`` from memory unless its id already names a newer one."""
        key = (session.tenant, session.client_id)
        if self.sessions.get(key) is session:
            del self.sessions[key]

    async def create(
        self,
        tenant: TenantSettings,
        client_id: str | None = None,
        pool: str | None = None,
        replay: Replay | None = None,
    ) -> Session:
        """A new session with a kernel from its pool; Conflict when the id is taken.

        With ``replay`` (an imported notebook), its cells start running as the session's
        steps; ``session.replay`` follows them.
        """
        client_id = check_id(client_id) if client_id is not None else uuid.uuid4().hex
        if await self._find(tenant, client_id) is not None:
            raise Conflict(f"session {client_id!r} already exists")
        session = await self._new(tenant, client_id, pool)
        try:
            async with session.lock:
                await self._ensure_kernel(session)
        except BaseException:
            self._forget(session)
            await asyncio.to_thread(self.records.end, session.id, "deleted")
            raise
        if replay is not None:
            session.replay = replay
            replay.start(
                lambda request: self._replayed(session, request), lambda: self.is_live(session)
            )
        return session

    async def _replayed(self, session: Session, request: ExecutionRequest) -> dict[str, Any]:
        pool = session.pool.name
        with self.audit.entry(session.tenant, session.client_id, request, pool=pool) as entry:
            return entry.answered(await self.execute(session, request))

    async def get_or_create(self, tenant: TenantSettings, client_id: str) -> Session:
        """The session with this id, created (without a kernel yet) on first use."""
        session = await self._find(tenant, check_id(client_id))
        if session is None:
            # Another request may have made it while we looked in the store: use that one.
            session = self.sessions.get((tenant.name, client_id)) or await self._new(
                tenant, client_id, None
            )
        return session

    async def delete(self, tenant: TenantSettings, client_id: str, state: str = "deleted") -> None:
        """End a session now: a running cell is interrupted and its kernel destroyed.

        Its history and cache keys stay in the store (keys live to their own TTL); ``state``
        is ``terminated`` when an operator ends it (CANCELLED reason ``session_terminated``).
        """
        session = await self.get(tenant, client_id)
        await self._end(session, state)

    async def _end(self, session: Session, state: str) -> None:
        session.ended = state
        self._forget(session)
        self._drop_kernel(session, f"session_{state}")
        await asyncio.to_thread(self.records.end, session.id, state)

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
            reason = await kernel.death_reason()
            self._drop_kernel(session, reason)
            session.lost_reason = reason
        if session.kernel is not None:
            return None
        kernel = await session.pool.acquire(session.tenant)
        caller = Caller(session.tenant, session.client_id, kernel.kernel_id, session.store_id)
        try:
            await self.broker.attach(kernel.broker_socket, caller)
            if self._gone(session):  # deleted (or the server closing) while we waited
                self.broker.detach(kernel.kernel_id)
                raise self._cancelled(session, "while the request waited for a kernel")
        except BaseException:
            session.pool.release(kernel)
            raise
        session.kernel, session.caller = kernel, caller
        lost, session.lost_reason = session.lost_reason, None
        if lost is None:
            return None
        self.metrics.replacement(session.pool.name, lost)
        try:
            restored, failed = await self.checkpoints.restore(session, kernel)
        except Cancelled as exc:  # the fresh kernel went too (the session was deleted)
            raise cancelled(exc.extra["reason"], "while its frames were restored") from None
        return Replacement(lost, restored, failed)

    def _gone(self, session: Session) -> bool:
        """Whether a session that requests still hold was let go (deleted, expired, or the
        server is closing): they must not give it a kernel."""
        return session.persistent and not self.is_live(session)

    def _cancelled(self, session: Session, when: str) -> Cancelled:
        reason = f"session_{session.ended}" if session.ended else "server_shutdown"
        return cancelled(reason, when, session_id=session.client_id)

    async def restart(self, session: Session) -> dict[str, Any]:
        """A fresh kernel on purpose, with the session's frames restored.

        A cell running now is stopped at once, with its kernel (it answers CANCELLED); the
        restart then takes its turn behind the requests already waiting (which run in a
        fresh kernel) and replaces the kernel once more.
        """
        if session.running is not None:
            self._drop_kernel(session, "restart")
            session.lost_reason = "restart"
        async with self._turn(session):
            if self._gone(session):
                raise self._cancelled(session, "before the restart")
            await self.checkpoints.settled(session)
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
            await self.checkpoints.settled(session)
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

    async def history(self, session: Session) -> builtins.list[ExecutionRecord]:
        """The session's recorded steps, in order (waits for the last one's write)."""
        await self.checkpoints.settled(session, written=True)
        return await asyncio.to_thread(self.records.history, session.id)

    # --- execution ---------------------------------------------------------------------

    async def submit(
        self,
        tenant: TenantSettings,
        request: ExecutionRequest,
        session_id: str | None,
        feed: OutputFeed | None = None,
    ) -> dict[str, Any]:
        """Run ``request`` in the tenant's session ``session_id`` (made on first use), or,
        without one, once: SQL in the server, Python in a throwaway kernel. ``feed`` gets
        the outputs as they happen (started when the cell starts). Audited, however it ends."""
        with self.audit.entry(tenant.name, session_id, request) as entry:
            with self.limits.execution(tenant):
                if session_id is None:
                    entry.pool = None if request.language == "sql" else tenant.default_pool
                    return entry.answered(await self._run_once(tenant, request, feed))
                session = await self.get_or_create(tenant, session_id)
                entry.pool = session.pool.name
                return entry.answered(await self.execute(session, request, feed))

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

    async def execute(
        self, session: Session, request: ExecutionRequest, feed: OutputFeed | None = None
    ) -> dict[str, Any]:
        """Run a request in the session, in order behind earlier requests."""
        async with self._turn(session):
            if self._gone(session):
                raise self._cancelled(session, "before the request ran")
            await self.checkpoints.settled(session)
            try:
                with self._observed(session.tenant, session.pool.name, request, session):
                    return await self._run(session, request, feed)
            finally:
                session.last_activity = time.time()
                record, session.running = session.running, None
                if record is not None and session.persistent:
                    self.checkpoints.after(session, record)

    async def _run_once(
        self, tenant: TenantSettings, request: ExecutionRequest, feed: OutputFeed | None
    ) -> dict[str, Any]:
        if request.language == "sql":
            if feed is not None:
                feed.start()  # the query is the cell: it prints nothing, its result streams
            with self._observed(tenant.name, "server", request):
                return await self._run_sql_in_server(tenant, request)
        session = Session(tenant=tenant.name, client_id="", pool=self._pool_for(tenant, None))
        self.throwaway_running += 1
        try:
            async with session.lock:
                with self._observed(tenant.name, session.pool.name, request, session):
                    result = await self._run(session, request, feed)
        finally:
            self.throwaway_running -= 1
            self._drop_kernel(session, "throwaway")
        result["session_id"] = None
        return result

    @contextlib.contextmanager
    def _observed(
        self, tenant: str, pool: str, request: ExecutionRequest, session: Session | None = None
    ) -> Iterator[None]:
        """Count, time and log one step (``server.telemetry.steps``); the code only with
        ``log_code``."""
        step = Step(
            tenant=tenant,
            session=session.client_id or None if session is not None else None,
            language=request.language,
            kind=request.kind,
            pool=pool,
            code=request.code if self.settings.log_code else None,
        )
        with observe_step(self.metrics, step):
            try:
                yield
            finally:
                record = session.running if session is not None else None
                if record is not None:
                    step.execution_count = record.execution_count
                    step.kernel_replaced = record.kernel_replaced

    async def _run_sql_in_server(
        self, tenant: TenantSettings, request: ExecutionRequest
    ) -> dict[str, Any]:
        started = time.perf_counter()
        hold = self.cache.memory.hold()  # the result is held whole until it is written
        try:
            table = await self.broker.query_table(
                tenant.name, request.code, request.params, preview_rows=request.max_rows, hold=hold
            )
            # Statistics and preview of a large table take cpu seconds: off the event loop.
            result = await asyncio.to_thread(table_result, table, request.max_rows)
            result["metadata"]["execution_time_ms"] = round(
                (time.perf_counter() - started) * 1000, 3
            )
            caller = Caller(tenant.name, "", "")
            caller.lineage.begin(request.lineage(None))
            lineage = caller.lineage.of("result", None)
            key = await self.cache.spill(tenant.name, None, table, lineage, hold)
        except BaseException:
            hold.release()
            raise
        result.update(
            session_id=None, execution_count=None, kernel_replaced=False, outputs=[], cache_key=key
        )
        return result

    async def _run(
        self, session: Session, request: ExecutionRequest, feed: OutputFeed | None = None
    ) -> dict[str, Any]:
        replacement = await self._ensure_kernel(session)
        kernel, caller = session.kernel, session.caller
        assert kernel is not None and caller is not None
        session.execution_count += 1
        count = session.execution_count
        shown = replacement or session.replacement
        session.replacement = None
        record = request.record(count)
        if shown is not None:
            record.kernel_replaced, record.restored_frames = shown.reason, shown.restored
        session.running = record
        session.frames_changed = True  # unless the step's answer says otherwise
        caller.lineage.begin(request.lineage(count))
        context: dict[str, Any] = {
            "session_id": session.client_id or None,
            "execution_count": count,
            "kernel_replaced": replacement is not None,
        }
        if replacement is not None:
            context.update(replacement.describe())
        preview = self.settings.output_limit_bytes // 2  # the answer's part of the output
        if feed is not None:
            feed.start()
        try:
            done = await kernel.run(
                record.cell,
                {protocol.EXPRESSION: protocol.result_expression(request.max_rows, preview)},
                self.settings.output_limit_bytes,
                on_output=feed.put if feed is not None else None,
            )
        except Cancelled as exc:  # deleted, restarted or shut down under the cell
            stopped = cancelled(exc.extra["reason"], "while the cell ran", **context)
            record.fail(stopped.type, stopped.message)
            self._forget_lost_kernel(session, kernel)
            raise stopped from None
        except DataExecError as exc:
            record.fail(exc.type, exc.message)
            self._forget_lost_kernel(session, kernel)
            exc.extra.update(context)
            raise
        except asyncio.CancelledError:
            record.status = "cancelled"
            self._forget_lost_kernel(session, kernel)
            raise
        record.elapsed_ms = done.elapsed_ms
        record.outputs = done.outputs
        if done.status != "ok":
            error = execution.failure(done, context)
            record.fail(error.type, error.message, error.extra)
            raise error
        payload = execution.result_payload(done)
        session.frames_changed = payload.get("frames_changed", True)
        cache_error = payload.get("cache_error")
        if cache_error and cache_error["type"] == QuotaExceeded.type:
            record.fail(QuotaExceeded.type, cache_error["message"])
            raise QuotaExceeded(
                f"{cache_error['message']}; the result is in the kernel but has no cache key",
                outputs=done.outputs,
                **context,
            )
        result = answer(payload)
        key = result["cache_key"]
        if key is not None and not await self.checkpoints.is_minted(session, key):
            result["cache_key"] = None  # forged by the kernel: never relayed, nor recorded
            cache_error = {"message": f"{FORGED_KEY}: the answer has no cache key"}
        record.status = "ok"
        record.row_count = result["metadata"]["row_count"]
        record.cache_key = result["cache_key"]
        result["metadata"]["execution_time_ms"] = round(done.elapsed_ms, 3)
        if cache_error:
            result["metadata"]["cache_error"] = cache_error["message"]
        result.update(context, outputs=done.outputs)
        if record.result_name is not None:
            result["result_name"] = record.result_name
        return result

    def _forget_lost_kernel(self, session: Session, kernel: Kernel) -> None:
        """After a failure that cost the kernel, the session's next request gets a new one."""
        if kernel.lost and session.kernel is kernel:
            self._drop_kernel(session, kernel.lost)
            session.lost_reason = kernel.lost

    async def interrupt(self, session: Session) -> bool:
        """Interrupt the session's running cell (skips the queue); False if none was running."""
        if session.running is None or session.kernel is None:
            return False
        session.kernel.interrupt()
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
        purged = await asyncio.to_thread(self.records.purge, keep_s)
        if purged:
            log.info("removed %d sessions idle past %.0f s from the store", purged, keep_s)

    def is_live(self, session: Session) -> bool:
        """Whether ``session`` is still one of the manager's (not ended, not shutting down)."""
        return (
            not self.closing and self.sessions.get((session.tenant, session.client_id)) is session
        )

    def busy(self) -> bool:
        return self.throwaway_running > 0 or any(s.busy() for s in self.sessions.values())

    async def close(self, grace: float) -> None:
        """Let running cells finish up to ``grace`` seconds, then destroy every kernel."""
        self.closing = True
        deadline = time.monotonic() + grace
        # Bounded polling: "no session busy" spans many locks and has no single event.
        while self.busy() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for session in list(self.sessions.values()):
            self._drop_kernel(session, "server_shutdown")
