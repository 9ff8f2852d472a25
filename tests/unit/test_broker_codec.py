"""The broker's frames between a kernel and the server, over a real socket pair.

Owns the framing of the kernel protocol (``dataexec_kernel.protocol``: ``encode_frame``,
``frame_length``, ``decode_frame``, ``error_frame``, ``raise_error``, ``error_type``) as
both ends use it: the server reads with ``server.broker.broker.read_frame`` on asyncio
streams, the kernel with ``dataexec_kernel.broker._read_frame`` on a blocking socket
(run in a thread, as a kernel would block). Also owns the mapping of every broker error
type to the kernel exception of that type and back to the server's error class, and the
broker's refusals of malformed requests (``Broker._serve``) before any database or cache
work starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from dataexec_kernel import broker as kernel_broker
from dataexec_kernel import errors as kernel_errors
from dataexec_kernel import protocol

from server import errors
from server.broker.broker import Broker, error_frame, read_frame
from server.broker.caller import Caller
from server.cache.memory import FrameMemory

WAIT = 5.0  # no frame here takes more than milliseconds; this only stops a hang


@dataclass
class Pair:
    """The server's asyncio end and the kernel's blocking end of one socket pair."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    kernel: socket.socket

    async def kernel_send(self, data: bytes) -> None:
        await asyncio.to_thread(self.kernel.sendall, data)

    async def kernel_read_frame(self) -> Any:
        with self.kernel.makefile("rb") as stream:
            return await asyncio.to_thread(kernel_broker._read_frame, stream)

    async def kernel_answer(self) -> Any:
        with self.kernel.makefile("rb") as stream:
            return await asyncio.to_thread(kernel_broker._answer, stream)

    async def server_send(self, data: bytes, close: bool = False) -> None:
        self.writer.write(data)
        await self.writer.drain()
        if close:
            self.writer.close()


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    server_end, kernel_end = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=server_end)
    yield Pair(reader, writer, kernel_end)
    kernel_end.close()
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def server_read(pair: Pair) -> Any:
    return await asyncio.wait_for(read_frame(pair.reader), WAIT)


# --- round trips ---------------------------------------------------------------------------


async def test_requests_arrive_at_the_server_as_the_kernel_sent_them(pair: Pair) -> None:
    requests: list[Any] = [
        {"op": "sql", "query": "SELECT 'é', '✓' AS \"名\"", "params": {"d": "2024-01-31", "n": 3}},
        {"op": "put", "bytes": 123, "kind": "checkpoint", "name": None},
        {"op": "load", "key": "0f5e1a8c-0000-4000-8000-000000000000"},
    ]
    await pair.kernel_send(b"".join(protocol.encode_frame(r) for r in requests))
    for request in requests:
        assert await server_read(pair) == request


async def test_answers_arrive_at_the_kernel_as_the_server_sent_them(pair: Pair) -> None:
    answer = {"ok": True, "cache_key": "k-1", "rows": 2**40, "note": "ünïcode"}
    await pair.server_send(protocol.encode_frame(answer))
    assert await pair.kernel_answer() == answer


def test_a_frame_is_a_big_endian_length_and_a_json_document() -> None:
    frame = protocol.encode_frame({"ok": True})
    assert frame[:4] == len(frame[4:]).to_bytes(4, "big")
    assert protocol.decode_frame(frame[4:]) == {"ok": True}


def test_values_json_cannot_hold_are_sent_as_text() -> None:
    import datetime as dt

    frame = protocol.encode_frame({"when": dt.date(2024, 2, 29)})
    assert protocol.decode_frame(frame[4:]) == {"when": "2024-02-29"}


def test_a_frame_of_exactly_the_limit_is_accepted_and_one_byte_more_refused() -> None:
    limit = protocol.MAX_REQUEST_BYTES
    assert protocol.frame_length(protocol.FRAME.pack(limit)) == limit
    with pytest.raises(kernel_errors.InvalidRequest, match="over"):
        protocol.frame_length(protocol.FRAME.pack(limit + 1))


# --- refusals ------------------------------------------------------------------------------


