"""Data in a kernel: ``sql()``, ``load()``, ``save()``, ``conn`` and ``%%sql``.

Inside a DataExec kernel everything goes through the broker (``dataexec_kernel.broker``):
the kernel holds no database credentials and has no network, so every query goes over the
broker's unix socket, which checks it, runs it read-only on the server's connection pool
and streams the result back as Arrow record batches.

Outside DataExec the same functions go to the analysts' client (``dataexec_client``, a
package of its own that never ships into kernels): a DataExec server over HTTP, or a
database directly. It plugs in here with ``use_client``; which it talks to is decided at
each call, so configuring after ``%load_ext`` works.

``conn`` is what ``pd.read_sql(query, conn)`` needs: pandas recognises an ADBC connection
and reads Arrow from it, so the fast path holds there too, with no warning. pandas refuses
``params`` for ADBC connections before it asks the connection, so making ``conn`` also lets
``params`` through for ``conn`` (and only for it): ``pd.read_sql(q, conn, params=...)``
takes a dict or a list in the styles ``placeholders`` reads.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from dataexec_kernel import broker, placeholders, protocol
from dataexec_kernel.errors import NotConfigured

CLIENT_PACKAGE = "dataexec_client"
BROKER = "the DataExec broker"
NO_CLIENT = (
    "sql(), load() and save() have nothing to talk to: this is not a DataExec kernel and "
    f"the client package ({CLIENT_PACKAGE}) is not installed. Install it from your DataExec "
    "server (GET /client names the wheel) and set DATAEXEC_URL and DATAEXEC_TOKEN, or "
    "DATAEXEC_DATABASE_URL."
)

# Finds the analysts' client to use now (None: the broker answers); set by dataexec_client.
_client_resolver: Callable[[], Any] | None = None


def use_client(resolver: Callable[[], Any]) -> None:
    """Called by the analysts' client package when it is imported: it decides from now on
    where ``sql()`` goes (``resolver()`` returns a client, or None for the broker)."""
    global _client_resolver
    _client_resolver = resolver


def _client_package() -> Any:
    """The analysts' client package, found by name (so that nothing of it is needed, or
    shipped, where kernels run); importing it plugs it in (``use_client``)."""
    try:
        return importlib.import_module(CLIENT_PACKAGE)
    except ImportError:
        raise NotConfigured(NO_CLIENT) from None


def connect(*args: Any, **kwargs: Any) -> Any:
    """``dataexec_client.connect``: send ``sql()`` to a DataExec server or a database."""
    return _client_package().connect(*args, **kwargs)


def disconnect() -> None:
    """``dataexec_client.disconnect``: the environment decides again."""
    _client_package().disconnect()


def _client() -> Any:
    """None when the broker answers (a DataExec kernel), else the analysts' client.

    Raises NotConfigured, saying how to configure one, when there is nothing to talk to.
    """
    if _client_resolver is None and not broker.available():
        _client_package()  # outside DataExec: the client plugs in when imported
    if _client_resolver is None:
        return None
    return _client_resolver()


def describe() -> str:
    """What ``sql()`` talks to now, in words (no password, no token)."""
    try:
        client = _client()
    except NotConfigured:
        return "nothing yet (no DataExec URL or database URL configured)"
    return BROKER if client is None else str(client.describe())


def save(frame: Any, name: str | None = None) -> str:
    """Keep ``frame`` in the cache and return its key (usable by ``load`` and downloads).

    The frame is kept with its index (``protocol.arrow_table``): ``load`` gives it back.
    """
    import pandas as pd

    if isinstance(frame, pd.Series):
        frame = frame.to_frame()
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"save() takes a DataFrame, not {type(frame).__name__}")
    if name is not None and not isinstance(name, str):
        raise TypeError("save(): name must be a string")
    client = _client()
    if client is not None:
        return str(client.save(frame, name))
    return broker.put(protocol.arrow_table(frame), "save", name)


def fetch_arrow(query: str, params: dict[str, Any] | None = None) -> Any:
    """Run ``query`` (through the broker in DataExec) and return its result as a pyarrow Table."""
    return _query(query, params)[0]


def _query(query: str, params: dict[str, Any] | None) -> tuple[Any, str | None]:
    """The result of ``query`` as a pyarrow Table, and its cache key when the broker kept it."""
    if not isinstance(query, str):
        raise TypeError("sql() takes the query as a string")
    client = _client()
    if client is not None:
        return client.fetch_arrow(query, params), None
    return broker.query({"op": "sql", "query": query, "params": params})


def load(key: str) -> Any:
    """The cached frame of ``key`` (of this tenant) as a DataFrame: the frame that was cached,
    its index, columns and dtypes restored from the table's pandas metadata."""
    if not isinstance(key, str):
        raise TypeError("load() takes a cache key string")
    client = _client()
    if client is not None:
        return client.load(key).to_pandas()
    from dataexec_kernel.frames import note_cached

    frame = broker.load_frame(key)
    note_cached(frame, key)  # a checkpoint of it, unchanged, is this key
    return frame


