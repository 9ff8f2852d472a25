"""Driver and SQLAlchemy errors of the analysed database, translated into ours: once, here.

``DriverErrors(url, timeout_s)`` classifies an exception from psycopg2, ADBC, mysqlclient,
SQLite or SQLAlchemy (SQLSTATEs for PostgreSQL, error numbers for MariaDB/MySQL):

- a cancelled statement (``57014``, "statement timeout", SQLite's "interrupted", MariaDB's
  1969, MySQL's 3024) is ``ExecutionTimeout``; one cancelled by us ("due to user request",
  ``KILL QUERY``'s 1317) is ``ExecutionError``;
- a refused write or missing privilege (``25006``, ``42501``, 1142, 1792, ...) is
  ``SqlNotAllowed``;
- a row PostgreSQL refused for its size (``ROW_TOO_LARGE``, see
  ``dialects.postgresql``) is ``OutputTooLarge``;
- a query over the role's ``temp_file_limit`` (``53400``) is ``ExecutionError``
  (``TempFileLimitExceeded``): the query's fault, not the database's;
- a lost or refused connection or login (``08*``, ``28*``, ``57P*``, ``53*``, 1045, 2003,
  2026, ..., any failure to connect, the texts of
  ``dataexec_kernel.errors.CONNECTION_FAILURES``) is
  ``DatabaseUnavailable``, naming host and database;
- anything else is the user's query failing (``ExecutionError`` with the driver's message)
  or, for the server's own queries (schema, profiles), an internal error whose detail goes
  to the log only.

Every message that leaves passes ``scrub``: never the password, raw or URL-encoded.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

import sqlalchemy as sa
from dataexec_kernel import errors as kernel_errors
from dataexec_kernel.errors import is_connection_failure
from sqlalchemy.engine import URL

from server.errors import (
    DatabaseUnavailable,
    DataExecError,
    ExecutionError,
    ExecutionTimeout,
    OutputTooLarge,
    SqlNotAllowed,
)

log = logging.getLogger(__name__)

# MariaDB/MySQL error numbers (mysqlclient puts them first in the exception's args).
MYSQL_TIMEOUT = {1969, 3024}  # max_statement_time, max_execution_time exceeded
MYSQL_INTERRUPTED = 1317  # KILL QUERY
MYSQL_REFUSED = {1044, 1142, 1143, 1227, 1370, 1792}  # denied; read-only transaction
MYSQL_UNAVAILABLE = {1040, 1045, 1129, 1130, 1203, 1226, 1251, 2002, 2003, 2005, 2006, 2013, 2026}
SQLSTATE_CANCELED = "57014"
SQLSTATE_READ_ONLY = "25006"
SQLSTATE_PRIVILEGE = "42501"
SQLSTATE_LIMIT = "53400"  # configuration_limit_exceeded: temp_file_limit, not unavailability
# What PostgreSQL says of a row over sql_max_row_bytes (dialects.postgresql.bounded), then
# its size: the text of a failed cast to integer.
ROW_TOO_LARGE = "dataexec: a result row over sql_max_row_bytes, bytes:"
_ROW_SIZE = re.compile(re.escape(ROW_TOO_LARGE) + r" (\d+)")
# Modules whose exceptions are the drivers' (ADBC's Arrow reader reports libpq errors met
# while streaming as OSError with "[libpq]" in the text).
DRIVER_MODULES = ("adbc_driver", "psycopg2", "psycopg", "sqlite3", "MySQLdb", "pymysql")


class QueryCancelled(Exception):
    """The consumer stopped the query (interrupt, timeout, client gone)."""


def scrub(text: str, url: URL) -> str:
    """``text`` without the URL's password (as given, or URL-encoded)."""
    return kernel_errors.scrub(text, None if url.password is None else str(url.password))


def describe_target(url: URL) -> str:
    """Where the database is, for messages: host, port and database (never the password)."""
    if url.get_backend_name() == "sqlite":
        return f"SQLite database {url.database or ':memory:'}"
    where = url.host or "localhost"
    return f"{where}{':' + str(url.port) if url.port else ''}/{url.database or ''}"


