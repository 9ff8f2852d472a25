"""What every handler shares: auth, JSON in and out, and the one error shape.

Handlers stay thin: parse and validate here, call one service, serialize. Every error is
rendered by ``write_error`` as ``{"detail": {"type", "message", ...}}`` with a ``request_id``;
an unexpected exception becomes ``INTERNAL`` with no internals in the message. Each handler
declares its operations in ``api``, from which ``/openapi.json`` is built.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import orjson
import tornado.web

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
from server.runtime import Runtime

log = logging.getLogger("server.http")
T = TypeVar("T")


@dataclass(frozen=True)
class Operation:
    """One operation of a handler, as ``/openapi.json`` describes it.

    ``answer`` is the JSON answer's body (at ``status``), or ``download`` the content type
    of a binary one; ``body`` the JSON request body, or ``upload`` a binary one's type;
    ``errors`` the HTTP statuses it may answer with an error (401 is added unless public);
    ``accepted`` other success statuses with what they mean.
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

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        self.set_header("X-Request-Id", self.request_id)
        length = self.request.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.settings_obj.max_body_bytes:
            raise PayloadTooLarge(f"request body over {self.settings_obj.max_body_bytes} bytes")
        if not self.public:
            self.tenant = self.auth.authenticate(self.request.headers.get("Authorization"))

    def current_tenant(self) -> TenantSettings:
        """The authenticated tenant (not the operator)."""
        assert self.tenant is not None
        self.auth.require_tenant(self.tenant)
        return self.tenant

    def body(self, kind: type[T]) -> T:
        """The request body decoded as ``kind`` (see ``bodies``); ValidationError otherwise."""
        return bodies.decode(self.request.body, kind)

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
            log.error("request %s failed", self.request_id, exc_info=kwargs.get("exc_info"))
            error = DataExecError("internal error; quote the request_id when reporting it")
        self.set_status(error.status)
        self.set_header("X-Request-Id", self.request_id)
        if error.status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="dataexec"')
        if error.retry_after is not None:
            self.set_header("Retry-After", str(int(error.retry_after)))
        self.finish(
            orjson.dumps({"detail": {**error.detail(), "request_id": self.request_id}}, default=str)
        )

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Our own errors are answers, not server faults: log them briefly.
        if isinstance(value, DataExecError):
            log.info(
                "%s %s -> %s %s", self.request.method, self.request.path, value.status, value.type
            )
        else:
            super().log_exception(typ, value, tb)


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

    def prepare(self) -> None:
        super().prepare()
        raise NotFound("no such endpoint")