async def test_a_frame_over_the_request_limit_is_refused_before_its_body_is_read(
    pair: Pair,
) -> None:
    # Only the length is sent: waiting for the body would hang (and be stopped by WAIT).
    await pair.kernel_send(protocol.FRAME.pack(protocol.MAX_REQUEST_BYTES + 1))
    with pytest.raises(errors.ValidationError, match="over"):
        await server_read(pair)


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe\xfd", b'{"op": "sql"'], ids=repr)
async def test_a_frame_that_is_not_json_is_refused_as_validation_error(
    pair: Pair, body: bytes
) -> None:
    await pair.kernel_send(protocol.FRAME.pack(len(body)) + body)
    with pytest.raises(errors.ValidationError, match="not JSON") as refused:
        await server_read(pair)
    assert refused.value.type == "VALIDATION_ERROR" and refused.value.status == 400


@pytest.mark.parametrize("sent", [b"\x00\x00", protocol.encode_frame({"op": "load"})[:-3]])
async def test_a_kernel_that_hangs_up_mid_frame_ends_the_read_as_incomplete(
    pair: Pair, sent: bytes
) -> None:
    await pair.kernel_send(sent)
    pair.kernel.close()
    with pytest.raises(asyncio.IncompleteReadError):
        await server_read(pair)


async def test_a_broker_that_hangs_up_before_a_whole_length_is_an_error_in_the_kernel(
    pair: Pair,
) -> None:
    await pair.server_send(b"\x00\x00", close=True)
    with pytest.raises(kernel_errors.DataExecError, match="closed the connection"):
        await pair.kernel_read_frame()


async def test_a_broker_that_hangs_up_mid_body_is_an_error_in_the_kernel(pair: Pair) -> None:
    await pair.server_send(protocol.encode_frame({"ok": True, "rows": 10})[:-4], close=True)
    with pytest.raises(kernel_errors.DataExecError):
        await pair.kernel_read_frame()


# --- error types both ways -----------------------------------------------------------------


@pytest.mark.parametrize("kernel_class", kernel_errors.BROKER_ERRORS, ids=lambda c: c.type)
async def test_every_broker_error_raises_the_kernel_exception_of_its_type(
    pair: Pair, kernel_class: type[kernel_errors.DataExecError]
) -> None:
    server_class = errors.error_class(kernel_class.type)
    assert server_class.type == kernel_class.type
    await pair.server_send(error_frame(server_class("refused: the reason")))
    with pytest.raises(kernel_errors.DataExecError) as raised:
        await pair.kernel_answer()
    assert type(raised.value) is kernel_class
    assert raised.value.message == "refused: the reason"
    assert raised.value.type == server_class.type


def test_a_broker_error_of_a_type_the_kernel_does_not_know_raises_the_base_exception() -> None:
    with pytest.raises(kernel_errors.DataExecError) as raised:
        protocol.raise_error({"type": "KERNEL_DIED", "message": "gone"})
    assert type(raised.value) is kernel_errors.DataExecError and raised.value.message == "gone"
    with pytest.raises(kernel_errors.DataExecError, match="refused"):
        protocol.raise_error({})


@pytest.mark.parametrize("kernel_class", kernel_errors.BROKER_ERRORS, ids=lambda c: c.type)
def test_a_kernel_exception_escaping_user_code_maps_back_to_the_servers_type(
    kernel_class: type[kernel_errors.DataExecError],
) -> None:
    found = protocol.error_type(kernel_class.__name__)
    if kernel_class.type in ("EXECUTION_ERROR", "VALIDATION_ERROR"):
        # Documented: a database error or refused request that user code let escape is
        # the user's code failing (EXECUTION_ERROR with its traceback), not a type of ours.
        assert found is None
    else:
        assert found == kernel_class.type
        assert errors.error_class(found).type == kernel_class.type


def test_names_of_other_exceptions_map_to_no_error_type() -> None:
    for name in ("ValueError", "KeyError", "DataExecError", "sqlnotallowed", ""):
        assert protocol.error_type(name) is None


def test_every_broker_error_type_is_one_the_server_answers_with() -> None:
    server_types = {errors.error_class(c.type).type for c in kernel_errors.BROKER_ERRORS}
    assert server_types == {c.type for c in kernel_errors.BROKER_ERRORS}
    assert set(kernel_errors.BY_TYPE) == server_types


# --- the broker's refusals (Broker._serve) -------------------------------------------------


