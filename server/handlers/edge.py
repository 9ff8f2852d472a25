"""The HTTP server in front of the handlers: its size limits, timeouts and TLS.

``make_http_server`` is the one place a DataExec HTTP server is built (``dataexec serve``
and the tests alike), from the settings:

- **Request heads** (request line and headers) are read up to ``max_header_bytes``. Tornado
  closes a connection whose head is longer without a word; ``HeadLimitedStream`` answers
  it ``431 HEADERS_TOO_LARGE`` in the error shape first.
- **Lingering close**: closing a socket with input unread resets the connection, and the
  client loses the answer it was sent just before (the 431 above, a 413 or 401 answered
  before the body was read). ``HeadLimitedStream`` then shuts its side, reads and drops
  what the client still sends (at most twice ``max_body_bytes``, ``LINGER_S`` seconds)
  and closes after. Over TLS the stream is Tornado's own: an over-long head is closed
  without an answer, and an early answer may be lost to a reset.
- **Bodies**: ``BaseHandler`` streams them and answers ``413 PAYLOAD_TOO_LARGE`` itself,
  from ``Content-Length`` before reading, or once a chunked body passes
  ``max_body_bytes``; Tornado's own cap (a bare 400) is only the backstop.
- **Timeouts**: ``header_timeout_s`` closes idle keep-alive connections and heads that
  trickle in; ``body_timeout_s`` bodies that do.
- **Keep-alive**: Tornado closes a connection after an answer given before the request was
  read to its end: the refusals at the door (401, 403, 405, 413, 429). ``BaseHandler`` says
  so with ``Connection: close``, lest a client send its next request on it as it closes;
  every other answer (a 404 of an unknown path included) keeps the connection open.
- **TLS** from ``tls_cert_file``/``tls_key_file`` (TLS 1.2 or later); ``BaseHandler`` sends
  ``Strict-Transport-Security`` when it is on.
- **Logs**: Tornado's lines about malformed requests lose the values they quote
  (``access_log``), so no token reaches the log that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import uuid
from typing import Any

import orjson
import tornado.httpserver
import tornado.web
from tornado.iostream import IOStream, StreamClosedError, UnsatisfiableReadError

from server.config import Settings
from server.errors import ConfigError, HeadersTooLarge
from server.handlers.access_log import scrub_tornado_logs

log = logging.getLogger("server.http")

# How long, and how much, an over-long head's sender is read (and dropped) after its 431.
LINGER_S = 5.0


def make_http_server(
    settings: Settings, app: tornado.web.Application
) -> tornado.httpserver.HTTPServer:
    """The HTTP(S) server for ``app`` with the limits and timeouts of ``settings``."""
    scrub_tornado_logs()
    return EdgeServer(
        app,
        max_header_size=settings.max_header_bytes,
        max_body_size=settings.max_body_bytes,
        idle_connection_timeout=settings.header_timeout_s,
        body_timeout=settings.body_timeout_s,
        ssl_options=tls_context(settings),
        xheaders=False,
        decompress_request=False,
    )


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context, or None when it serves plain HTTP; ConfigError if unusable."""
    if not settings.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError([f"tls_cert_file and tls_key_file: cannot be used: {exc}"]) from None
    return context


class EdgeServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTP server, reading plain connections through ``HeadLimitedStream``."""

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.lingering: set[asyncio.Task[None]] = set()

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        # A plain IOStream has not touched the event loop yet, so another may take its socket.
        if type(stream) is IOStream:
            stream = HeadLimitedStream(
                stream.socket,
                self,
                max_buffer_size=stream.max_buffer_size,
                read_chunk_size=stream.read_chunk_size,
            )
        super().handle_stream(stream, address)

    def linger(self, sock: socket.socket) -> None:
        """Read and drop what ``sock``'s peer still sends (bounded), then close it."""
        limit = 2 * (self.conn_params.max_body_size or 0)  # an upload cut short, and more
        task = asyncio.ensure_future(_drain(sock, limit))
        self.lingering.add(task)
        task.add_done_callback(self.lingering.discard)


class HeadLimitedStream(IOStream):
    """An IOStream that answers 431 when the head it was reading overran its limit, and
    that lingers when it closes with input unread (an answer given before the body)."""

    def __init__(self, sock: socket.socket, server: EdgeServer, **kwargs: Any) -> None:
        super().__init__(sock, **kwargs)
        self.server = server
        # Set when an answer goes out before the request's body was read: the body may be
        # still in flight, so an empty receive buffer at close does not mean it is over.
        self.linger_on_close = False

    def close_fd(self) -> None:
        # Tornado's HTTP reader asks for the head with max_bytes; overrunning it is the one
        # UnsatisfiableReadError an HTTP server stream sees.
        if isinstance(self.error, UnsatisfiableReadError):
            self.answer_head_too_large()
        elif self.linger_on_close or _unread_input(self.socket):  # e.g. an early 413
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_WR)
                self.server.linger(self.socket)
                return
            super().close_fd()
        else:
            super().close_fd()

    def answer_head_too_large(self) -> None:
        """Write 431 in the error shape, then linger; close at once if the peer is gone."""
        request_id = uuid.uuid4().hex
        error = HeadersTooLarge("request line and headers are too large")
        body = orjson.dumps({"detail": {**error.detail(), "request_id": request_id}})
        head = (
            f"HTTP/1.1 {error.status} Request Header Fields Too Large\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Cache-Control: no-store\r\nX-Request-Id: {request_id}\r\nConnection: close\r\n\r\n"
        )
        log.info("request %s: head over its limit, answered %d", request_id, error.status)
        try:
            self.socket.send(head.encode() + body)  # a few hundred bytes: fits the send buffer
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            super().close_fd()
            return
        self.server.linger(self.socket)


def _unread_input(sock: socket.socket) -> bool:
    """Whether the peer sent bytes nobody read (closing now would reset the connection)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing there (BlockingIOError), or the connection is gone
        return False


async def _drain(sock: socket.socket, limit: int) -> None:
    stream = IOStream(sock)
    dropped = 0

    async def drain() -> None:
        nonlocal dropped
        while dropped <= limit:
            dropped += len(await stream.read_bytes(65536, partial=True))

    with contextlib.suppress(StreamClosedError, asyncio.TimeoutError):
        await asyncio.wait_for(drain(), LINGER_S)
    stream.close()
