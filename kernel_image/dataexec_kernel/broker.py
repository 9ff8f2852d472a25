"""The kernel's side of the broker: one unix socket connection per request.

A DataExec kernel holds no database credentials and has no network; its only door to data
is the broker socket at ``$DATAEXEC_BROKER``. Frames are ``protocol``'s.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from dataexec_kernel import errors, protocol

DEFAULT_SOCKET = f"/dataexec/srv/{protocol.BROKER_SOCKET}"


def available() -> bool:
    """Whether this process is a DataExec kernel (it has a broker to talk to)."""
    return bool(os.environ.get(protocol.BROKER_ENV))


def _connect() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.environ.get(protocol.BROKER_ENV, DEFAULT_SOCKET))
    except OSError:
        sock.close()
        raise errors.DataExecError(
            "this kernel has no data connection (it serves no session)"
        ) from None
    return sock


def _read_frame(stream: Any) -> Any:
    prefix = stream.read(protocol.FRAME.size)
    if len(prefix) < protocol.FRAME.size:
        raise errors.DataExecError("the broker closed the connection")
    size = protocol.frame_length(prefix, limit=1 << 62)
    body = stream.read(size)
    if len(body) < size:
        raise errors.DataExecError("the broker closed the connection")
    return protocol.decode_frame(body)


def _answer(stream: Any) -> dict[str, Any]:
    answer = _read_frame(stream)
    if not answer.get("ok"):
        protocol.raise_error(answer.get("error") or {})
    return answer  # type: ignore[no-any-return]


def put(table: Any, kind: protocol.PutKind = "result", name: str | None = None) -> str:
    """Send an Arrow table to the server's cache; its new cache key.

    ``kind`` says why (``result``, ``save``, ``checkpoint``) and ``name`` what the frame is
    called; both go into the key's lineage.
    """
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    body = sink.getvalue()
    request: protocol.PutRequest = {"op": "put", "bytes": body.size, "kind": kind, "name": name}
    with _connect() as sock:
        try:
            sock.sendall(protocol.encode_frame(request) + body.to_pybytes())
        except OSError:  # refused unread (over a cap): its answer says why
            pass
        with sock.makefile("rb") as stream:
            return str(_answer(stream)["cache_key"])


def fetch(request: protocol.SqlRequest | protocol.LoadRequest) -> Any:
    """Send a request whose answer is an Arrow stream; return it as a pyarrow Table."""
    import pyarrow as pa

    with _connect() as sock:
        sock.sendall(protocol.encode_frame(request))
        with sock.makefile("rb") as stream:
            _answer(stream)
            table = pa.ipc.open_stream(stream).read_all()
            _answer(stream)
    return table


def load_frame(key: str) -> Any:
    """The cached frame of ``key`` as a DataFrame."""
    return fetch({"op": "load", "key": key}).to_pandas()
