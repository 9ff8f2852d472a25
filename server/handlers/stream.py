"""Server-Sent Events: the answer of an execution asked for with ``"stream": true``.

Once the cell starts, the answer is ``200 text/event-stream``, on a connection with
TCP_NODELAY, each event flushed as soon as it is written:

    event: stream    data: a chunk of stdout or stderr: {"output_type": "stream", "name", "text"}
    event: display   data: a display_data or execute_result output (nbformat v4), e.g. a PNG
    : keep-alive     a comment after every ``KEEPALIVE_S`` seconds without an event
    event: result    data: exactly the body the call answers without stream (the last event)
    event: error     data: the error shape, {"detail": {"type", "message", ...}} (the last)

A failed cell's error output is no event of its own: it is in the ``error`` event (ename,
evalue, traceback, outputs). What fails before the cell starts (the body, auth, a rate
limit, SESSION_BUSY, no kernel to be had) answers plain JSON with its status, as without
stream. What is streamed is bounded by the cell's output limit (then OUTPUT_TOO_LARGE
ends the stream). A client that goes away is treated as without stream: its cell is
interrupted (``interrupt_on_disconnect``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError

from server.errors import DataExecError
from server.handlers.base import BaseHandler
from server.sessions.outputs import OutputFeed

# Under the idle timeouts of the proxies in front of servers (commonly 60 s), with room.
KEEPALIVE_S = 15.0
EVENTS = {"stream": "stream", "display_data": "display", "execute_result": "display"}
DESCRIPTION = (
    'with "stream": true, once the cell starts: events `stream` (a stdout/stderr chunk), '
    "`display` (a display_data or execute_result output), `: keep-alive` comments after "
    f"each {KEEPALIVE_S:g} s of quiet, then `result` (the JSON answer) or `error` (the error "
    "shape); errors before the cell starts answer JSON"
)


async def answer_with_events(
    handler: BaseHandler, request: asyncio.Future[dict[str, Any]], feed: OutputFeed
) -> None:
    """Answer ``request`` (running with ``feed``) as events once its cell starts; as JSON
    if it ends before that."""
    request.add_done_callback(lambda _: feed.finish())
    if not await feed.wait_started(request):
        handler.write_json(await request)
        return
    events = EventStream(handler)
    try:
        await events.open()
        async for output in feed.outputs(KEEPALIVE_S):
            if output is None:
                await events.comment("keep-alive")
            elif output["output_type"] in EVENTS:
                await events.send(EVENTS[output["output_type"]], output)
        await asyncio.wait({request})
        if request.cancelled():
            return  # the client went away (``on_connection_close``): nobody to tell
        error = request.exception()
        if error is None:
            await events.send("result", request.result())
        else:
            await events.send("error", error_shape(handler, error))
        handler.finish()
    except StreamClosedError:
        handler.on_connection_close()  # as if Tornado had seen the close first
        await asyncio.wait({request})
        if not request.cancelled():
            request.exception()  # retrieved: the answer had nobody to go to


def error_shape(handler: BaseHandler, error: BaseException) -> dict[str, Any]:
    """``{"detail": ...}`` of ``error`` as ``write_error`` renders it (INTERNAL, logged, for
    anything but our errors)."""
    if not isinstance(error, DataExecError):
        handler.log_exception(type(error), error, error.__traceback__)
        error = DataExecError("internal error; quote the request_id when reporting it")
    handler.error_type = error.type  # the request's log line names it, as write_error's
    return {"detail": {**error.detail(), "request_id": handler.request_id}}


class EventStream:
    """An answer of ``text/event-stream``, each event on the wire as soon as it is sent."""

    def __init__(self, handler: BaseHandler) -> None:
        self.handler = handler

    async def open(self) -> None:
        """Send the status and headers now, with Nagle's algorithm off for this answer."""
        handler = self.handler
        handler.set_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.set_header("X-Accel-Buffering", "no")  # a proxy (nginx) must not buffer it
        connection = handler.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.stream.set_nodelay(True)  # Tornado turns it off again when we finish
        await handler.flush()

    async def send(self, event: str, data: Any) -> None:
        """One event whose data is ``data`` as JSON (one line: JSON escapes newlines)."""
        encoded = orjson.dumps(data, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
        self.handler.write(b"event: " + event.encode() + b"\ndata: " + encoded + b"\n\n")
        await self.handler.flush()

    async def comment(self, text: str) -> None:
        """A comment line, which clients ignore (keeps proxies from closing a quiet answer)."""
        self.handler.write(f": {text}\n\n".encode())
        await self.handler.flush()
