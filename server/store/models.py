"""The store's tables, one SQLAlchemy model each.

    sessions         one row per (tenant, client id); ``id`` is the internal UUID used on
                     disk and in container labels, never the client's string
    executions       one row per cell run in a session (history, notebook export)
    session_frames   a session's named DataFrames and their checkpoint keys
    cache_entries    the index of cached result frames; ``key`` is the UUID4 a client sees,
                     ``path`` is relative to the cache dir and built from the key only
    cache_evictions  why and when a key went away (so a read of it can say so)
    audit_executions one row per execution request of any tenant, with or without a session
                     (``GET /audit``); kept for ``audit_retention_s``, apart from the
                     sessions so that purging a session keeps its audit trail

The schema changes only through the Alembic migrations in ``server/store/migrations``; a
test checks that these models and the migrations agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so migrations can name what they alter or drop.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# 64-bit ids; SQLite only autoincrements a column declared exactly INTEGER.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# A UUID as its 36-character string (same on every dialect, same as clients see keys).
UUID_LEN = 36
# Client ids match [A-Za-z0-9._-]{1,128}; tenants and pools are config names.
NAME_LEN = 128

CACHE_STATUSES = ("pending", "ready", "failed")


class Base(DeclarativeBase):
    """Declarative base of the store's models."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: sa.DateTime(timezone=True),
        dict[str, Any]: sa.JSON(),
        list[Any]: sa.JSON(),
    }


class SessionRow(Base):
    """A session: the client's (tenant, id) mapped to an internal UUID."""

    __tablename__ = "sessions"
    __table_args__ = (sa.UniqueConstraint("tenant", "client_id"),)

    id: Mapped[str] = mapped_column(sa.String(UUID_LEN), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(NAME_LEN))
    client_id: Mapped[str] = mapped_column(sa.String(NAME_LEN))
    pool: Mapped[str] = mapped_column(sa.String(NAME_LEN))
    created: Mapped[datetime]
    last_activity: Mapped[datetime]
    execution_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    state: Mapped[str] = mapped_column(sa.String(16))
    # Why the session's last kernel went, until a new one serves it.
    lost_reason: Mapped[str | None] = mapped_column(sa.Text)


