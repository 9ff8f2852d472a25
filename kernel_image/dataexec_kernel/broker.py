"""The kernel's side of the broker: one unix socket connection per request.

A DataExec kernel holds no database credentials and has no network; its only door to data
is the broker socket at ``$DATAEXEC_BROKER``. Frames are ``protocol``'s.

``load`` asks for a mapped answer: a descriptor of the key's Arrow file in the server's hot
tier, read here through a read-only memory map without a copy; a key that is not hot comes
as a stream, like a query's result. ``put`` writes its stream once, into a memfd the kernel
keeps for the next put (``StreamMemory``), and passes the descriptor: the broker copies the
stream out before it answers. The stream itself follows through the socket only where the
sandbox cannot make or pass a memfd.
"""

from __future__ import annotations

import mmap
import os
import socket
import threading
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
    called; both go into the key's lineage. The stream is written once, into a memfd whose
    descriptor the broker reads; where none can be made or passed it follows the marker
    byte through the socket.
    """
    import pyarrow as pa

    size = _stream_size(table)
    request: protocol.PutRequest = {
        "op": "put",
        "bytes": size,
        "kind": kind,
        "name": name,
        "mapped": True,
    }
    with _connect() as sock, sock.makefile("rb") as answers:
        sock.sendall(protocol.encode_frame(request))
        _answer(answers)  # go on (or why not: over a cap, no room)
        memory = STREAMS.written(table, size) if _PASSING[0] else None
        try:
            if memory is None or not _send_fd(sock, memory.fd):
                sock.sendall(MARKER)
                with sock.makefile("wb") as out, pa.ipc.new_stream(out, table.schema) as ipc:
                    ipc.write_table(table)
            # The broker has copied the stream once it answers: only then may it change.
            return str(_answer(answers)["cache_key"])
        finally:
            if memory is not None:  # kept only where it can be passed
                STREAMS.release(memory) if _PASSING[0] else memory.close()


MARKER = b"\0"  # the byte a descriptor travels with


def _stream_size(table: Any) -> int:
    import pyarrow as pa

    mock = pa.MockOutputStream()
    with pa.ipc.new_stream(mock, table.schema) as ipc:
        ipc.write_table(table)
    return int(mock.size())


KEPT_BYTES = 64 << 20  # the largest memfd a kernel keeps between puts (its memory counts)


class Memory:
    """A memfd and its map, of at least the bytes a put needs."""

    def __init__(self, size: int) -> None:
        self.fd = os.memfd_create("dataexec-frame", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self.view = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        self.size = size

    def close(self) -> None:
        self.view.close()
        os.close(self.fd)


class StreamMemory:
    """The memfds puts write their streams into; the last one of at most ``KEPT_BYTES`` is
    kept for the next put.

    A memfd's pages are allocated as they are first written, 4 KiB at a time (shared memory
    gets huge pages only where the host turns them on): writing flights' 63 MB stream took
    64 ms into a new memfd and 7 ms into one already written (measured in the kernel
    environment, medians of 7). Puts from several threads at once each get their own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: Memory | None = None

    def written(self, table: Any, size: int) -> Memory | None:
        """Memory whose first ``size`` bytes hold ``table``'s IPC stream, until ``release``;
        None where the sandbox makes no memfd."""
        import pyarrow as pa

        try:
            memory = self._take(size)
        except (AttributeError, OSError):  # no memfd_create, or not allowed here
            return None
        try:
            sink = pa.FixedSizeBufferWriter(pa.py_buffer(memory.view))
            with pa.ipc.new_stream(sink, table.schema) as ipc:
                ipc.write_table(table)
            del sink, ipc  # they export the map, which must not be exported when it closes
        except BaseException:
            self.release(memory)
            raise
        return memory

    def _take(self, size: int) -> Memory:
        with self._lock:
            if self._kept is not None and self._kept.size >= size:
                kept, self._kept = self._kept, None
                return kept
        # Room to grow: a file's size costs nothing until its pages are written.
        return Memory(size if size > KEPT_BYTES else min(KEPT_BYTES, size + size // 8))

    def release(self, memory: Memory) -> None:
        """Done with ``memory``: kept when it is the largest within ``KEPT_BYTES``."""
        done: Memory | None = memory
        with self._lock:
            if memory.size <= KEPT_BYTES and (self._kept is None or self._kept.size < memory.size):
                done, self._kept = self._kept, memory
        if done is not None:
            done.close()


STREAMS = StreamMemory()


# Whether this sandbox passes a memfd to the host at all (gVisor cannot: its memfds are its
# own); after the first refusal, puts stream without making one.
_PASSING = [True]


def _send_fd(sock: socket.socket, fd: int) -> bool:
    try:
        return socket.send_fds(sock, [MARKER], [fd]) == 1
    except OSError:  # a sandbox that cannot pass it: the stream follows the marker instead
        _PASSING[0] = False
        return False


def query(request: protocol.SqlRequest) -> tuple[Any, str | None]:
    """Run a query: its result as a pyarrow Table, and the cache key the broker kept it
    under (None when it could not)."""
    import pyarrow as pa

    with _connect() as sock:
        sock.sendall(protocol.encode_frame(request))
        with sock.makefile("rb") as stream:
            _answer(stream)
            table = pa.ipc.open_stream(stream).read_all()
            key = _answer(stream).get("cache_key")
    return table, key if isinstance(key, str) else None


def load_table(key: str, mapped: bool = True) -> Any:
    """The cached frame of ``key`` as a pyarrow Table: mapped from its hot file when the
    broker hands one over (and ``mapped``), else read from the stream it sends."""
    import pyarrow as pa

    request: protocol.LoadRequest = {"op": "load", "key": key, "mapped": mapped}
    with _connect() as sock:
        sock.sendall(protocol.encode_frame(request))
        # The descriptor comes with the head frame's first bytes: read those with recvmsg.
        first, fds, _, _ = socket.recv_fds(sock, protocol.FRAME.size, 1)
        try:
            with sock.makefile("rb") as stream:
                head = _answer(_Prefixed(first, stream))
                if not head.get("mapped"):
                    table = pa.ipc.open_stream(stream).read_all()
                    _answer(stream)
                    return table
                if not fds:
                    raise errors.DataExecError("the broker sent no file for a mapped load")
                try:
                    source = pa.py_buffer(mmap.mmap(fds[0], 0, prot=mmap.PROT_READ))
                except (OSError, ValueError):  # a sandbox that cannot map it: read it
                    source = pa.PythonFile(os.fdopen(os.dup(fds[0]), "rb"))
                return pa.ipc.open_file(source).read_all()
        finally:
            for fd in fds:
                os.close(fd)


class _Prefixed:
    """A binary stream whose first bytes were read already (with their descriptors)."""

    def __init__(self, first: bytes, rest: Any) -> None:
        self.first, self.rest = first, rest

    def read(self, size: int) -> bytes:
        head, self.first = self.first[:size], self.first[size:]
        return head + (self.rest.read(size - len(head)) if size > len(head) else b"")


def load_frame(key: str) -> Any:
    """The cached frame of ``key`` as a DataFrame."""
    return load_table(key).to_pandas()
