"""The broker: the only door from a kernel to data.

Each kernel that serves a session gets a unix socket, ``broker.sock``, in the server-owned
(read-only) part of its kernel directory; nothing else in the kernel knows where the
database is or how to log in. Because the socket is that kernel's own, the broker knows who
asks: the session and tenant it was attached for. Requests and answers are frames of the
kernel protocol (``dataexec_kernel.protocol``, where they are drawn): ``sql`` and ``load``
answer Arrow IPC streams, ``put`` takes one (a result, a ``save()``, a checkpoint) into the
cache and answers its key. A ``load`` that may be ``mapped`` is answered, while the key is in
the cache's hot tier, with a read-only descriptor of its Arrow file passed over the socket
(``SCM_RIGHTS``) instead of a stream: the kernel maps it, and no byte is copied through the
socket or decoded from Parquet. A ``put`` passes a memfd the other way, which the kernel
writes its next puts into as well: the broker copies the stream out before it answers.

A query's result is also kept for the cache as it streams (while ``frame_memory_bytes`` has
room for it) and spilled at its end: the tail frame names its key, so the frame ``sql()``
made is in the cache already when the step answers it or checkpoints it, and the kernel
never sends it back. A result that finds no room, or no quota, just has no key there; the
kernel puts it when a step answers it.

Every query, a kernel's and the server's own (``query_table``, SQL without a session),
first takes a slot of the database's ``QueryGate`` (``server.sql.admission``): so many per
kernel, per tenant and in all, tenants served fairly, the rest waiting their turn or, past
``sql_queue_wait_s``, refused with ``RATE_LIMITED``. The slot is held until the query's
thread has let go of its connection, so the database never runs more of our queries than
the gate allows.

Batches are written as the database produces them (never JSON, never pickle, no
compression on a local socket), one at a time: the broker waits for the kernel to take
each before it asks for the next, so it never holds more than a few batches of a result.
A failure after the stream began ends the stream early and says why in the last frame. If
the kernel goes away mid-query or while it waits its turn (an interrupt, a timeout kill),
the broker sees the socket close and cancels the query in the database (or its place in
the queue), so no backend is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from dataexec_kernel import errors as kernel_errors
from dataexec_kernel import protocol

from server.broker.caller import Caller
from server.cache.cache import Cache, read_ipc
from server.cache.downloads import stored_batches
from server.cache.memory import Hold
from server.errors import DataExecError, OutputTooLarge, ValidationError
from server.sql.database import QueryDatabase, QueryStream
from server.sql.errors import QueryCancelled
from server.sql.guard import check_query
from server.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """One frame of a kernel's request (bounded; ``ValidationError`` when malformed)."""
    prefix = await reader.readexactly(protocol.FRAME.size)
    try:
        size = protocol.frame_length(prefix)
        return protocol.decode_frame(await reader.readexactly(size))
    except kernel_errors.InvalidRequest as exc:
        raise ValidationError(exc.message) from None


def error_frame(exc: DataExecError) -> bytes:
    return protocol.error_frame(exc.type, exc.message)


class _SocketSink:
    """A file-like object pyarrow's IPC writer writes into, feeding the socket."""

    def __init__(self, writer: asyncio.StreamWriter, count: Callable[[int], None]) -> None:
        self.writer = writer
        self.count = count  # bytes sent, for the metrics
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)  # no copy of our own; the transport keeps what it cannot send
        self.writer.write(view)
        self.count(view.nbytes)
        return view.nbytes

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


MARKER_WAIT_S = 30.0  # a kernel that answers "go" with nothing is hung up on


async def _receive_fd(writer: asyncio.StreamWriter) -> int | None:
    """The descriptor sent with the next byte on a connection whose transport is paused,
    or None when that byte came without one."""
    loop = asyncio.get_running_loop()
    transport = writer.get_extra_info("socket")
    with socket.socket(fileno=os.dup(transport.fileno())) as sock:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, 1, 1)
            except BlockingIOError:
                await _readable(loop, sock)
                continue
            if not data:
                for fd in fds:
                    os.close(fd)
                raise ConnectionError("the kernel hung up")
            return fds[0] if fds else None


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await asyncio.wait_for(ready, MARKER_WAIT_S)
    finally:
        loop.remove_reader(sock.fileno())


