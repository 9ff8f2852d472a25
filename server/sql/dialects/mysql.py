"""MariaDB and MySQL through mysqlclient: streamed rows typed from the result's metadata.

Driver: mysqlclient (``MySQLdb``, C, on MariaDB Connector/C), with an unbuffered cursor
(``SSCursor``) read ``fetchmany`` by ``fetchmany`` into Arrow arrays typed from the
result's field types. Measured here on flights (336,776 rows, 19 columns; bench/databases.py):
a ``sql()`` step into a kernel frame takes 2.7 s (0.70-0.78 of ``pandas.read_sql`` on the
same driver, 0.35 of PyMySQL's), and the server's peak memory grows by about 160 MiB for
the whole table (PostgreSQL's ADBC path: about 57 MiB): each 65,536-row chunk is Python
objects before it is Arrow. connectorx was faster (0.65 s) but holds the GIL while it
waits on the server, buffers the whole result in its own queue and takes no client
certificate.

Every connection gets, when it opens: ``SET SESSION TRANSACTION READ ONLY`` (a write fails
with error 1792 even if the role could write), the statement limit (MariaDB's
``max_statement_time`` in seconds, MySQL's ``max_execution_time`` in milliseconds) and
``time_zone = '+00:00'`` (so ``TIMESTAMP`` columns arrive in UTC). A query is cancelled by
``KILL QUERY <its connection id>`` sent on a connection of its own; the interrupted
connection is then dropped, never pooled again. TLS settings (``database_ssl_*``) become
the driver's ``ssl_mode`` and ``ssl`` (CA, certificate, key).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from server.sql.dialects.generic import Dialect, Guarantees
from server.sql.streaming import ClosingReader, QueryStream, RowBatches

log = logging.getLogger(__name__)

# libpq's sslmode words (DataExec's settings) in MariaDB Connector/C's ssl_mode.
SSL_MODES = {
    "disable": "DISABLED",
    "allow": "PREFERRED",
    "prefer": "PREFERRED",
    "require": "REQUIRED",
    "verify-ca": "VERIFY_CA",
    "verify-full": "VERIFY_IDENTITY",
}
# MySQL's field types (MySQLdb.constants.FIELD_TYPE) by what they become in Arrow.
_INTEGERS = {1, 2, 3, 8, 9, 13}  # TINY, SHORT, LONG, LONGLONG, INT24, YEAR
_FLOATS = {4, 5}  # FLOAT, DOUBLE
_DECIMALS = {0, 246}  # DECIMAL, NEWDECIMAL
_TEXT = {15, 247, 248, 245}  # VARCHAR, ENUM, SET, JSON
_BIT, _DATE, _DATETIME, _TIMESTAMP, _TIME, _NULL, _GEOMETRY = 16, 10, 12, 7, 11, 6, 255
_UNSIGNED = 32  # MySQLdb.constants.FLAG.UNSIGNED


class MySQL(Dialect):
    name = "mysql"
    title = "MariaDB and MySQL"
    guarantees = Guarantees(
        read_only="the guard; SET SESSION TRANSACTION READ ONLY on every connection; the role",
        timeout="max_statement_time (MariaDB) or max_execution_time (MySQL) on every connection",
        cancel="KILL QUERY from a second connection, on interrupt and timeout",
        arrow_path="mysqlclient's unbuffered cursor, typed from the result's field types",
        profile_source="every row up to 100,000, else a LIMIT sample; information_schema "
        "row estimates",
    )

    def connect_args(self) -> dict[str, Any]:
        s = self.settings
        args: dict[str, Any] = {"connect_timeout": 10, "charset": "utf8mb4", "local_infile": 0}
        if s.database_ssl_mode:
            args["ssl_mode"] = SSL_MODES[s.database_ssl_mode]
        files = {
            "ca": s.database_ssl_root_cert,
            "cert": s.database_ssl_cert,
            "key": s.database_ssl_key,
        }
        if any(files.values()):
            args["ssl"] = {key: path for key, path in files.items() if path}
        return args

    def tls_in_use(self) -> str:
        mode = self.settings.database_ssl_mode or self.url.query.get("ssl_mode")
        return str(mode) if mode else "driver default"

    def make_engine(self) -> Engine:
        engine = super().make_engine()
        timeout_s = self.timeout_s

        @sa.event.listens_for(engine, "connect")
        def _session(dbapi_connection: Any, record: Any) -> None:
            mariadb = "mariadb" in dbapi_connection.get_server_info().lower()
            limit = (
                f"max_statement_time = {timeout_s:.6f}"
                if mariadb
                else f"max_execution_time = {max(1, round(timeout_s * 1000))}"
            )
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SET SESSION TRANSACTION READ ONLY")
                cursor.execute(f"SET SESSION {limit}, time_zone = '+00:00'")
            finally:
                cursor.close()

        return engine

    # --- cancel -------------------------------------------------------------------------

    def cancel_for(self, dbapi_connection: Any) -> Callable[[], None] | None:
        thread_id = int(dbapi_connection.thread_id())
        return lambda: self._kill_query(thread_id)

    def _kill_query(self, thread_id: int) -> None:
        """``KILL QUERY`` on a connection outside the pool (a full pool must not stop it)."""
        dialect = self.engine.dialect
        cargs, cparams = dialect.create_connect_args(self.engine.url)
        dbapi = dialect.import_dbapi()
        conn = dbapi.connect(*cargs, **{**cparams, **self.connect_args()})
        try:
            cursor = conn.cursor()
            cursor.execute(f"KILL QUERY {thread_id:d}")
            cursor.close()
        except Exception as exc:
            log.warning("could not cancel query on connection %d: %s", thread_id, exc)
        finally:
            conn.close()

    # --- results ------------------------------------------------------------------------

    def read(
        self, query: str, params: Mapping[str, Any] | None, stream: QueryStream
    ) -> ClosingReader:
        """The query on the driver's unbuffered cursor, compiled by SQLAlchemy.

        Not through ``Connection.execute``: its streaming result prefetches rows into a
        buffer of its own, and this path reads the driver's rows directly. The compiler does
        what ``execute`` would: ``:name`` to the driver's ``%s`` and ``%`` doubled.
        """
        from MySQLdb.cursors import SSCursor

        compiled = sa.text(query).compile(dialect=self.engine.dialect)
        values = compiled.construct_params(dict(params or {}))
        args = tuple(values[name] for name in compiled.positiontup or ())
        stack = contextlib.ExitStack()
        try:
            conn = stack.enter_context(self.engine.connect())
            raw = conn.connection.dbapi_connection
            assert raw is not None
            cursor = raw.cursor(SSCursor)

            def release(failed: type[BaseException] | None, *_: object) -> None:
                # A cancelled or failed unbuffered read leaves rows on the wire, and closing
                # the cursor would read them all: drop the connection instead.
                if failed is None:
                    cursor.close()
                else:
                    conn.invalidate()

            stack.push(release)
            stream.cancel_with(self.cancel_for(raw))
            stack.callback(stream.cancel_with, None)
            cursor.execute(compiled.string, args)
            batches = _typed_batches(
                cursor, self.settings.sql_max_result_bytes, self.settings.sql_max_row_bytes
            )
        except BaseException as exc:
            stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return ClosingReader(batches.schema, batches, stack)


def _typed_batches(cursor: Any, max_held_bytes: int, max_row_bytes: int) -> RowBatches:
    """The cursor's rows as batches typed from its description and field flags."""
    description = cursor.description or ()
    flags: list[int] = [0] * len(description)
    with contextlib.suppress(Exception):  # field_flags is mysqlclient's, not DB-API's
        flags = list(cursor._result.field_flags())
    types, converts = [], []
    for column, flag in zip(description, flags, strict=True):
        type_, convert = _arrow_type(column, flag)
        types.append(type_)
        converts.append(convert)
    return RowBatches(
        cursor.fetchmany,
        [column[0] for column in description],
        types,
        converts,
        max_held_bytes=max_held_bytes,
        max_row_bytes=max_row_bytes,
    )