class DriverErrors:
    """The one translator of the analysed database's errors (see the module docstring)."""

    def __init__(self, url: URL, timeout_s: float | None = None, max_row_bytes: int = 0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.max_row_bytes = max_row_bytes

    def is_driver_error(self, exc: BaseException) -> bool:
        return isinstance(exc, sa.exc.DBAPIError) or (
            type(exc).__module__.startswith(DRIVER_MODULES)
            or (isinstance(exc, OSError) and "[libpq]" in str(exc))
        )

    def translate(self, exc: BaseException, *, what: str | None = None) -> DataExecError:
        """Our error for ``exc``. ``what`` names a query of the server's own (schema,
        profile): then a failure that is not the database's fault is an internal error."""
        original = getattr(exc, "orig", None) or exc
        sqlstate = str(
            getattr(original, "sqlstate", None) or getattr(original, "pgcode", None) or ""
        )
        code = _mysql_code(original)
        text = scrub(_driver_text(original, code).strip(), self.url)
        message = text.splitlines()[0] if text else type(original).__name__
        invalidated = isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
        if "due to user request" in message or code == MYSQL_INTERRUPTED:
            return ExecutionError(
                "the query was cancelled", ename="QueryCancelled", evalue=message, traceback=[]
            )
        if (
            sqlstate == SQLSTATE_CANCELED
            or code in MYSQL_TIMEOUT
            or "statement timeout" in message
            or ("interrupted" in message)
        ):
            if self.timeout_s is None:
                return ExecutionTimeout("the query took too long and was cancelled")
            return ExecutionTimeout(f"the query exceeded the {self.timeout_s:g} s limit")
        if row := _ROW_SIZE.search(message):
            return OutputTooLarge(
                f"a row of the result is {int(row.group(1)):,} bytes, over the "
                f"{self.max_row_bytes:,} bytes one row may hold (sql_max_row_bytes); select "
                "a part of the large values (left(), substr()) or their length instead"
            )
        if sqlstate == SQLSTATE_LIMIT or "temp_file_limit" in message:
            return ExecutionError(
                "the query needed more temporary disk than one query may use (the database "
                "role's temp_file_limit): filter, aggregate or LIMIT before sorting or "
                f"joining so much ({message})",
                ename="TempFileLimitExceeded",
                evalue=message,
                traceback=[],
            )
        if (
            invalidated
            or code in MYSQL_UNAVAILABLE
            or sqlstate.startswith(("08", "28", "57P", "53"))
            or is_connection_failure(message)
        ):
            return self.unavailable(exc)
        if what is not None:
            log.warning("%s failed: %s", what, text)
            return DataExecError(f"{what} failed on the database")
        if (
            sqlstate in (SQLSTATE_READ_ONLY, SQLSTATE_PRIVILEGE)
            or code in MYSQL_REFUSED
            or "readonly" in message
        ):
            return SqlNotAllowed(f"the database refused: {message}")
        return ExecutionError(
            f"the database failed the query: {message}",
            ename="DatabaseError",
            evalue=message,
            traceback=[],
        )

    @contextlib.contextmanager
    def translated(self, what: str | None = None) -> Iterator[None]:
        """Driver and SQLAlchemy errors raised inside come out as ours (see ``translate``)."""
        try:
            yield
        except (DataExecError, QueryCancelled):
            raise
        except Exception as exc:
            if self.is_driver_error(exc):
                raise self.translate(exc, what=what) from None
            if what is not None and isinstance(exc, sa.exc.SQLAlchemyError):
                log.warning("%s failed: %s", what, scrub(str(exc), self.url))
                raise DataExecError(f"{what} failed") from exc
            raise

    @contextlib.contextmanager
    def connect(self, engine: sa.Engine, what: str) -> Iterator[sa.Connection]:
        """A connection of ``engine`` for one of the server's own queries, errors translated."""
        with self.translated(what):
            try:
                conn = engine.connect()
            except sa.exc.DBAPIError as exc:
                raise self.unavailable(exc) from None
            with conn:
                yield conn

    def unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        """The database cannot be reached (or refused the login): where, and why."""
        original = getattr(exc, "orig", None) or exc
        text = _driver_text(original, _mysql_code(original))
        lines = scrub(text.strip(), self.url).splitlines()
        reason = lines[0] if lines else type(original).__name__
        return DatabaseUnavailable(
            f"cannot reach the database at {describe_target(self.url)}: {reason}"
        )


def _mysql_code(original: BaseException) -> int | None:
    """The MariaDB/MySQL error number of a mysqlclient exception, else None."""
    args = getattr(original, "args", ())
    if type(original).__module__.startswith("MySQLdb") and args and isinstance(args[0], int):
        return args[0] if len(args) > 1 else None
    return None


def _driver_text(original: BaseException, mysql_code: int | None) -> str:
    """The driver's message (mysqlclient's without its ``(code, "...")`` tuple form)."""
    return str(original.args[1]) if mysql_code is not None else str(original)
