"""The store database: DataExec's own, not the data (see ``server.store``).

It lives in its own database (``store_url``; in the embedded default the ``dataexec_store``
database of the same PostgreSQL server, which the query role cannot connect to), so
``sql()`` can never read another tenant's history or cache keys. ``upgrade()`` runs the
Alembic migrations to head and is a no-op when the store is current.

The API is synchronous (SQLAlchemy's engine); async callers run it in a thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


# Any constant: serialises concurrent upgrades of one PostgreSQL store.
_UPGRADE_LOCK = 0x44617461457865


class StoreDatabase:
    """The store's engine; ``upgrade()`` brings its schema to the newest migration."""

    def __init__(self, url: str | URL) -> None:
        url = sa.make_url(url)
        if url.get_backend_name() == "sqlite":
            self.engine = sa.create_engine(url, connect_args={"check_same_thread": False})
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True)

    def alembic_config(self) -> Config:
        """An Alembic config built in code: no alembic.ini at run time."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        return config

    def upgrade(self) -> None:
        """Run the migrations to head in one transaction; a no-op when already current."""
        config = self.alembic_config()
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_UPGRADE_LOCK)))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def session(self) -> Session:
        """An ORM session; objects stay readable after commit (``expire_on_commit=False``)."""
        return Session(self.engine, expire_on_commit=False)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
