"""PostgreSQL: COPY into Arrow for results, psycopg2 for the rest, TLS for every connection.

Results of queries without parameters come as COPY, with no Python object per row: as
CSV parsed by pyarrow when every column has a common type and CSV reads them faster
(``postgresql_csv``, nearest the database's own pace on flights), else through ADBC, which
reads COPY BINARY straight into Arrow (both measured here 4x faster than psycopg2 +
``pandas.read_sql`` on flights). Queries with
``:name`` parameters, ``/schema`` and profiles go through SQLAlchemy on psycopg2, the
driver DataExec ships (a bare ``postgresql://`` would mean psycopg 3 to SQLAlchemy 2.1;
``server.config`` names the driver).

Every query runs wrapped so that PostgreSQL itself refuses a row over
``sql_max_row_bytes`` (``pg_column_size`` of the whole row, or on the CSV path of its
variable-width values, checked as rows are produced):
a ``repeat('x', 500000000)`` fails in the database instead of arriving whole in libpq's
buffer, then in Arrow (the check costs no measurable time on flights). A value that a table
keeps compressed counts at its compressed size there; the Arrow side checks again
(``streaming.check_rows``).

Every connection is read-only with a ``statement_timeout``, both session defaults set in
the startup options, so the ``DISCARD ALL`` that resets a connection before it returns to
a pool (no setting, temp table or prepared statement of one tenant survives into another's
query) keeps them. TLS settings (``database_ssl_*``) become libpq's ``sslmode``,
``sslrootcert``, ``sslcert`` and ``sslkey`` on both drivers.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, urlencode

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from server.config import Settings
from server.sql import arrow_types
from server.sql.dialects import postgresql_csv
from server.sql.dialects.generic import Dialect, Guarantees
from server.sql.errors import ROW_TOO_LARGE, is_connection_failure
from server.sql.streaming import ClosingReader, QueryStream

log = logging.getLogger(__name__)

# A statement that is a query: SELECT, WITH, VALUES or TABLE after comments and parentheses.
_QUERY = re.compile(r"(?:\s+|--[^\n]*\n|/\*.*?\*/|\()*(?:select|with|values|table)\b", re.I | re.S)


class PostgreSQL(Dialect):
    name = "postgresql"
    title = "PostgreSQL"
    guarantees = Guarantees(
        read_only="the guard; default_transaction_read_only on every connection; the role",
        timeout="statement_timeout on every connection (sql_timeout_s)",
        cancel="the driver's cancel request (ADBC, psycopg2), on interrupt and timeout",
        arrow_path=(
            "COPY CSV parsed by pyarrow for results of mostly integers, text, booleans and dates; "
            "ADBC (COPY BINARY into Arrow) for other types, results of mostly floats or "
            "timestamps and LIMITs up to 10,000 rows; queries with parameters: psycopg2 rows"
        ),
        profile_source="pg_stats after a recent ANALYZE, else TABLESAMPLE, else every row",
    )

    def __init__(self, settings: Settings, url: URL) -> None:
        super().__init__(settings, url)
        self._adbc: queue.LifoQueue[Any] = queue.LifoQueue()
        # Threads kept for the CSV path's COPYs (one per pooled connection at most): a new
        # thread per query cost 100 us of a 1 ms small query, a kept one 50.
        self.copies = ThreadPoolExecutor(settings.db_pool_size, thread_name_prefix="copy")
        self._adbc_uri = self._libpq_uri()

    def tls(self) -> dict[str, str]:
        """libpq's TLS parameters from the settings (empty ones left to the URL)."""
        s = self.settings
        given = {
            "sslmode": s.database_ssl_mode,
            "sslrootcert": s.database_ssl_root_cert,
            "sslcert": s.database_ssl_cert,
            "sslkey": s.database_ssl_key,
        }
        return {key: value for key, value in given.items() if value}

    def _startup_options(self) -> str:
        timeout_ms = int(self.timeout_s * 1000)
        return (
            "-c default_transaction_read_only=on -c standard_conforming_strings=on "
            f"-c statement_timeout={timeout_ms} "
            f"-c idle_in_transaction_session_timeout={timeout_ms}"
        )

    def connect_args(self) -> dict[str, Any]:
        return {"options": self._startup_options(), "connect_timeout": 10, **self.tls()}

    def make_engine(self) -> Engine:
        engine = super().make_engine()

        @sa.event.listens_for(engine, "reset")
        def _reset(dbapi_connection: Any, record: Any, reset_state: Any) -> None:
            # Rollback first (SQLAlchemy's default), then forget everything the session made.
            dbapi_connection.rollback()
            dbapi_connection.autocommit = True
            with dbapi_connection.cursor() as cursor:
                cursor.execute("DISCARD ALL")
            dbapi_connection.autocommit = False

        return engine

    def cancel_for(self, dbapi_connection: Any) -> Callable[[], None] | None:
        return getattr(dbapi_connection, "cancel", None)

    # --- ADBC ---------------------------------------------------------------------------

    def _libpq_uri(self) -> str | None:
        try:
            import adbc_driver_postgresql  # noqa: F401
        except ImportError:
            log.warning(
                "adbc-driver-postgresql is missing: PostgreSQL results go through psycopg2 (slower)"
            )
            return None
        # The URL's query holds libpq's own parameters (psycopg2 passes them on): ADBC gets
        # them too, with DataExec's TLS settings and session options over them.
        url = self.url.set(drivername="postgresql", query={})
        query = {k: v for k, v in self.url.query.items() if isinstance(v, str)}
        query.update(self.tls(), options=self._startup_options(), connect_timeout="10")
        # libpq decodes %20, not '+', in URI parameters.
        return url.render_as_string(hide_password=False) + "?" + urlencode(query, quote_via=quote)

    @contextlib.contextmanager
    def _adbc_connection(self, fresh: bool = False) -> Iterator[tuple[Any, bool]]:
        """A pooled (or, with ``fresh``, a new) ADBC connection and whether it was pooled.

        It goes back to the pool, reset, only when its user finished without an error.
        """
        import adbc_driver_postgresql.dbapi as adbc_pg

        conn, pooled = None, False
        if not fresh:
            with contextlib.suppress(queue.Empty):
                conn, pooled = self._adbc.get_nowait(), True
        if conn is None:
            conn = adbc_pg.connect(self._adbc_uri, autocommit=True)
        healthy = False
        try:
            yield conn, pooled
            healthy = True
        finally:
            if healthy and self._adbc.qsize() < self.settings.db_pool_size:
                try:
                    with conn.cursor() as cursor:
                        cursor.execute("DISCARD ALL")
                    self._adbc.put(conn)
                except Exception:
                    conn.close()
            else:
                with contextlib.suppress(Exception):
                    conn.close()

    def bounded(self, query: str) -> str:
        """``query`` (the guard's text of one statement) wrapped so that a row over
        ``sql_max_row_bytes`` fails in the database, as ``ROW_TOO_LARGE`` says.

        Only a query is wrapped: anything else (which the guard never lets through) reaches
        the database as it is, and meets the read-only transaction.
        """
        if not _QUERY.match(query):
            return query
        cap = int(self.settings.sql_max_row_bytes)
        # The CASE's cast runs only for a row over the cap (not folded: it is not constant).
        return (
            f"SELECT dataexec_row.* FROM (\n{query}\n) AS dataexec_row "
            f"WHERE CASE WHEN pg_column_size(dataexec_row.*) > {cap} "
            f"THEN ('{ROW_TOO_LARGE} ' || pg_column_size(dataexec_row.*))::int = 0 "
            "ELSE true END"
        )

    def read(
        self, query: str, params: Mapping[str, Any] | None, stream: QueryStream
    ) -> ClosingReader:
        # A query (its columns can be asked for) whose result may be large enough for CSV
        if not params and _QUERY.match(query) and not postgresql_csv.few_rows(query):
            csv = self._read_csv(query, stream)
            if csv is not None:
                return csv
        query = self.bounded(query)
        if self._adbc_uri is None or params:
            return super().read(query, params, stream)
        # A pooled connection may have died with a database restart: then try once more on
        # a new one, so the first query after an outage does not fail for nothing.
        for fresh in (False, True):
            stack = contextlib.ExitStack()
            conn, pooled = stack.enter_context(self._adbc_connection(fresh))
            cursor = stack.enter_context(conn.cursor())
            stream.cancel_with(cursor.adbc_cancel)
            stack.callback(stream.cancel_with, None)
            try:
                cursor.execute(query)
                reader = cursor.fetch_record_batch()
            except BaseException as exc:
                stack.__exit__(type(exc), exc, exc.__traceback__)
                if not (pooled and is_connection_failure(str(exc))):
                    raise
                continue
            schema, convert = arrow_types.plain(reader.schema)
            batches = reader if convert is None else map(convert, reader)
            return ClosingReader(schema, batches, stack, close_first=reader.close)
        raise AssertionError("unreachable")

    def _read_csv(self, query: str, stream: QueryStream) -> ClosingReader | None:
        cap = int(self.settings.sql_max_row_bytes)
        # A connection given back within PING_AFTER_IDLE_S is not pinged: one the database
        # dropped meanwhile (a restart) fails at the describe, before anything ran. The
        # pool's other connections are then as old: it is replaced, and the query tried once
        # more on a new connection.
        for retry in (False, True):
            raw = self.engine.raw_connection()
            try:
                return postgresql_csv.read(raw, query, stream, cap, self.copies)
            except Exception as exc:
                if retry or not is_connection_failure(str(exc)):
                    raise
                self.engine.dispose(close=False)
        raise AssertionError("unreachable")

    def close(self) -> None:
        super().close()
        self.copies.shutdown(wait=False)
        while not self._adbc.empty():
            with contextlib.suppress(Exception):
                self._adbc.get_nowait().close()
