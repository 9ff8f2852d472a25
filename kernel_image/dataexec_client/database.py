"""A database queried directly, for ``sql()`` outside DataExec (``DATAEXEC_DATABASE_URL``).

The same two paths as DataExec's own server: PostgreSQL queries without parameters go
through ADBC (Arrow from the database on) when ``adbc-driver-postgresql`` is installed;
everything else, ``:name`` parameters included, through SQLAlchemy. Results are Arrow tables,
so ``sql()`` gives the frames it gives inside DataExec.

There is no guard here (the analyst's own credentials decide what may run), but queries run
read-only where the database makes that cheap, so that a notebook that runs here also runs
in DataExec: PostgreSQL in a ``READ ONLY`` transaction, SQLite with ``query_only``. Other
databases get a transaction that is always rolled back (on MariaDB/MySQL a ``READ ONLY``
one). ``load()`` and ``save()`` need DataExec's cache, so a DataExec server.
"""

from __future__ import annotations

import contextlib
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

from dataexec_kernel.errors import (
    DatabaseError,
    DatabaseUnavailable,
    DataExecError,
    Unsupported,
    is_connection_failure,
    scrub,
)

CACHE_UNSUPPORTED = (
    "{what} needs DataExec's cache, and this session queries a database directly "
    "(DATAEXEC_DATABASE_URL). Set DATAEXEC_URL and DATAEXEC_TOKEN, or call "
    "dataexec_kernel.connect(url, token), to {verb} through a DataExec server."
)
READ_ONLY_OPTION = "-c default_transaction_read_only=on"


