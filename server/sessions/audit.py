"""The audit trail: one store row per execution request, for operators (``GET /audit``).

Every request that reaches the session manager's door (``submit``), and every cell of an
imported notebook, leaves an ``AuditEntry``: tenant, session (the client's id, None without
one), execution count, kind, language, pool, status, error type, duration, rows, cache key,
why the kernel was replaced, the request id, and the code. ``status`` is ``success``,
``error`` (``error_type`` says which: ``EXECUTION_ERROR``, ``TIMEOUT``, ``CANCELLED``,
``RATE_LIMITED``...) or ``disconnected`` (the client went away and its cell was
interrupted); the duration is the request's own time at the door, queueing included.

Entries are written off the answer's path: ``add`` queues one and a single writer task
inserts whatever is queued in one transaction, so a burst costs one write. A query first
waits for that writer (``flush``), so an operator sees every execution answered before
the query. Rows older than ``audit_retention_s`` are deleted by the runtime's periodic
sweep (``purge``).

Code can hold secrets (a password in a connection string, a token in a header): it is
stored, since an audit that cannot say what ran is of little use, but answered only when
the query asks for it (``include_code``); ``code_bytes`` is always answered.

Pages are newest first, by (started, id), with an opaque cursor naming the last row of
the page: stable while new rows arrive and old ones are purged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import defer

from server import clock
from server.errors import DataExecError, ValidationError
from server.store.database import StoreDatabase
from server.store.models import AuditRow
from server.telemetry.logs import REQUEST_ID

if TYPE_CHECKING:
    from server.sessions.execution import ExecutionRequest

log = logging.getLogger(__name__)

STATUSES = ("success", "error", "disconnected")
LANGUAGES = ("python", "sql")
ERROR_TYPE = re.compile(r"^[A-Z][A-Z_]{1,63}$")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# A page with code bodies holds them all in memory: fewer rows (code is up to max_body_bytes).
MAX_LIMIT_WITH_CODE = 50
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclass
class AuditEntry:
    """One execution request, filled in as it goes; ``answered`` takes the success."""

    tenant: str
    session_id: str | None
    kind: str
    language: str
    code: str
    params: dict[str, Any] | None
    request_id: str | None
    pool: str | None = None
    started: dt.datetime = field(default_factory=clock.now)
    status: str = "success"
    error_type: str | None = None
    execution_count: int | None = None
    duration_ms: float = 0.0
    row_count: int | None = None
    cache_key: str | None = None
    kernel_replaced: str | None = None

    def answered(self, result: dict[str, Any]) -> dict[str, Any]:
        """Note what a successful answer says; return it unchanged."""
        self.execution_count = result.get("execution_count")
        self.row_count = (result.get("metadata") or {}).get("row_count")
        self.cache_key = result.get("cache_key")
        self.kernel_replaced = result.get("replaced_reason")
        return result

    def failed(self, error: BaseException) -> None:
        """Note the error the request answered (INTERNAL for one of ours we did not type)."""
        self.status = "error"
        if isinstance(error, DataExecError):
            self.error_type = error.type
            self.execution_count = error.extra.get("execution_count")
            self.kernel_replaced = error.extra.get("replaced_reason")
        else:
            self.error_type = DataExecError.type

    def row(self) -> dict[str, Any]:
        """Its columns in the store (``AuditRow``)."""
        return dict(
            started=self.started,
            tenant=self.tenant,
            session_id=self.session_id,
            execution_count=self.execution_count,
            kind=self.kind,
            language=self.language,
            pool=self.pool,
            status=self.status,
            error_type=self.error_type,
            duration_ms=round(self.duration_ms, 3),
            row_count=self.row_count,
            cache_key=self.cache_key,
            kernel_replaced=self.kernel_replaced,
            request_id=self.request_id,
            code_bytes=len(self.code.encode()),
            code=self.code,
            params=self.params,
        )


@dataclass(frozen=True)
class AuditQuery:
    """The filters and page of ``GET /audit``; ``parse`` validates them from strings."""

    tenant: str | None = None
    session_id: str | None = None
    since: dt.datetime | None = None  # inclusive
    until: dt.datetime | None = None  # exclusive
    status: str | None = None  # a status, or an error type
    language: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: tuple[dt.datetime, int] | None = None
    include_code: bool = False

    # The query parameters, by the name they have in the URL.
    PARAMETERS = (
        *("tenant", "session_id", "since", "until", "status", "language"),
        *("limit", "cursor", "include_code"),
    )

    @classmethod
    def parse(cls, args: Mapping[str, str]) -> AuditQuery:
        """The query of URL parameters ``args``; ValidationError naming what is wrong."""
        unknown = sorted(set(args) - set(cls.PARAMETERS))
        if unknown:
            raise ValidationError(
                f"unknown query parameter(s): {', '.join(unknown)}", unknown_fields=unknown
            )
        status = args.get("status")
        if status is not None and status not in STATUSES and not ERROR_TYPE.match(status):
            raise ValidationError(
                f"status must be one of {', '.join(STATUSES)} or an error type such as TIMEOUT"
            )
        language = args.get("language")
        if language is not None and language not in LANGUAGES:
            raise ValidationError(f"language must be one of {', '.join(LANGUAGES)}")
        include_code = _flag(args.get("include_code", "false"), "include_code")
        limit = _limit(args.get("limit"), MAX_LIMIT_WITH_CODE if include_code else MAX_LIMIT)
        since, until = _time(args, "since"), _time(args, "until")
        if since is not None and until is not None and since >= until:
            raise ValidationError("since must be before until")
        return cls(
            tenant=args.get("tenant"),
            session_id=args.get("session_id"),
            since=since,
            until=until,
            status=status,
            language=language,
            limit=limit,
            cursor=None if args.get("cursor") is None else decode_cursor(args["cursor"]),
            include_code=include_code,
        )

    def where(self) -> list[sa.ColumnElement[bool]]:
        """The SQL conditions of the filters and the cursor."""
        conditions: list[sa.ColumnElement[bool]] = []
        if self.tenant is not None:
            conditions.append(AuditRow.tenant == self.tenant)
        if self.session_id is not None:
            conditions.append(AuditRow.session_id == self.session_id)
        if self.since is not None:
            conditions.append(AuditRow.started >= self.since)
        if self.until is not None:
            conditions.append(AuditRow.started < self.until)
        if self.status in STATUSES:
            conditions.append(AuditRow.status == self.status)
        elif self.status is not None:
            conditions.append(AuditRow.error_type == self.status)
        if self.language is not None:
            conditions.append(AuditRow.language == self.language)
        if self.cursor is not None:
            at, row_id = self.cursor
            conditions.append(
                sa.or_(AuditRow.started < at, sa.and_(AuditRow.started == at, AuditRow.id < row_id))
            )
        return conditions


def _time(args: Mapping[str, str], name: str) -> dt.datetime | None:
    """An ISO 8601 time parameter as aware UTC (a time without a zone is taken as UTC)."""
    text = args.get(name)
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValidationError(
            f"{name} must be an ISO 8601 time such as 2026-12-06T09:15:00Z, not {text[:64]!r}"
        ) from None
    return clock.utc(value).astimezone(dt.UTC)


def _limit(text: str | None, most: int) -> int:
    if text is None:
        return min(DEFAULT_LIMIT, most)
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise ValidationError(
            f"limit must be an integer from 1 to {most}"
            + (" with include_code" if most == MAX_LIMIT_WITH_CODE else "")
        )
    return int(text)


def _flag(text: str, name: str) -> bool:
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise ValidationError(f"{name} must be true or false")


def encode_cursor(started: dt.datetime, row_id: int) -> str:
    """The opaque cursor after the row (``started``, ``row_id``)."""
    text = f"{clock.utc(started).isoformat()}|{row_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, int]:
    """The row a cursor of ``encode_cursor`` names; ValidationError for anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, row_id = text.partition("|")
        # Stored times are compared as UTC (SQLite keeps them without a zone).
        return clock.utc(dt.datetime.fromisoformat(at)).astimezone(dt.UTC), int(row_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValidationError("cursor is not one this endpoint gave") from None


def describe(row: AuditRow, include_code: bool) -> dict[str, Any]:
    """A row as ``GET /audit`` answers it; the code and params only if asked for."""
    answer = {
        "id": row.id,
        "started": clock.iso(row.started, "milliseconds"),
        "tenant": row.tenant,
        "session_id": row.session_id,
        "execution_count": row.execution_count,
        "kind": row.kind,
        "language": row.language,
        "pool": row.pool,
        "status": row.status,
        "error_type": row.error_type,
        "duration_ms": row.duration_ms,
        "row_count": row.row_count,
        "cache_key": row.cache_key,
        "kernel_replaced": row.kernel_replaced,
        "request_id": row.request_id,
        "code_bytes": row.code_bytes,
    }
    if include_code:
        answer.update(code=row.code, params=row.params)
    return answer


class AuditLog:
    """Writes audit entries behind the answers, pages through them, purges old ones."""

    def __init__(self, store: StoreDatabase, retention_s: float) -> None:
        self.store = store
        self.retention_s = retention_s
        self._pending: list[AuditEntry] = []
        self._writer: asyncio.Future[None] | None = None
        # Entries added and entries written (or given up on), for flush.
        self._added = self._done = 0
        self._progress = asyncio.Condition()

    @contextlib.contextmanager
    def entry(
        self,
        tenant: str,
        session_id: str | None,
        request: ExecutionRequest,
        pool: str | None = None,
    ) -> Iterator[AuditEntry]:
        """An entry for ``request``, added when the block ends however it ends (an error
        passes through, noted; a cancelled request is ``disconnected``). The request id is
        that of the HTTP request whose task runs the block (for the cells of an imported
        notebook, the request that imported it)."""
        entry = AuditEntry(
            tenant=tenant,
            session_id=session_id,
            kind=request.kind,
            language=request.language,
            code=request.code,
            params=request.params,
            request_id=REQUEST_ID.get(),
            pool=pool,
        )
        began = time.perf_counter()
        try:
            yield entry
        except asyncio.CancelledError:
            entry.status = "disconnected"
            raise
        except BaseException as exc:
            entry.failed(exc)
            raise
        finally:
            entry.duration_ms = (time.perf_counter() - began) * 1000
            self.add(entry)

    def add(self, entry: AuditEntry) -> None:
        """Queue ``entry`` for the store (never blocks, never raises into the request)."""
        self._pending.append(entry)
        self._added += 1
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_pending())

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._insert, batch)
            except Exception:  # the audit must not fail requests; the log says what was lost
                log.exception("audit: %d entries could not be written", len(batch))
            async with self._progress:
                self._done += len(batch)
                self._progress.notify_all()

    def _insert(self, batch: list[AuditEntry]) -> None:
        with self.store.session() as db, db.begin():
            db.execute(sa.insert(cast(sa.Table, AuditRow.__table__)), [e.row() for e in batch])

    async def flush(self) -> None:
        """Wait until every entry added so far is in the store (not for later ones: under
        steady traffic the writer never rests)."""
        added = self._added
        async with self._progress:
            await self._progress.wait_for(lambda: self._done >= added)

    async def page(self, query: AuditQuery) -> dict[str, Any]:
        """One page of entries, newest first, and the cursor of the next (None: the last)."""
        await self.flush()
        rows = await asyncio.to_thread(self._select, query)
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        last = rows[-1] if more else None
        return {
            "executions": [describe(row, query.include_code) for row in rows],
            "next_cursor": None if last is None else encode_cursor(last.started, last.id),
            "retention_s": self.retention_s,
        }

    def _select(self, query: AuditQuery) -> list[AuditRow]:
        options = [] if query.include_code else [defer(AuditRow.code), defer(AuditRow.params)]
        with self.store.session() as db:
            return list(
                db.scalars(
                    sa.select(AuditRow)
                    .options(*options)
                    .where(*query.where())
                    .order_by(AuditRow.started.desc(), AuditRow.id.desc())
                    .limit(query.limit + 1)
                )
            )

    async def purge(self) -> int:
        """Delete the rows older than the retention; how many went."""
        cutoff = clock.now() - dt.timedelta(seconds=self.retention_s)
        return await asyncio.to_thread(self._delete_before, cutoff)

    def _delete_before(self, cutoff: dt.datetime) -> int:
        with self.store.session() as db, db.begin():
            result = db.execute(sa.delete(AuditRow).where(AuditRow.started < cutoff))
            return int(getattr(result, "rowcount", 0) or 0)