def _copied_stream(fd: int, size: int) -> pa.Table:
    """The Arrow stream in the first ``size`` bytes of a kernel's memfd, copied out first.

    The kernel writes its next puts into the same memory, and may change it at any time:
    nothing is read from it in place. Read, not mapped: a file the kernel shrinks meanwhile
    gives a short read, never a SIGBUS in the server.
    """
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size < size or size == 0:
        raise ValidationError("put: the descriptor is not the announced frame")
    copy = pa.allocate_buffer(size)  # from pyarrow's pool, whose pages are reused
    view = memoryview(copy)
    done = 0
    while done < size:
        try:
            read = os.preadv(fd, [view[done:]], done)
        except OSError as exc:  # open for writing only, say
            raise ValidationError(f"put: the descriptor cannot be read ({exc.strerror})") from None
        if read == 0:
            raise ValidationError("put: the descriptor is not the announced frame")
        done += read
    return read_ipc(copy)


def _unique(names: list[str]) -> bool:
    return len(set(names)) == len(names)


class Broker:
    """Serves every attached kernel's socket with the guard and the query database."""

    def __init__(
        self,
        database: QueryDatabase,
        cache: Cache,
        kernel_gid: int,
        max_frame_bytes: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.database = database
        self.metrics = metrics or Metrics()
        self.cache = cache
        self.max_frame_bytes = max_frame_bytes
        self.kernel_gid = kernel_gid
        self.servers: dict[str, asyncio.AbstractServer] = {}

    async def attach(self, path: Path, caller: Caller) -> None:
        """Open a kernel's broker socket at ``path``, answering on behalf of ``caller``."""
        await asyncio.to_thread(path.unlink, missing_ok=True)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(caller, reader, writer)

        server = await asyncio.start_unix_server(handle, path=str(path))
        if os.geteuid() == 0:
            os.chown(path, 0, self.kernel_gid)
        os.chmod(path, 0o660)
        self.servers[caller.kernel_id] = server

    def detach(self, kernel_id: str) -> None:
        """Close the kernel's socket (its running queries end with their connections)."""
        server = self.servers.pop(kernel_id, None)
        if server is not None:
            server.close()

    async def _check(self, query: str, params: dict[str, Any] | None) -> str:
        """The guard, off the event loop (parameter names too: see check_query)."""
        return await asyncio.to_thread(
            check_query, query, self.database.backend, params=tuple(params or ())
        )

    async def query_table(
        self,
        tenant: str,
        query: str,
        params: dict[str, Any] | None = None,
        *,
        preview_rows: int = 0,
        hold: Hold,
    ) -> pa.Table:
        """Guard and run a query for the server itself (SQL without a session), in its turn.

        The result is held whole: its batches take their bytes from ``hold`` as they come.
        The answer will show ``preview_rows`` rows of it as JSON: ``OutputTooLarge`` when
        they hold more than ``output_limit_bytes`` (as Arrow), before any JSON is built.
        """
        checked = await self._check(query, params)
        async with self.database.gate.slot(tenant):
            log.info("sql for tenant %s (no session)", tenant)
            stream = self.database.start(checked, params)
            try:
                schema = await stream.ready()
                batches = []
                async for batch in stream:
                    await hold.grow(batch.nbytes)
                    batches.append(batch)
            finally:
                stream.cancel()
                await stream.closed()
        table = pa.Table.from_batches(batches, schema=schema)
        cap = self.database.settings.output_limit_bytes
        shown = table.slice(0, preview_rows).nbytes
        if shown > cap:
            raise OutputTooLarge(
                f"the first {min(preview_rows, table.num_rows):,} rows of the result hold "
                f"{shown:,} bytes, over the {cap:,} bytes an answer may show "
                "(output_limit_bytes); ask for fewer rows (max_rows) or fewer, shorter columns"
            )
        return table

    async def _serve(
        self, caller: Caller, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            request = await read_frame(reader)
            op = request.get("op") if isinstance(request, dict) else None
            if op == "sql":
                await self._sql(caller, request, reader, writer)
            elif op == "put":
                await self._put(caller, request, reader, writer)
            elif op == "load":
                await self._load(caller, request, writer)
            else:
                raise ValidationError("unknown broker request")
        except DataExecError as exc:
            writer.write(error_frame(exc))
        except (asyncio.IncompleteReadError, ConnectionError, QueryCancelled):
            pass  # the kernel went away
        except Exception:
            log.exception("broker request of kernel %s failed", caller.kernel_id[:12])
            writer.write(error_frame(DataExecError("internal error in the broker")))
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()

    async def _put(
        self,
        caller: Caller,
        request: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """A result frame from the kernel (an Arrow IPC stream) into the cache: its key."""
        size, kind, name = request.get("bytes"), request.get("kind", "result"), request.get("name")
        cap = self.max_frame_bytes
        if not isinstance(size, int) or size < 0:
            raise ValidationError("put needs the stream's size in bytes")
        if kind not in protocol.PUT_KINDS or not (name is None or isinstance(name, str)):
            raise ValidationError("put: unknown kind, or a name that is not a string")
        if size > cap:
            raise OutputTooLarge(f"the result frame is over {cap} bytes (sql_max_result_bytes)")
        hold = self.cache.memory.hold()
        try:
            await hold.grow(size)  # before reading it: many kernels may put at once
            if request.get("mapped") is True:
                table, direction = await self._receive_mapped(reader, writer, size)
            else:
                table, direction = read_ipc(await reader.readexactly(size)), "from_kernel"
            self.metrics.broker("put", direction, size)
            lineage = caller.lineage.of(kind, name)
            key = await self.cache.spill(caller.tenant, caller.store_id, table, lineage, hold)
        except BaseException:
            hold.release()
            raise
        writer.write(protocol.encode_frame({"ok": True, "cache_key": key}))

    async def _receive_mapped(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int
    ) -> tuple[pa.Table, str]:
        """A mapped put's frame: a memfd holding the stream, copied out; or,
        when the kernel could not pass one, the stream itself after the marker byte. With
        the metrics' direction of the bytes."""
        # Reading stops before the kernel may send: the marker must not reach the stream.
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        try:
            writer.write(protocol.encode_frame({"ok": True}))
            fd = await _receive_fd(writer)
        finally:
            writer.transport.resume_reading()  # type: ignore[attr-defined]
        if fd is None:
            return read_ipc(await reader.readexactly(size)), "from_kernel"
        try:
            return await asyncio.to_thread(_copied_stream, fd, size), "from_kernel_mapped"
        finally:
            os.close(fd)

    async def _load(
        self, caller: Caller, request: dict[str, Any], writer: asyncio.StreamWriter
    ) -> None:
        """A cached frame of the caller's tenant, streamed to the kernel as Arrow."""
        key = request.get("key")
        if not isinstance(key, str):
            raise ValidationError("load() takes a cache key string")
        mapped = request.get("mapped") is True
        entry = await self.cache.entry(caller.tenant, key, hot=mapped)
        caller.lineage.read(key)
        if mapped and await self._send_mapped(entry.key, writer):
            return
        if entry.status == "pending":  # no hot file after all: the Parquet one is needed
            entry = await self.cache.entry(caller.tenant, key)
        # Opened once: a key deleted from now on is still read whole from the open file.
        parquet = await asyncio.to_thread(self.cache.open, entry)
        schema, batches = stored_batches(parquet)  # each bounded in bytes, not only rows
        writer.write(protocol.encode_frame({"ok": True}))
        rows, sent = 0, 0
        sink = _SocketSink(writer, lambda n: self.metrics.broker("load", "to_kernel", n))
        with pa.ipc.new_stream(sink, schema) as ipc:
            # Reading and decoding Parquet is disk and cpu work: off the event loop.
            while (batch := await asyncio.to_thread(next, batches, None)) is not None:
                sent += pa.ipc.get_record_batch_size(batch)
                if sent > self.max_frame_bytes:  # the stream ends; the last frame says why
                    raise OutputTooLarge(
                        f"cache key {key} is over {self.max_frame_bytes} bytes as Arrow "
                        "(sql_max_result_bytes): load() refuses it"
                    )
                ipc.write_batch(batch)
                rows += batch.num_rows
                await writer.drain()
        writer.write(protocol.encode_frame({"ok": True, "rows": rows}))

    async def _send_mapped(self, key: str, writer: asyncio.StreamWriter) -> bool:
        """Answer a load with a descriptor of the key's hot file; False when there is none
        (or the socket would block, which a fresh connection's does not)."""
        opened = await asyncio.to_thread(self.cache.hot.open, key)
        if opened is None:
            return False
        fd, expanded = opened
        try:
            size = os.fstat(fd).st_size
            if expanded > self.max_frame_bytes:  # as the stream of it would count
                raise OutputTooLarge(
                    f"cache key {key} is over {self.max_frame_bytes} bytes as Arrow "
                    "(sql_max_result_bytes): load() refuses it"
                )
            transport = writer.get_extra_info("socket")
            # A duplicate of the connection's socket: the stream API cannot pass descriptors.
            with socket.socket(fileno=os.dup(transport.fileno())) as sock:
                head = protocol.encode_frame({"ok": True, "mapped": True})
                try:
                    sent = socket.send_fds(sock, [head], [fd])
                except BlockingIOError:
                    return False
                if sent < len(head):
                    writer.write(head[sent:])
        finally:
            os.close(fd)
        self.metrics.broker("load", "to_kernel_mapped", size)
        return True

    async def _sql(
        self,
        caller: Caller,
        request: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        query, params = request.get("query"), request.get("params")
        if not isinstance(query, str) or (params is not None and not isinstance(params, dict)):
            raise ValidationError("sql() takes a query string and a dict of parameters")
        checked = await self._check(query, params)
        # A kernel that hangs up (interrupt, timeout kill) leaves the queue, or cancels its
        # query at once.
        hangup: asyncio.Future[bytes] = asyncio.ensure_future(reader.read(1))
        try:
            async with self.database.gate.slot(caller.tenant, caller.kernel_id, abandon=hangup):
                log.info("sql for session %s of tenant %s", caller.session_id, caller.tenant)
                stream = self.database.start(checked, params)
                hangup.add_done_callback(lambda _: stream.cancel())
                try:
                    await self._write_result(caller, stream, writer)
                finally:
                    stream.cancel()
                    await stream.closed()  # its connection released: the slot may go
        finally:
            hangup.cancel()

    async def _write_result(
        self, caller: Caller, stream: QueryStream, writer: asyncio.StreamWriter
    ) -> None:
        schema = await stream.ready()
        writer.write(protocol.encode_frame({"ok": True}))
        rows = 0
        sink = _SocketSink(writer, lambda n: self.metrics.broker("sql", "to_kernel", n))
        ipc = pa.ipc.new_stream(sink, schema)
        hold = self.cache.memory.hold()
        # None once the server's share of memory ran out; never for names Parquet refuses.
        kept: list[pa.RecordBatch] | None = [] if _unique(schema.names) else None
        try:
            async for batch in stream:
                ipc.write_batch(batch)
                rows += batch.num_rows
                if kept is not None and hold.try_grow(batch.nbytes):
                    kept.append(batch)
                else:
                    kept = None
                    hold.release()
                await writer.drain()
            ipc.close()
            key = None
            if kept is not None:
                table = pa.Table.from_batches(kept, schema=schema)
                key = await self._keep(caller, table, hold)
        except BaseException as exc:
            hold.release()
            if not isinstance(exc, DataExecError):
                raise
            ipc.close()
            writer.write(error_frame(exc))
            return
        writer.write(protocol.encode_frame({"ok": True, "rows": rows, "cache_key": key}))

    async def _keep(self, caller: Caller, table: pa.Table, hold: Hold) -> str | None:
        """The key of a query's result spilled to the cache, or None when it cannot be
        (the quota): the kernel then puts the frame if a step answers it."""
        try:
            return await self.cache.spill(
                caller.tenant, caller.store_id, table, caller.lineage.of("sql", None), hold
            )
        except DataExecError as exc:  # the quota, most likely: the data itself is fine
            log.info("result of kernel %s not kept: %s", caller.kernel_id[:12], exc.message)
            hold.release()
            return None
