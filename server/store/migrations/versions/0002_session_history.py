"""Sessions that outlive kernels and servers: full step records and named frames.

Adds to ``executions`` what a notebook export and a replay need (the cell as run, its
outputs, the error, the frames restored before it), ``sessions.lost_reason``, and the
``session_frames`` table: a session's named DataFrames with their checkpoint keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UUID = sa.String(36)
NAME = sa.String(128)
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("sessions", sa.Column("lost_reason", sa.Text(), nullable=True))
    op.add_column(
        "executions",
        sa.Column("kind", sa.String(32), nullable=False, server_default="execute"),
    )
    op.add_column("executions", sa.Column("cell", sa.Text(), nullable=True))
    op.add_column("executions", sa.Column("error", sa.JSON(), nullable=True))
    op.add_column("executions", sa.Column("restored_frames", sa.JSON(), nullable=True))
    op.add_column("executions", sa.Column("outputs", sa.JSON(), nullable=True))
    op.create_table(
        "session_frames",
        sa.Column("session_id", UUID, nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("cache_key", UUID, nullable=True),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("columns", sa.JSON(), nullable=False),
        sa.Column("dtypes", sa.JSON(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("updated", TIME, nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("session_id", "name", name="pk_session_frames"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name="fk_session_frames_session_id_sessions",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("session_frames")
    with op.batch_alter_table("executions") as batch:
        for column in ("outputs", "restored_frames", "error", "cell", "kind"):
            batch.drop_column(column)
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("lost_reason")
