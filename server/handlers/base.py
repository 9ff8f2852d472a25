"""What every handler shares: auth, JSON in and out, and the one error shape.

Handlers stay thin: parse and validate here, call one service, serialize. Every error is
rendered by ``write_error`` as ``{"detail": {"type", "message", ...}}`` with a ``request_id``;
an unexpected exception becomes ``INTERNAL`` with no internals in the message.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

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
from server.runtime import Runtime

log = logging.getLogger("server.http")


class BaseHandler(tornado.web.RequestHandler):
    """JSON API handler; ``public`` handlers skip authentication."""

    public = False
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

    def json_body(self) -> dict[str, Any]:
        """The request body as a JSON object (an empty body is an empty object)."""
        if not self.request.body:
            return {}
        try:
            body = orjson.loads(self.request.body)
        except orjson.JSONDecodeError as exc:
            raise ValidationError(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValidationError("request body must be a JSON object")
        return body

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


def int_field(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    """An integer field within [low, high], or its default."""
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(f"{name} must be an integer from {low} to {high}")
    return value


def str_field(
    body: dict[str, Any], name: str, *, required: bool = False, choices: tuple[str, ...] = ()
) -> str | None:
    """A string field (optionally one of ``choices``)."""
    value = body.get(name)
    if value is None:
        if required:
            raise ValidationError(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string")
    if choices and value not in choices:
        raise ValidationError(f"{name} must be one of {', '.join(choices)}")
    return value