class DatabaseClient:
    """``sql()`` straight against a database given by URL."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url.strip())
        if not parts.scheme or "://" not in url:
            raise ValueError(
                "a database URL looks like postgresql://user:password@host:5432/db or "
                "sqlite:///path/to.db"
            )
        scheme = parts.scheme.lower()
        if scheme == "postgres" or scheme.startswith("postgres+"):
            scheme = "postgresql" + scheme[len("postgres") :]
        if scheme == "postgresql" and _importable("psycopg2") and not _importable("psycopg"):
            # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; take the driver the
            # postgresql extra installs (and DataExec's server uses) when that is the one here.
            scheme = "postgresql+psycopg2"
        self.url = scheme + url.strip()[len(parts.scheme) :]  # the rest exactly as given
        self.dialect = scheme.split("+")[0]
        self._lock = threading.Lock()
        self._engine: Any = None
        self._adbc: Any = None

    def describe(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        user = f"{parts.username}@" if parts.username else ""
        return f"the database at {self.dialect}://{user}{host}{parts.path}"

    def __repr__(self) -> str:
        return f"<dataexec_kernel client: {self.describe()}>"

    def close(self) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
            adbc, self._adbc = self._adbc, None
        if engine is not None:
            engine.dispose()
        if adbc is not None:
            with contextlib.suppress(Exception):
                adbc.close()

    # --- what dataexec_kernel.helpers calls -----------------------------------------------

    def fetch_arrow(self, query: str, params: Any = None) -> Any:
        """The whole result of ``query`` as a pyarrow Table; ``:name`` takes ``params``."""
        if params is not None and not isinstance(params, Mapping):
            raise TypeError("sql() takes its parameters as a dict ({'name': value} for :name)")
        if not params and self.dialect == "postgresql" and _adbc_postgresql():
            return self._read_adbc(query)
        return self._read_sqlalchemy(query, dict(params or {}))

    def load(self, key: str) -> Any:
        raise Unsupported(CACHE_UNSUPPORTED.format(what="load()", verb="load cache keys"))

    def save(self, frame: Any, name: str | None = None) -> str:
        raise Unsupported(CACHE_UNSUPPORTED.format(what="save()", verb="save frames"))

    # --- ADBC (PostgreSQL, no parameters) ---------------------------------------------------

    def _libpq_uri(self) -> str:
        """The URL as libpq takes it: no SQLAlchemy driver name, read-only by default."""
        parts = urllib.parse.urlsplit(self.url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        options = " ".join([v for k, v in query if k == "options"] + [READ_ONLY_OPTION])
        query = [(k, v) for k, v in query if k != "options"] + [("options", options)]
        # libpq decodes %20, not '+', in URI parameters.
        encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
        return f"postgresql://{parts.netloc}{parts.path}?{encoded}"

    def _read_adbc(self, query: str) -> Any:
        import adbc_driver_postgresql.dbapi as adbc_pg

        with self._lock:
            # A kept connection may have died with a database restart: then once more, anew.
            for _ in range(2):
                conn, reused = self._adbc, self._adbc is not None
                self._adbc = None
                try:
                    with self._translate():
                        if conn is None:
                            conn = adbc_pg.connect(self._libpq_uri(), autocommit=True)
                        with conn.cursor() as cursor:
                            cursor.execute(query)
                            table = cursor.fetch_arrow_table()
                except BaseException as exc:
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                    if reused and isinstance(exc, DatabaseUnavailable):
                        continue
                    raise
                self._adbc = conn  # kept for the next query only after a success
                return table
        raise AssertionError("unreachable")

    # --- SQLAlchemy (every dialect, parameters) ---------------------------------------------

    def _sqlalchemy_engine(self) -> Any:
        try:
            import sqlalchemy as sa
        except ImportError:
            extra = "postgresql" if self.dialect == "postgresql" else "database"
            raise ImportError(
                "database mode needs SQLAlchemy (and a driver for the database) for this "
                f"query: pip install 'dataexec-kernel[{extra}]'"
            ) from None
        with self._lock:
            if self._engine is None:
                engine = sa.create_engine(self.url, pool_pre_ping=True)
                if engine.dialect.name == "sqlite":

                    @sa.event.listens_for(engine, "connect")
                    def _read_only(dbapi_connection: Any, record: Any) -> None:
                        dbapi_connection.execute("PRAGMA query_only = ON")

                self._engine = engine
            return self._engine

    def _read_sqlalchemy(self, query: str, params: dict[str, Any]) -> Any:
        import sqlalchemy as sa

        engine = self._sqlalchemy_engine()
        with self._translate(), engine.connect() as conn:
            if engine.dialect.name in ("postgresql", "mysql", "mariadb"):
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            result = conn.execute(sa.text(query), params)
            if not result.returns_rows:
                raise DatabaseError("the statement returned no rows: sql() runs queries")
            columns = [str(c) for c in result.keys()]
            rows = result.fetchall()
            conn.rollback()  # never commit: sql() reads
        return _arrow_table(columns, rows)

    # --- errors ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        """Driver and SQLAlchemy errors -> the package's DatabaseError / DatabaseUnavailable."""
        try:
            yield
        except DataExecError:
            raise
        except ImportError:
            raise
        except Exception as exc:
            original = getattr(exc, "orig", None) or exc
            message = str(original).strip() or type(original).__name__
            password = urllib.parse.urlsplit(self.url).password
            message = scrub(message, password and urllib.parse.unquote(password))
            if is_connection_failure(message):
                raise DatabaseUnavailable(f"cannot query {self.describe()}: {message}") from exc
            raise DatabaseError(message) from exc


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _adbc_postgresql() -> bool:
    try:
        import adbc_driver_postgresql.dbapi  # noqa: F401
    except ImportError:
        return False
    return True


def _arrow_table(columns: list[str], rows: list[Any]) -> Any:
    """Rows as an Arrow table, column by column (duplicate names kept)."""
    import pyarrow as pa

    if not rows:
        return pa.Table.from_arrays([pa.array([], pa.null()) for _ in columns], names=columns)
    arrays = []
    for values in zip(*rows, strict=True):
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            arrays.append(pa.array([None if v is None else str(v) for v in values]))
    return pa.Table.from_arrays(arrays, names=columns)
