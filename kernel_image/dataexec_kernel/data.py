"""Data in a kernel: ``sql()``, ``load()``, ``save()``, ``conn`` and ``%%sql``.

Inside a DataExec kernel everything goes through the broker: the kernel holds no database
credentials and has no network, so every query goes over the broker's unix socket
(``$DATAEXEC_BROKER``), which checks it, runs it read-only on the server's connection pool
and streams the result back as Arrow record batches.

Outside DataExec (a plain Jupyter kernel, a script) the same functions go to whatever
``dataexec_kernel.client`` is configured with: a DataExec server over HTTP, or a database
directly. Which one is decided at each call, so configuring after ``%load_ext`` works.

``conn`` is what ``pd.read_sql(query, conn)`` needs: pandas recognises an ADBC connection
and reads Arrow from it, so the fast path holds there too, with no warning.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

FRAME = struct.Struct(">I")
DEFAULT_BROKER = "/dataexec/srv/broker.sock"


class DataExecError(Exception):
    """A request to the broker failed; ``type`` is the server's error type.

    Over HTTP (outside DataExec kernels) ``status`` is the HTTP status and ``detail`` the
    answer's whole ``detail`` object.
    """

    type = "INTERNAL"
    status: int | None = None
    detail: dict[str, Any] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SqlNotAllowed(DataExecError):
    type = "SQL_NOT_ALLOWED"


class QueryTimeout(DataExecError):
    type = "TIMEOUT"


class ResultTooLarge(DataExecError):
    type = "OUTPUT_TOO_LARGE"


class DatabaseUnavailable(DataExecError):
    type = "DATABASE_UNAVAILABLE"


class DatabaseError(DataExecError):
    type = "EXECUTION_ERROR"


class CacheKeyNotFound(DataExecError):
    type = "NOT_FOUND"


class QuotaExceeded(DataExecError):
    type = "QUOTA_EXCEEDED"


class AuthenticationFailed(DataExecError):
    """The DataExec server refused the token (outside DataExec kernels only)."""

    type = "UNAUTHORIZED"


class PermissionDenied(DataExecError):
    type = "FORBIDDEN"


class InvalidRequest(DataExecError):
    type = "VALIDATION_ERROR"


class ServerUnavailable(DataExecError):
    """The DataExec server could not be reached, or is out of capacity for now."""

    type = "UNAVAILABLE"


class NotConfigured(DataExecError):
    """Neither a DataExec kernel, a DataExec URL nor a database URL is configured."""

    type = "NOT_CONFIGURED"


class Unsupported(DataExecError, NotImplementedError):
    """What the configured connection cannot do (yet), e.g. ``save()`` over HTTP."""

    type = "NOT_SUPPORTED"


ERRORS = {
    cls.type: cls
    for cls in (
        SqlNotAllowed,
        QueryTimeout,
        ResultTooLarge,
        DatabaseUnavailable,
        DatabaseError,
        CacheKeyNotFound,
        QuotaExceeded,
    )
}


# The server's HTTP error types: the broker's, plus what only HTTP answers. Kept apart so that
# errors inside DataExec kernels keep the exception classes (and so the ``ename``) they had.
HTTP_ERRORS = {
    **ERRORS,
    **{
        cls.type: cls
        for cls in (AuthenticationFailed, PermissionDenied, InvalidRequest, ServerUnavailable)
    },
    "CAPACITY": ServerUnavailable,
}


def _raise(error: dict[str, Any]) -> None:
    cls = ERRORS.get(error.get("type", ""), DataExecError)
    exc = cls(error.get("message", "the broker refused"))
    raise exc.with_traceback(None) from None


def _read_frame(stream: Any) -> Any:
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        raise DataExecError("the broker closed the connection")
    (size,) = FRAME.unpack(head)
    return json.loads(stream.read(size))


def _connect() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.environ.get("DATAEXEC_BROKER", DEFAULT_BROKER))
    except OSError:
        sock.close()
        raise DataExecError("this kernel has no data connection (it serves no session)") from None
    return sock


def _send_frame(sock: socket.socket, document: dict[str, Any], payload: bytes = b"") -> None:
    body = json.dumps(document, default=str).encode()
    sock.sendall(FRAME.pack(len(body)) + body + payload)


def arrow_table(frame: Any) -> Any:
    """A DataFrame as a pyarrow Table (mixed-type object columns kept, as text)."""
    import pyarrow as pa

    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        loose = [c for c in frame.columns if frame[c].dtype == object]
        return pa.Table.from_pandas(frame.astype({c: str for c in loose}), preserve_index=False)


def put_frame(frame: Any, kind: str = "result", name: str | None = None) -> str:
    """Send a DataFrame to the server's cache as Arrow; return its cache key.

    ``kind`` says why (``result``, ``save``, ``checkpoint``) and ``name`` what the frame is
    called; both go into the key's lineage.
    """
    import pyarrow as pa

    table = arrow_table(frame)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    body = sink.getvalue()
    request = {"op": "put", "bytes": body.size, "kind": kind, "name": name}
    with _connect() as sock:
        _send_frame(sock, request, body.to_pybytes())
        with sock.makefile("rb") as stream:
            answer = _read_frame(stream)
    if not answer["ok"]:
        _raise(answer["error"])
    return str(answer["cache_key"])


def _client() -> Any:
    """None inside a DataExec kernel (the broker answers), else the configured client.

    Raises NotConfigured, saying how to configure one, when there is nothing to talk to.
    """
    from dataexec_kernel import client

    return client.current()


def save(frame: Any, name: str | None = None) -> str:
    """Keep ``frame`` in the cache and return its key (usable by ``load`` and downloads)."""
    import pandas as pd

    if isinstance(frame, pd.Series):
        frame = frame.to_frame()
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"save() takes a DataFrame, not {type(frame).__name__}")
    if name is not None and not isinstance(name, str):
        raise TypeError("save(): name must be a string")
    remote = _client()
    if remote is not None:
        return str(remote.save(frame, name))
    return put_frame(frame, "save", name)


def fetch_arrow(query: str, params: dict[str, Any] | None = None) -> Any:
    """Run ``query`` (through the broker in DataExec) and return its result as a pyarrow Table."""
    if not isinstance(query, str):
        raise TypeError("sql() takes the query as a string")
    remote = _client()
    if remote is not None:
        return remote.fetch_arrow(query, params)
    return _fetch({"op": "sql", "query": query, "params": params})


def load(key: str) -> Any:
    """The cached frame of ``key`` (of this tenant) as a DataFrame."""
    if not isinstance(key, str):
        raise TypeError("load() takes a cache key string")
    remote = _client()
    if remote is not None:
        return remote.load(key).to_pandas()
    from dataexec_kernel.frames import note_cached

    frame = _fetch({"op": "load", "key": key}).to_pandas()
    note_cached(frame, key)  # a checkpoint of it, unchanged, is this key
    return frame


def _fetch(request: dict[str, Any]) -> Any:
    """Send a request whose answer is an Arrow stream; return it as a pyarrow Table."""
    import pyarrow as pa

    with _connect() as sock:
        _send_frame(sock, request)
        with sock.makefile("rb") as stream:
            head = _read_frame(stream)
            if not head["ok"]:
                _raise(head["error"])
            table = pa.ipc.open_stream(stream).read_all()
            tail = _read_frame(stream)
            if not tail["ok"]:
                _raise(tail["error"])
    return table


def sql(query: str, params: dict[str, Any] | None = None) -> Any:
    """Run a read-only SQL query and return a DataFrame; ``:name`` placeholders take ``params``."""
    return fetch_arrow(query, params).to_pandas()


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


def _connection_class() -> type:
    """An ADBC-compatible connection class (so pandas takes its Arrow path)."""
    base = _connection_base()

    class BrokerCursor:
        def __init__(self) -> None:
            self._table: Any = None
            self.description: Any = None

        def execute(self, query: str, parameters: Any = None) -> None:
            self._table = fetch_arrow(query, dict(parameters) if parameters else None)
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

    class BrokerConnection(base):  # type: ignore[misc, valid-type]
        """``pd.read_sql(q, conn)`` through the broker; read-only, nothing to commit."""

        def __init__(self) -> None:  # no ADBC driver: the broker is the database
            self._closed = True  # nothing of ADBC's to release in __del__

        def cursor(self, **_: Any) -> BrokerCursor:
            return BrokerCursor()

        def commit(self) -> None:
            pass

        def rollback(self) -> None:
            pass

        def close(self) -> None:
            pass

        def __repr__(self) -> str:
            from dataexec_kernel import client

            where = client.describe()
            if where == client.BROKER:
                return "<dataexec conn: read-only SQL through the DataExec broker>"
            return f"<dataexec conn: SQL through {where}>"

    return BrokerConnection


def make_conn() -> Any:
    """The ``conn`` object of a kernel."""
    return _connection_class()()


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
    """``sql``, ``load``, ``save``, ``conn`` and ``%%sql`` in a plain IPython (outside DataExec).

    No result capture and no pip refusal: those belong to DataExec's own kernels.
    """
    ipython.push({"sql": sql, "load": load, "save": save, "conn": make_conn()})
    register_magic(ipython)