def sql(query: str, params: dict[str, Any] | None = None) -> Any:
    """Run a read-only SQL query and return a DataFrame; ``:name`` placeholders take ``params``."""
    from dataexec_kernel.frames import note_cached

    table, key = _query(query, params)
    frame = table.to_pandas()
    if key is not None:
        note_cached(frame, key)  # the broker kept it: a step answering it sends nothing back
    return frame


def _connection_base() -> type:
    """ADBC's connection class when installed (so pandas takes its Arrow path), else object.

    Inside DataExec kernels ADBC is always there. Without it (a plain environment)
    ``pd.read_sql(q, conn)`` still works, through pandas' generic DB-API path, with its
    warning that only SQLAlchemy, ADBC and sqlite3 connections are tested.
    """
    try:
        from adbc_driver_manager import dbapi
    except ImportError:
        return object
    return dbapi.Connection  # type: ignore[no-any-return]


class BrokerCursor:
    """The cursor of ``conn``: each ``execute`` is one ``sql()``.

    ``parameters`` come as a dict or a list in any style ``placeholders`` reads; ``bound``
    are those ``pd.read_sql(..., params=...)`` gave (see ``_let_pandas_pass_params``).
    """

    def __init__(self, bound: Any = None) -> None:
        self._table: Any = None
        self._bound = bound
        self.description: Any = None

    def execute(self, query: str, parameters: Any = None) -> None:
        query, named = placeholders.named(
            query, parameters if parameters is not None else self._bound
        )
        self._table = fetch_arrow(query, named)
        self.description = [
            (n, None, None, None, None, None, None) for n in self._table.column_names
        ]

    def fetch_arrow_table(self) -> Any:
        return self._table

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [tuple(r.values()) for r in self._table.to_pylist()]

    def close(self) -> None:
        self._table = None

    def __enter__(self) -> BrokerCursor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _connection_class() -> type:
    """An ADBC-compatible connection class (so pandas takes its Arrow path)."""

    class BrokerConnection(_connection_base()):  # type: ignore[misc]
        """``pd.read_sql(q, conn)`` through ``sql()``; read-only, nothing to commit."""

        dataexec_conn = True  # what the pandas hook knows it by

        def __init__(self, bound: Any = None) -> None:  # no ADBC driver: sql() is the database
            self._closed = True  # nothing of ADBC's to release in __del__
            self._bound = bound

        def cursor(self, **_: Any) -> BrokerCursor:
            return BrokerCursor(self._bound)

        def with_params(self, params: Any) -> Any:
            """This connection, its cursors executing with ``params``."""
            return type(self)(params)

        def commit(self) -> None:
            pass

        def rollback(self) -> None:
            pass

        def close(self) -> None:
            pass

        def __repr__(self) -> str:
            where = describe()
            if where == BROKER:
                return "<dataexec conn: read-only SQL through the DataExec broker>"
            return f"<dataexec conn: SQL through {where}>"

    return BrokerConnection


def make_conn() -> Any:
    """The ``conn`` object of a kernel."""
    _let_pandas_pass_params()
    return _connection_class()()


def _let_pandas_pass_params() -> None:
    """``pd.read_sql(q, conn, params=...)``: pandas' ADBC path passes ``params`` to ``conn``.

    pandas (3.x) raises ``NotImplementedError`` for ``params`` on any ADBC connection before
    it touches the connection. Its ``ADBCDatabase.read_query`` is wrapped, once per process,
    so that for ``conn`` the query runs on a connection bound to the parameters; every
    other ADBC connection meets pandas' own code unchanged.
    """
    try:
        from pandas.io import sql as pandas_sql
    except ImportError:
        return
    database = getattr(pandas_sql, "ADBCDatabase", None)
    original = getattr(database, "read_query", None)
    if original is None or getattr(original, "dataexec_params", False):
        return

    def read_query(self: Any, sql: Any, *args: Any, params: Any = None, **kwargs: Any) -> Any:
        if params is not None and getattr(self.con, "dataexec_conn", False):
            return original(type(self)(self.con.with_params(params)), sql, *args, **kwargs)
        return original(self, sql, *args, params=params, **kwargs)

    read_query.__doc__ = original.__doc__
    read_query.dataexec_params = True  # type: ignore[attr-defined]
    database.read_query = read_query  # type: ignore[union-attr]
    database.read_sql = read_query  # type: ignore[union-attr]


def register_magic(ipython: Any) -> None:
    """``%%sql name`` runs the cell as a query and keeps the frame under ``name``."""

    def sql_magic(line: str, cell: str) -> Any:
        name = line.strip()
        if name and not name.isidentifier():
            raise ValueError(f"%%sql: {name!r} is not a valid variable name")
        frame = sql(cell)
        if name:
            ipython.user_ns[name] = frame
        return frame

    ipython.register_magic_function(sql_magic, "cell", "sql")


def install_helpers(ipython: Any) -> None:
    """``sql``, ``load``, ``save``, ``conn`` and ``%%sql`` in ``ipython``."""
    ipython.push({"sql": sql, "load": load, "save": save, "conn": make_conn()})
    register_magic(ipython)
