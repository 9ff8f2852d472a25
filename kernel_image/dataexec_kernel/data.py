"""Data inside a kernel: ``sql()``, ``conn`` and ``%%sql``, all through the broker.

The kernel holds no database credentials and has no network: every query goes over the
broker's unix socket (``$DATAEXEC_BROKER``), which checks it, runs it read-only on the
server's connection pool and streams the result back as Arrow record batches.

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
    """A request to the broker failed; ``type`` is the server's error type."""

    type = "INTERNAL"

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


ERRORS = {
    cls.type: cls
    for cls in (
        SqlNotAllowed,
        QueryTimeout,
        ResultTooLarge,
        DatabaseUnavailable,
        DatabaseError,
        CacheKeyNotFound,
    )
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


def put_frame(frame: Any) -> str:
    """Send a result DataFrame to the server's cache as Arrow; return its cache key."""
    import pyarrow as pa

    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        # Mixed-type object columns: keep them, as text.
        loose = [c for c in frame.columns if frame[c].dtype == object]
        table = pa.Table.from_pandas(frame.astype({c: str for c in loose}), preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    body = sink.getvalue()
    with _connect() as sock:
        _send_frame(sock, {"op": "put", "bytes": body.size}, body.to_pybytes())
        with sock.makefile("rb") as stream:
            answer = _read_frame(stream)
    if not answer["ok"]:
        _raise(answer["error"])
    return str(answer["cache_key"])


def fetch_arrow(query: str, params: dict[str, Any] | None = None) -> Any:
    """Run ``query`` through the broker and return its result as a pyarrow Table."""
    if not isinstance(query, str):
        raise TypeError("sql() takes the query as a string")
    return _fetch({"op": "sql", "query": query, "params": params})


def load(key: str) -> Any:
    """The cached frame of ``key`` (of this tenant) as a DataFrame."""
    if not isinstance(key, str):
        raise TypeError("load() takes a cache key string")
    return _fetch({"op": "load", "key": key}).to_pandas()


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


def _connection_class() -> type:
    """An ADBC-compatible connection class (so pandas takes its Arrow path)."""
    from adbc_driver_manager import dbapi

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

    class BrokerConnection(dbapi.Connection):  # type: ignore[misc]
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
            return "<dataexec conn: read-only SQL through the DataExec broker>"

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
