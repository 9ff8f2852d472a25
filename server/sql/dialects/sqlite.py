"""SQLite: a file opened read-only, with a deadline the driver checks while it runs.

The connection is opened ``mode=ro`` with ``PRAGMA query_only``; a progress handler ends a
statement past ``sql_timeout_s`` and ``interrupt()`` cancels one from another thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from server.sql.dialects.generic import Dialect, Guarantees


class SQLite(Dialect):
    name = "sqlite"
    title = "SQLite"
    guarantees = Guarantees(
        read_only="the guard; the file opened mode=ro with PRAGMA query_only",
        timeout="a progress handler ends a statement past sql_timeout_s",
        cancel="sqlite3's interrupt(), on interrupt and timeout",
        arrow_path="sqlite3 rows, up to 65,536 (about 16 MiB) at a time, converted to Arrow",
        profile_source="every row up to 100,000, else a LIMIT sample",
    )

    def make_engine(self) -> Engine:
        database = self.url.database or ""
        readonly = sa.engine.URL.create(
            "sqlite", database=f"file:{database}?mode=ro", query={"uri": "true"}
        )
        engine = sa.create_engine(readonly, pool_size=self.settings.db_pool_size, max_overflow=0)
        timeout_s = self.timeout_s

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.execute("PRAGMA query_only = ON")

        @sa.event.listens_for(engine, "before_cursor_execute")
        def _deadline(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            deadline = time.monotonic() + timeout_s
            conn.connection.dbapi_connection.set_progress_handler(
                lambda: int(time.monotonic() > deadline), 10_000
            )

        return engine

    def tls_in_use(self) -> str:
        return "none (a local file)"

    def cancel_for(self, dbapi_connection: Any) -> Callable[[], None] | None:
        return getattr(dbapi_connection, "interrupt", None)