class ExecutionRow(Base):
    """One cell run in a session; ``kernel_replaced`` says why the kernel was replaced."""

    __tablename__ = "executions"
    __table_args__ = (sa.Index(None, "session_id", "execution_count"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        sa.String(UUID_LEN), sa.ForeignKey("sessions.id", ondelete="CASCADE")
    )
    execution_count: Mapped[int] = mapped_column(sa.Integer)
    language: Mapped[str] = mapped_column(sa.String(16))
    code: Mapped[str] = mapped_column(sa.Text)
    result_name: Mapped[str | None] = mapped_column(sa.String(NAME_LEN))
    status: Mapped[str] = mapped_column(sa.String(16))
    error_type: Mapped[str | None] = mapped_column(sa.String(64))
    started: Mapped[datetime]
    elapsed_ms: Mapped[int | None] = mapped_column(sa.Integer)
    row_count: Mapped[int | None] = mapped_column(sa.BigInteger)
    cache_key: Mapped[str | None] = mapped_column(sa.String(UUID_LEN))
    kernel_replaced: Mapped[str | None] = mapped_column(sa.Text)
    kind: Mapped[str] = mapped_column(sa.String(32), server_default="execute")
    cell: Mapped[str | None] = mapped_column(sa.Text)  # what the kernel ran
    error: Mapped[dict[str, Any] | None]
    restored_frames: Mapped[list[Any] | None]
    outputs: Mapped[list[Any] | None]


class FrameRow(Base):
    """A named DataFrame of a session and its checkpoint key (None: over the budget)."""

    __tablename__ = "session_frames"

    session_id: Mapped[str] = mapped_column(
        sa.String(UUID_LEN), sa.ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(sa.String(NAME_LEN), primary_key=True)
    cache_key: Mapped[str | None] = mapped_column(sa.String(UUID_LEN))
    rows: Mapped[int] = mapped_column(sa.BigInteger)
    columns: Mapped[list[Any]]
    dtypes: Mapped[dict[str, Any]]
    bytes: Mapped[int] = mapped_column(sa.BigInteger)
    updated: Mapped[datetime]
    note: Mapped[str | None] = mapped_column(sa.Text)


class CacheEntry(Base):
    """A cached frame: ``pending`` until written, then ``ready``; ``failed`` reads error."""

    __tablename__ = "cache_entries"
    __table_args__ = (
        sa.CheckConstraint("status IN ('pending', 'ready', 'failed')", name="status"),
        sa.Index(None, "tenant", "last_used"),
        sa.Index(None, "expires"),
        sa.Index(None, "session_id"),
    )

    key: Mapped[str] = mapped_column(sa.String(UUID_LEN), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(NAME_LEN))
    session_id: Mapped[str | None] = mapped_column(
        sa.String(UUID_LEN), sa.ForeignKey("sessions.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(sa.String(16))
    rows: Mapped[int | None] = mapped_column(sa.BigInteger)
    columns: Mapped[list[Any] | None]
    schema: Mapped[list[Any] | None]
    bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    # Relative to the cache dir and derived from ``key`` only, never from user input.
    path: Mapped[str] = mapped_column(sa.String(255))
    created: Mapped[datetime]
    last_used: Mapped[datetime]
    expires: Mapped[datetime]
    # {"code": ..., "sql": ..., "inputs": [keys]}: what produced the frame.
    lineage: Mapped[dict[str, Any]]


class CacheEviction(Base):
    """A cache key that went away, with why (``ttl``, ``quota``, ``deleted``, ...)."""

    __tablename__ = "cache_evictions"
    __table_args__ = (sa.Index(None, "key"), sa.Index(None, "tenant", "at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(sa.String(UUID_LEN))
    tenant: Mapped[str] = mapped_column(sa.String(NAME_LEN))
    reason: Mapped[str] = mapped_column(sa.String(32))
    at: Mapped[datetime]


class AuditRow(Base):
    """One execution request as operators audit it: who, where, how it went, how long.

    ``session_id`` is the client's id (None without a session), not a key of ``sessions``;
    ``status`` is ``success``, ``error`` (with ``error_type``) or ``disconnected``. ``code``
    is kept but only answered when asked for, since code can hold secrets.
    """

    __tablename__ = "audit_executions"
    __table_args__ = (
        sa.Index(None, "started", "id"),
        sa.Index(None, "tenant", "started"),
        sa.Index(None, "tenant", "session_id", "started"),
        sa.Index(None, "status", "started"),
        sa.Index(None, "error_type", "started"),
        sa.Index(None, "language", "started"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    started: Mapped[datetime]
    tenant: Mapped[str] = mapped_column(sa.String(NAME_LEN))
    session_id: Mapped[str | None] = mapped_column(sa.String(NAME_LEN))
    execution_count: Mapped[int | None] = mapped_column(sa.Integer)
    kind: Mapped[str] = mapped_column(sa.String(32))
    language: Mapped[str] = mapped_column(sa.String(16))
    pool: Mapped[str | None] = mapped_column(sa.String(NAME_LEN))
    status: Mapped[str] = mapped_column(sa.String(16))
    error_type: Mapped[str | None] = mapped_column(sa.String(64))
    duration_ms: Mapped[float] = mapped_column(sa.Float)
    row_count: Mapped[int | None] = mapped_column(sa.BigInteger)
    cache_key: Mapped[str | None] = mapped_column(sa.String(UUID_LEN))
    kernel_replaced: Mapped[str | None] = mapped_column(sa.String(64))
    request_id: Mapped[str | None] = mapped_column(sa.String(64))
    code_bytes: Mapped[int] = mapped_column(sa.Integer)
    code: Mapped[str] = mapped_column(sa.Text)
    params: Mapped[dict[str, Any] | None]