class Untouchable:
    """A stand-in for the query database or the cache that records any use of it.

    The cache's ``memory`` is real: a put takes its bytes before reading them, and a refused
    put must give them back (``serve_one`` checks).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self.touched: list[str] = []
        if name == "cache":
            self.memory = FrameMemory(limit=1 << 20, wait_s=0)

    def __getattr__(self, attribute: str) -> Any:
        self.touched.append(attribute)
        raise AssertionError(f"the broker used {self._name}.{attribute}")


@pytest.fixture
def stubs() -> tuple[Untouchable, Untouchable]:
    return Untouchable("database"), Untouchable("cache")


async def serve_one(pair: Pair, stubs: tuple[Untouchable, Untouchable], request: bytes) -> Any:
    """Send ``request`` to ``Broker._serve`` and read its answer frame and what follows."""
    database, cache = stubs
    broker = Broker(database, cache, kernel_gid=0, max_frame_bytes=1024)  # type: ignore[arg-type]
    caller = Caller(tenant="acme", session_id="s1", kernel_id="kernel-under-test-0000")
    serving = asyncio.ensure_future(broker._serve(caller, pair.reader, pair.writer))
    await pair.kernel_send(request)
    await asyncio.wait_for(serving, WAIT)
    with pair.kernel.makefile("rb") as stream:
        answer = await asyncio.to_thread(kernel_broker._read_frame, stream)
        rest = await asyncio.to_thread(stream.read)
    assert rest == b"", "one answer, then the broker closes the connection"
    assert database.touched == [] and cache.touched == []
    assert cache.memory.used == 0
    return answer


@pytest.mark.parametrize(
    "request_document",
    [
        {"op": "drop_table"},
        {"query": "SELECT 1"},
        ["op", "sql"],
        "sql",
        {"op": "put", "bytes": -1, "kind": "result", "name": None},
        {"op": "put", "bytes": "ten", "kind": "result", "name": None},
        {"op": "put", "kind": "result", "name": None},
        {"op": "put", "bytes": 10, "kind": "everything", "name": None},
        {"op": "put", "bytes": 10, "kind": "save", "name": ["not", "a", "string"]},
        {"op": "load", "key": None},
        {"op": "sql", "query": None, "params": None},
        {"op": "sql", "query": "SELECT 1", "params": ["positional"]},
    ],
    ids=repr,
)
async def test_a_malformed_request_is_answered_validation_error_without_data_work(
    pair: Pair, stubs: tuple[Untouchable, Untouchable], request_document: Any
) -> None:
    answer = await serve_one(pair, stubs, protocol.encode_frame(request_document))
    assert answer["ok"] is False and answer["error"]["type"] == "VALIDATION_ERROR"
    assert answer["error"]["message"]


async def test_a_request_that_is_not_json_is_answered_validation_error(
    pair: Pair, stubs: tuple[Untouchable, Untouchable]
) -> None:
    answer = await serve_one(pair, stubs, protocol.FRAME.pack(5) + b"{op: ")
    assert answer["error"]["type"] == "VALIDATION_ERROR"


async def test_a_put_whose_bytes_are_not_arrow_is_refused_before_the_cache(
    pair: Pair, stubs: tuple[Untouchable, Untouchable]
) -> None:
    request = {"op": "put", "bytes": 12, "kind": "result", "name": "df"}
    answer = await serve_one(pair, stubs, protocol.encode_frame(request) + b"not an arrow")
    assert answer["error"]["type"] == "VALIDATION_ERROR"
    assert "Arrow" in answer["error"]["message"]


async def test_a_put_over_the_frame_cap_is_refused_before_its_bytes_are_read(
    pair: Pair, stubs: tuple[Untouchable, Untouchable]
) -> None:
    request = {"op": "put", "bytes": 1025, "kind": "result", "name": None}
    answer = await serve_one(pair, stubs, protocol.encode_frame(request))
    assert answer["error"]["type"] == "OUTPUT_TOO_LARGE"


async def test_the_kernel_raises_invalid_request_for_a_validation_answer(
    pair: Pair, stubs: tuple[Untouchable, Untouchable]
) -> None:
    database, cache = stubs
    broker = Broker(database, cache, kernel_gid=0, max_frame_bytes=1024)  # type: ignore[arg-type]
    caller = Caller(tenant="acme", session_id="", kernel_id="kernel-under-test-0001")
    serving = asyncio.ensure_future(broker._serve(caller, pair.reader, pair.writer))
    await pair.kernel_send(protocol.encode_frame({"op": "vacuum"}))
    with pytest.raises(kernel_errors.InvalidRequest, match="unknown broker request"):
        await pair.kernel_answer()
    await asyncio.wait_for(serving, WAIT)
