"""Alembic environment of the store.

``Store.upgrade()`` passes its open connection in ``config.attributes["connection"]``, so
the migration runs inside the caller's transaction. For the command line (``alembic -x``
is not needed), ``sqlalchemy.url`` in the config is used instead. Offline mode renders SQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from server.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    """Emit the migration SQL for ``sqlalchemy.url`` without connecting."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online(connection: sa.Connection) -> None:
    """Run the migrations on ``connection`` (batch mode on SQLite, which lacks ALTER)."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
elif (conn := config.attributes.get("connection")) is not None:
    run_online(conn)
else:
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        run_online(conn)
    engine.dispose()
