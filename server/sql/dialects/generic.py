"""Any database SQLAlchemy reaches: the generic path, and the base every dialect refines.

A ``Dialect`` knows, for one database URL: the engine and its connections (pool, session
settings, TLS), how to stream a query's rows as Arrow (``read``), how to stop a running
query (``cancel_for``), and what DataExec can promise there (``guarantees``, the table of
docs/databases.md and ``GET /health``). The generic path streams rows through SQLAlchemy
in chunks; it can promise read-only only through the guard and the role the operator
gives, and no timeout or cancel inside the database.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from server.config import Settings
from server.sql.errors import DriverErrors
from server.sql.streaming import ClosingReader, QueryStream, RowBatches

PING_AFTER_IDLE_S = 1.0  # a pooled connection idle longer is pinged before use


@dataclass(frozen=True)
class Guarantees:
    """What DataExec promises on one dialect, in words an operator reads."""

    read_only: str
    timeout: str
    cancel: str
    arrow_path: str
    profile_source: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class Dialect:
    """The generic path; subclasses override what their driver does better."""

    name: ClassVar[str] = "other"
    title: ClassVar[str] = "Other SQLAlchemy dialects"
    guarantees: ClassVar[Guarantees] = Guarantees(
        read_only="the guard, and the role you give DataExec (nothing in the session)",
        timeout="none inside the database; the cell's own timeout still ends the step",
        cancel="none inside the database (the query runs to its end)",
        arrow_path="SQLAlchemy rows, up to 65,536 (about 16 MiB) at a time, converted to Arrow",
        profile_source="every row up to 100,000, else a LIMIT sample",
    )

    def __init__(self, settings: Settings, url: URL) -> None:
        self.settings = settings
        self.url = url
        self.timeout_s = settings.sql_timeout_s
        self.errors = DriverErrors(url, settings.sql_timeout_s, settings.sql_max_row_bytes)
        self.engine = self.make_engine()

    # --- connections ------------------------------------------------------------------

    def connect_args(self) -> dict[str, Any]:
        """Keyword arguments of the driver's ``connect`` (session settings, TLS)."""
        return {}

    def make_engine(self) -> Engine:
        engine = sa.create_engine(
            self.url,
            pool_size=self.settings.db_pool_size,
            max_overflow=0,
            pool_timeout=30,
            connect_args=self.connect_args(),
        )

        # A connection is pinged before use only when it sat idle for PING_AFTER_IDLE_S
        # (as pgbouncer's server_check_delay): one given back a moment ago was just reset
        # by a statement, and a ping on every checkout was a round trip of 70 us in a
        # small query of 1.2 ms. A dead one is replaced (the pool tries again).
        @sa.event.listens_for(engine, "checkin")
        def _idle_since(dbapi_connection: Any, record: Any) -> None:
            record.info["idle_since"] = time.monotonic()

        @sa.event.listens_for(engine, "checkout")
        def _ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            idle_since = record.info.pop("idle_since", None)
            if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
                return  # new, or back from a query just now
            try:
                engine.dialect.do_ping(dbapi_connection)
            except Exception as exc:
                raise sa.exc.DisconnectionError(str(exc)) from exc

        return engine

    def tls_in_use(self) -> str:
        """The TLS mode asked of the driver, as the settings or the URL say it."""
        mode = self.settings.database_ssl_mode or self.url.query.get("sslmode")
        return str(mode) if mode else "driver default"

    def cancel_for(self, dbapi_connection: Any) -> Callable[[], None] | None:
        """How to stop the query running on ``dbapi_connection`` from another thread."""
        return None

    # --- queries ----------------------------------------------------------------------

    def read(
        self, query: str, params: Mapping[str, Any] | None, stream: QueryStream
    ) -> ClosingReader:
        """Run ``query`` (already guarded) and return its batches (in the producer thread)."""
        stack = contextlib.ExitStack()
        try:
            conn = stack.enter_context(self.engine.connect())
            stream.cancel_with(self.cancel_for(conn.connection.dbapi_connection))
            stack.callback(stream.cancel_with, None)
            result = conn.execution_options(stream_results=True).execute(
                sa.text(query), dict(params or {})
            )
            stack.callback(result.close)
            batches = self.batches(result)
        except BaseException as exc:
            stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return ClosingReader(batches.schema, batches, stack)

    def batches(self, result: sa.CursorResult[Any]) -> RowBatches:
        """The rows of ``result`` as record batches (types inferred from the values)."""
        names = list(result.keys())
        return RowBatches(
            result.fetchmany,
            names,
            [None] * len(names),
            max_held_bytes=self.settings.sql_max_result_bytes,
            max_row_bytes=self.settings.sql_max_row_bytes,
        )

    def close(self) -> None:
        self.engine.dispose()
