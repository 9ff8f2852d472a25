"""Sessions in the store: what lets a session outlive its kernels and the server itself.

One row per session (``sessions``), one per step (``executions``) and one per named frame
(``session_frames``). The session manager keeps live state in memory and writes here after
each step (off the answer's path); after a restart it finds sessions here again.

A deleted or expired session keeps its rows (and its keys live on to their own TTL) until
its id is used again or ``purge`` removes it with the keys' TTL; ``find`` sees only live
ones.

Synchronous (SQLAlchemy); the async caller runs these in an executor.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from server.sessions.history import ExecutionRecord, FrameRecord
from server.store.database import ExecutionRow, FrameRow, SessionRow, Store


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class StoredSession:
    """A session as the store has it."""

    id: str
    tenant: str
    client_id: str
    pool: str
    created: dt.datetime
    last_activity: dt.datetime
    execution_count: int
    lost_reason: str | None
    frames: list[FrameRecord]


class SessionStore:
    """Reads and writes sessions, their steps and their frames."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, session_id: str, tenant: str, client_id: str, pool: str) -> None:
        """A new active session row, replacing an ended or expired one with the same id
        (the caller has checked that no live session has it)."""
        now = dt.datetime.now(dt.UTC)
        with self.store.session() as db, db.begin():
            db.execute(
                sa.delete(SessionRow).where(
                    SessionRow.tenant == tenant, SessionRow.client_id == client_id
                )
            )
            db.add(
                SessionRow(
                    id=session_id,
                    tenant=tenant,
                    client_id=client_id,
                    pool=pool,
                    created=now,
                    last_activity=now,
                    execution_count=0,
                    state="active",
                )
            )

    def _stored(self, db: sa.orm.Session, row: SessionRow) -> StoredSession:
        frames = db.scalars(
            sa.select(FrameRow).where(FrameRow.session_id == row.id).order_by(FrameRow.name)
        )
        return StoredSession(
            id=row.id,
            tenant=row.tenant,
            client_id=row.client_id,
            pool=row.pool,
            created=_utc(row.created),
            last_activity=_utc(row.last_activity),
            execution_count=row.execution_count,
            lost_reason=row.lost_reason,
            frames=[
                FrameRecord(
                    name=f.name,
                    rows=f.rows,
                    columns=f.columns,
                    dtypes=f.dtypes,
                    bytes=f.bytes,
                    cache_key=f.cache_key,
                    updated=_utc(f.updated),
                    note=f.note,
                )
                for f in frames
            ],
        )

    def find(self, tenant: str, client_id: str, idle_limit_s: float) -> StoredSession | None:
        """The tenant's active session with this id, unless idle past ``idle_limit_s``."""
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=idle_limit_s)
        with self.store.session() as db:
            row = db.scalar(
                sa.select(SessionRow).where(
                    SessionRow.tenant == tenant,
                    SessionRow.client_id == client_id,
                    SessionRow.state == "active",
                    SessionRow.last_activity >= since,
                )
            )
            return None if row is None else self._stored(db, row)

    def active_ids(self, tenant: str, idle_limit_s: float) -> list[str]:
        """Client ids of the tenant's active sessions, oldest first."""
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=idle_limit_s)
        with self.store.session() as db:
            return list(
                db.scalars(
                    sa.select(SessionRow.client_id)
                    .where(
                        SessionRow.tenant == tenant,
                        SessionRow.state == "active",
                        SessionRow.last_activity >= since,
                    )
                    .order_by(SessionRow.created)
                )
            )

    def end(self, session_id: str, state: str) -> None:
        """Mark a session ``deleted`` or ``expired``: unknown from now on."""
        with self.store.session() as db, db.begin():
            db.execute(sa.update(SessionRow).where(SessionRow.id == session_id).values(state=state))

    def record_step(
        self,
        session_id: str,
        record: ExecutionRecord,
        frames: list[FrameRecord] | None,
        lost_reason: str | None,
    ) -> None:
        """Write one step, the session's counters and (when a pass ran) its frames."""
        now = dt.datetime.now(dt.UTC)
        with self.store.session() as db, db.begin():
            db.add(
                ExecutionRow(
                    session_id=session_id,
                    execution_count=record.execution_count,
                    language=record.language,
                    kind=record.kind,
                    code=record.code,
                    cell=record.cell,
                    result_name=record.result_name,
                    status=record.status,
                    error_type=record.error_type,
                    error=record.error,
                    started=record.started,
                    elapsed_ms=None if record.elapsed_ms is None else round(record.elapsed_ms),
                    row_count=record.row_count,
                    cache_key=record.cache_key,
                    kernel_replaced=record.kernel_replaced,
                    restored_frames=record.restored_frames,
                    outputs=record.outputs,
                )
            )
            db.execute(
                sa.update(SessionRow)
                .where(SessionRow.id == session_id)
                .values(
                    # Steps are recorded in order, under the session's lock.
                    execution_count=record.execution_count,
                    last_activity=now,
                    lost_reason=lost_reason,
                )
            )
            if frames is not None:
                self._replace_frames(db, session_id, frames)

    def _replace_frames(
        self, db: sa.orm.Session, session_id: str, frames: list[FrameRecord]
    ) -> None:
        db.execute(sa.delete(FrameRow).where(FrameRow.session_id == session_id))
        db.add_all(
            FrameRow(
                session_id=session_id,
                name=f.name,
                cache_key=f.cache_key,
                rows=f.rows,
                columns=f.columns,
                dtypes=f.dtypes,
                bytes=f.bytes,
                updated=f.updated,
                note=f.note,
            )
            for f in frames
        )

    def history(self, session_id: str) -> list[ExecutionRecord]:
        """The session's steps in order."""
        with self.store.session() as db:
            rows = db.scalars(
                sa.select(ExecutionRow)
                .where(ExecutionRow.session_id == session_id)
                .order_by(ExecutionRow.execution_count, ExecutionRow.id)
            )
            return [
                ExecutionRecord(
                    execution_count=r.execution_count,
                    language=r.language,
                    code=r.code,
                    cell=r.cell or r.code,
                    started=_utc(r.started),
                    kind=r.kind,
                    result_name=r.result_name,
                    status=r.status,
                    error_type=r.error_type,
                    error=r.error,
                    elapsed_ms=r.elapsed_ms,
                    row_count=r.row_count,
                    cache_key=r.cache_key,
                    kernel_replaced=r.kernel_replaced,
                    restored_frames=r.restored_frames or [],
                    outputs=r.outputs or [],
                )
                for r in rows
            ]

    def purge(self, idle_limit_s: float) -> int:
        """Remove sessions (and their steps and frames) idle past ``idle_limit_s``."""
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=idle_limit_s)
        with self.store.session() as db, db.begin():
            result = db.execute(sa.delete(SessionRow).where(SessionRow.last_activity < since))
            return int(result.rowcount or 0)