def _arrow_type(column: tuple[Any, ...], flags: int) -> tuple[pa.DataType | None, Any]:
    """The Arrow type of a result column and a converter of its values (None: as they are).

    None as the type lets the values decide: text and blob columns share field types, and
    only the values (``str`` or ``bytes``) say which one a column is.
    """
    code, length, scale = column[1], column[3] or 0, column[5] or 0
    unsigned = bool(flags & _UNSIGNED)
    if code in _INTEGERS:
        return (pa.uint64() if unsigned and code == 8 else pa.int64()), None
    if code in _FLOATS:
        return pa.float64(), None
    if code in _DECIMALS:
        # The display length counts the sign and the decimal point.
        precision = max(1, length - (0 if unsigned else 1) - (1 if scale else 0))
        if precision <= 38:
            return pa.decimal128(precision, scale), None
        return pa.decimal256(min(precision, 76), scale), None
    if code == _BIT:
        return pa.int64(), _bits
    if code == _DATE:
        return pa.date32(), None
    if code == _DATETIME:
        return pa.timestamp("us"), None
    if code == _TIMESTAMP:
        return pa.timestamp("us", tz="UTC"), None
    if code == _TIME:
        return pa.duration("us"), _as_timedelta
    if code in _TEXT:
        return pa.string(), None
    if code == _GEOMETRY:
        return pa.binary(), None
    if code == _NULL:
        return pa.null(), None
    return None, None


def _bits(value: bytes) -> int:
    return int.from_bytes(value, "big")


def _as_timedelta(value: Any) -> Any:
    # TIME values come as timedelta; a TIME(n) outside its range comes as text.
    return value if isinstance(value, dt.timedelta) else None
