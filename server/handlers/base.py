"""What every handler shares: auth, JSON in and out, and the one error shape.

Handlers stay thin: parse and validate here, call one service, serialize. Every error is
rendered by ``write_error`` as ``{"detail": {"type", "message", ...}}`` with a ``request_id``;
an unexpected exception becomes ``INTERNAL`` with no internals in the message. Each handler
declares its operations in ``api``, from which ``/openapi.json`` is built.

Bodies are streamed (``stream_request_body``): ``prepare`` runs once the headers are in,
refuses a ``Content-Length`` over ``max_body_bytes`` before reading a byte of it, and
``data_received`` collects the body into ``request.body`` until it would pass the cap (a
chunked body has no length to check first). Both answer ``413 PAYLOAD_TOO_LARGE`` in the
error shape; Tornado's own cap, which answers a bare 400, is lifted for our requests.
Every answer, errors included, carries ``Strict-Transport-Security`` when the server
serves HTTPS and CORS headers for a configured origin (``cors_origins``; none otherwise).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, cast

import orjson
import tornado.web
from tornado.http1connection import HTTP1Connection

from server.auth import Authenticator
from server.config import Settings, TenantSettings
from server.errors import (
    DataExecError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ValidationError,
)
from server.handlers import bodies
from server.handlers.edge import HeadLimitedStream
from server.runtime import Runtime
from server.telemetry.logs import REQUEST_ID

log = logging.getLogger("server.http")
T = TypeVar("T")
# Tornado's per-request body cap, lifted: data_received applies max_body_bytes itself.
UNCAPPED = 1 << 62
HSTS = "max-age=31536000"


@dataclass(frozen=True)
class Operation:
    """One operation of a handler, as ``/openapi.json`` describes it.

    ``answer`` is the JSON answer's body (at ``status``), or ``download`` the content type
    of a binary one; ``body`` the JSON request body, or ``upload`` a binary one's type;
    ``errors`` the HTTP statuses it may answer with an error (401 is added unless public);
    ``accepted`` other success statuses with what they mean; ``events`` what the success
    answer's ``text/event-stream`` alternative sends (Server-Sent Events), if it has one.
    """

    summary: str
    answer: type | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    body: type | None = None
    download: str | None = None
    upload: str | None = None
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    accepted: dict[int, str] = field(default_factory=dict)
    events: str | None = None


@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    """JSON API handler; ``public`` handlers skip authentication."""

    public = False
    api: ClassVar[dict[str, Operation]] = {}
    settings_obj: Settings
    runtime: Runtime
    auth: Authenticator

    def initialize(self, settings: Settings, runtime: Runtime, auth: Authenticator) -> None:
        self.settings_obj = settings
        self.runtime = runtime
        self.auth = auth
        self.request_id = uuid.uuid4().hex
        self.tenant: TenantSettings | None = None
        self.error_type: str | None = None  # the type of the error answered, for the log
        # Grown in place by data_received; read as bytes wherever the body is read.
        self.request.body = cast(bytes, bytearray())
        self.body_refused = False
        # Set once prepare() let the request in. An answer given before (an error of the
        # checks at the door) is given before Tornado read the request to its end, and
        # Tornado closes such a connection after it.
        self.admitted = False
        self.set_edge_headers()

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def set_edge_headers(self) -> None:
        """HSTS when serving HTTPS; CORS headers when the request comes from a listed origin."""
        settings = self.settings_obj
        if settings.tls_cert_file:
            self.set_header("Strict-Transport-Security", HSTS)
        if settings.cors_origins:
            self.set_header("Vary", "Origin")
            origin = self.request.headers.get("Origin")
            if origin in settings.cors_origins:
                self.set_header("Access-Control-Allow-Origin", origin)
                self.set_header("Access-Control-Expose-Headers", "X-Request-Id, Retry-After")

    def prepare(self) -> None:
        REQUEST_ID.set(self.request_id)  # for this request's task and the tasks it starts
        self.set_header("X-Request-Id", self.request_id)
        self.refuse_oversized_body()
        if not self.public and not self.is_preflight():  # a preflight carries no token
            self.tenant = self.auth.authenticate(self.request.headers.get("Authorization"))
            self.runtime.sessions.limits.admit_request(self.tenant)
            self.authorize(self.tenant)
        self.admitted = True

    def authorize(self, tenant: TenantSettings) -> None:
        """Refuse an authenticated ``tenant`` this handler is not for (all may, here)."""

    def refuse_oversized_body(self) -> None:
        """PAYLOAD_TOO_LARGE when Content-Length is over the cap (nothing of it is read)."""
        connection = self.request.connection
        assert isinstance(connection, HTTP1Connection)
        connection.set_max_body_size(UNCAPPED)
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.settings_obj.max_body_bytes:
            raise PayloadTooLarge(f"request body over {self.settings_obj.max_body_bytes} bytes")

    def data_received(self, chunk: bytes) -> None:
        body = self.request.body
        assert isinstance(body, bytearray)
        if self.body_refused:
            return
        if len(body) + len(chunk) > self.settings_obj.max_body_bytes:
            # Answered now: Tornado drops the rest and closes the connection.
            self.body_refused = True
            error = PayloadTooLarge(f"request body over {self.settings_obj.max_body_bytes} bytes")
            self.send_error(error.status, exc_info=(PayloadTooLarge, error, None))
            return
        body += chunk

    def body_unread(self) -> bool:
        """Whether the request has a body not (yet) read in full (answering before it)."""
        headers = self.request.headers
        length = headers.get("Content-Length", "")
        if length.isdigit():
            return len(self.request.body) < int(length)
        return "chunked" in headers.get("Transfer-Encoding", "").lower()

    def is_preflight(self) -> bool:
        """Whether this is a CORS preflight from a configured origin."""
        headers = self.request.headers
        return (
            self.request.method == "OPTIONS"
            and headers.get("Origin") in self.settings_obj.cors_origins
            and "Access-Control-Request-Method" in headers
        )

    def options(self, *args: str, **kwargs: str) -> None:
        """A CORS preflight from a configured origin; any other OPTIONS is not allowed."""
        if not self.is_preflight():
            raise MethodNotAllowed("method not allowed on this endpoint")
        self.set_header("Access-Control-Allow-Methods", ", ".join(m.upper() for m in self.api))
        self.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    def current_tenant(self) -> TenantSettings:
        """The authenticated tenant (not the operator)."""
        assert self.tenant is not None
        self.auth.require_tenant(self.tenant)
        return self.tenant

    def body(self, kind: type[T]) -> T:
        """The JSON request body decoded as ``kind`` (see ``bodies``), its code within
        ``max_code_bytes``: ValidationError or UnsupportedMediaType otherwise."""
        body = self.request.body
        bodies.check_json_type(self.request.headers.get("Content-Type"), body)
        decoded = bodies.decode(body, kind)
        bodies.check_code_length(decoded, self.settings_obj.max_code_bytes)
        return decoded

    def max_rows(self, value: int | None) -> int:
        """A request's ``max_rows``: the configured default, within the configured cap."""
        settings = self.settings_obj
        if value is None:
            return settings.max_rows_default
        if value > settings.max_rows_cap:
            raise ValidationError(f"max_rows must be an integer from 0 to {settings.max_rows_cap}")
        return value

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, tornado.web.HTTPError) and not isinstance(error, DataExecError):
            error = _from_http_error(error)
        if not isinstance(error, DataExecError):
            error = DataExecError("internal error; quote the request_id when reporting it")
        self.error_type = error.type
        self.set_status(error.status)
        self.set_header("X-Request-Id", self.request_id)
        self.set_edge_headers()
        if not self.admitted or self.body_unread():
            # Tornado closes the connection after this answer: say so, lest a client send
            # its next request on it as it closes.
            self.set_header("Connection", "close")
        if self.body_unread():
            connection = self.request.connection
            stream = connection.stream if isinstance(connection, HTTP1Connection) else None
            if isinstance(stream, HeadLimitedStream):
                stream.linger_on_close = True  # the client may still be sending the body
        if error.status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="dataexec"')
        if error.retry_after is not None:
            self.set_header("Retry-After", str(int(error.retry_after)))
        self.finish(
            orjson.dumps({"detail": {**error.detail(), "request_id": self.request_id}}, default=str)
        )

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Method and path only: the query string and the headers may carry a token.
        method, path = self.request.method, self.request.path
        if isinstance(value, DataExecError):  # an answer, not a server fault: briefly
            log.info("%s %s -> %s %s", method, path, value.status, value.type)
        elif isinstance(value, tornado.web.HTTPError):
            log.info("%s %s -> %s", method, path, value.status_code)
        else:
            log.error(
                "%s %s: request %s failed", method, path, self.request_id, exc_info=(typ, value, tb)
            )


def _from_http_error(error: tornado.web.HTTPError) -> DataExecError:
    if error.status_code == 404:
        return NotFound("no such endpoint")
    if error.status_code == 405:
        return MethodNotAllowed("method not allowed on this endpoint")
    if error.status_code == 413:
        return PayloadTooLarge("request body too large")
    if 400 <= error.status_code < 500:
        return ValidationError(error.log_message or "bad request")
    return DataExecError("internal error")


class NotFoundHandler(BaseHandler):
    """Unknown paths answer NOT_FOUND in the error shape."""

    public = True

    def not_found(self, *args: Any, **kwargs: Any) -> None:
        # Answered by the method, not prepare(): after the request was read, on a
        # connection that stays open.
        raise NotFound("no such endpoint")

    get = post = put = patch = delete = head = options = not_found
