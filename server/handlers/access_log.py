"""What the HTTP layer writes to the log, and what it never writes: a token or a password.

A token can reach a request in its ``Authorization`` header (well-formed or not), in the
query string (``?token=...``), or in any other header a client invents. So:

- the access log (``log_request``, Tornado's ``log_function``) gives the path and only the
  query parameters the route declares (``Operation.query``), with their values; others are
  counted, never named;
- Tornado's own lines about malformed requests (``Invalid header value '...'``) lose the
  quoted value they carry (``WithoutRequestValues`` on Tornado's loggers);
- our own lines (``BaseHandler.log_exception``) name the method and the path only;
- the request's JSON fields (``server.telemetry.logs``) add its id, tenant name, route
  pattern, status, error type and duration: nothing a client sent but the path.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode

import tornado.web
from tornado.log import access_log

# What follows the first quote or colon of Tornado's messages about malformed requests is
# the offending value (a header value, a host, a query string): it is dropped.
_VALUE = re.compile(r"""\s*[:'"].*""", re.DOTALL)
# A named group of a route pattern, as /openapi.json writes it: (?P<name>...) -> {name}.
_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")


def log_request(handler: tornado.web.RequestHandler) -> None:
    """One access-log line per request, as Tornado's own but without undeclared query values
    (in JSON, with its request id, tenant, route and error type); counted in the metrics."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    seconds = request.request_time()
    route = route_of(handler)
    target = loggable_target(handler)
    runtime = getattr(handler, "runtime", None)
    if runtime is not None:
        runtime.metrics.request(route, request.method or "", status, seconds)
    tenant = getattr(handler, "tenant", None)
    event = {
        "event": "request",
        "request_id": getattr(handler, "request_id", None),
        "tenant": getattr(tenant, "name", None),
        "session": (handler.path_kwargs or {}).get("session_id"),
        "method": request.method,
        "route": route,
        "path": target,
        "status": status,
        "error_type": getattr(handler, "error_type", None),
        "duration_ms": round(1000.0 * seconds, 3),
        "remote_ip": request.remote_ip,
    }
    access_log.log(
        level,
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        target,
        request.remote_ip,
        1000.0 * seconds,
        extra={"event": event},
    )


def route_of(handler: tornado.web.RequestHandler) -> str:
    """The route pattern that matched (``/sessions/{session_id}``), never the raw path: a
    bounded label for the metrics; ``unmatched`` for paths no route knows."""
    for pattern, handler_class in handler.application.settings.get("api_routes", ()):
        if type(handler) is handler_class:
            return _GROUP.sub(r"{\1}", pattern)
    return "unmatched"


def loggable_target(handler: tornado.web.RequestHandler) -> str:
    """The request's path with the query parameters its route declares, the others counted."""
    request = handler.request
    if not request.query:
        return request.path
    operation = getattr(handler, "api", {}).get((request.method or "").lower())
    declared = operation.query if operation is not None else {}
    pairs = parse_qsl(request.query, keep_blank_values=True)
    kept = [(name, value) for name, value in pairs if name in declared]
    target = request.path + ("?" + urlencode(kept) if kept else "")
    hidden = len(pairs) - len(kept) if pairs else 1
    return target + (f" [{hidden} query parameter(s) not logged]" if hidden else "")


class WithoutRequestValues(logging.Filter):
    """Shortens exceptions logged as arguments to their text before any quoted value."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                without_value(arg) if isinstance(arg, Exception) else arg for arg in record.args
            )
        return True


def without_value(error: Exception) -> str:
    """``Invalid header value 'Bearer x\\x00'`` -> ``Invalid header value``."""
    return _VALUE.sub("", str(error)) or type(error).__name__


def scrub_tornado_logs() -> None:
    """Install ``WithoutRequestValues`` on Tornado's loggers (once per process)."""
    for name in ("tornado.general", "tornado.application"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, WithoutRequestValues) for f in logger.filters):
            logger.addFilter(WithoutRequestValues())
