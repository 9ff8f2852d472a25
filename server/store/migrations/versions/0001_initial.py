"""The first tables: sessions, executions, cache_entries, cache_evictions.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out here rather than imported: a migration must not change when the models do.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UUID = sa.String(36)
NAME = sa.String(128)
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", UUID, nullable=False),
        sa.Column("tenant", NAME, nullable=False),
        sa.Column("client_id", NAME, nullable=False),
        sa.Column("pool", NAME, nullable=False),
        sa.Column("created", TIME, nullable=False),
        sa.Column("last_activity", TIME, nullable=False),
        sa.Column("execution_count", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        sa.UniqueConstraint("tenant", "client_id", name="uq_sessions_tenant_client_id"),
    )
    op.create_table(
        "executions",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("session_id", UUID, nullable=False),
        sa.Column("execution_count", sa.Integer(), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("result_name", NAME, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_type", sa.String(64), nullable=True),
        sa.Column("started", TIME, nullable=False),
        sa.Column("elapsed_ms", sa.Integer(), nullable=True),
        sa.Column("row_count", sa.BigInteger(), nullable=True),
        sa.Column("cache_key", UUID, nullable=True),
        sa.Column("kernel_replaced", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_executions"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name="fk_executions_session_id_sessions",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_executions_session_id_execution_count",
        "executions",
        ["session_id", "execution_count"],
    )
    op.create_table(
        "cache_entries",
        sa.Column("key", UUID, nullable=False),
        sa.Column("tenant", NAME, nullable=False),
        sa.Column("session_id", UUID, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=True),
        sa.Column("columns", sa.JSON(), nullable=True),
        sa.Column("schema", sa.JSON(), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("path", sa.String(255), nullable=False),
        sa.Column("created", TIME, nullable=False),
        sa.Column("last_used", TIME, nullable=False),
        sa.Column("expires", TIME, nullable=False),
        sa.Column("lineage", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_cache_entries"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name="fk_cache_entries_session_id_sessions",
            ondelete="SET NULL",
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'ready', 'failed')", name="ck_cache_entries_status"
        ),
    )
    op.create_index("ix_cache_entries_tenant_last_used", "cache_entries", ["tenant", "last_used"])
    op.create_index("ix_cache_entries_expires", "cache_entries", ["expires"])
    op.create_index("ix_cache_entries_session_id", "cache_entries", ["session_id"])
    op.create_table(
        "cache_evictions",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("key", UUID, nullable=False),
        sa.Column("tenant", NAME, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cache_evictions"),
    )
    op.create_index("ix_cache_evictions_key", "cache_evictions", ["key"])
    op.create_index("ix_cache_evictions_tenant_at", "cache_evictions", ["tenant", "at"])


def downgrade() -> None:
    op.drop_table("cache_evictions")
    op.drop_table("cache_entries")
    op.drop_table("executions")
    op.drop_table("sessions")
