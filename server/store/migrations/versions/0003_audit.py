"""The audit trail: one row per execution request, for operators (``GET /audit``).

A table of its own rather than more columns on ``executions``: those rows are a session's
history and go with it (``ON DELETE CASCADE`` when the session is purged), cover only steps
in a session, and the notebook export needs them whole; audit rows cover every execution
(without a session too), name the tenant and the request, and live for
``audit_retention_s``. Indexed for the filters of ``GET /audit``, newest first.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out here rather than imported: a migration must not change when the models do.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UUID = sa.String(36)
NAME = sa.String(128)
TIME = sa.DateTime(timezone=True)
TABLE = "audit_executions"
INDEXES = {
    "started_id": ["started", "id"],
    "tenant_started": ["tenant", "started"],
    "tenant_session_id_started": ["tenant", "session_id", "started"],
    "status_started": ["status", "started"],
    "error_type_started": ["error_type", "started"],
    "language_started": ["language", "started"],
}


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("started", TIME, nullable=False),
        sa.Column("tenant", NAME, nullable=False),
        sa.Column("session_id", NAME, nullable=True),
        sa.Column("execution_count", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("pool", NAME, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_type", sa.String(64), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=True),
        sa.Column("cache_key", UUID, nullable=True),
        sa.Column("kernel_replaced", sa.String(64), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("code_bytes", sa.Integer(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=f"pk_{TABLE}"),
    )
    for name, columns in INDEXES.items():
        op.create_index(f"ix_{TABLE}_{name}", TABLE, columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(f"ix_{TABLE}_{name}", table_name=TABLE)
    op.drop_table(TABLE)
