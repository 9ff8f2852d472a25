"""What the HTTP layer writes to the log, and what it never writes: a token or a password.

A token can reach a request in its ``Authorization`` header (well-formed or not), in the
query string (``?token=...``), or in any other header a client invents. So:

- the access log (``log_request``, Tornado's ``log_function``) gives the path and only the
  query parameters the route declares (``Operation.query``), with their values; others are
  counted, never named;
- Tornado's own lines about malformed requests (``Invalid header value '...'``) lose the
  quoted value they carry (``WithoutRequestValues`` on Tornado's loggers);
- our own lines (``BaseHandler.log_exception``) name the method and the path only.
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


def log_request(handler: tornado.web.RequestHandler) -> None:
    """One access-log line per request, as Tornado's own but without undeclared query values."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    access_log.log(
        level,
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        loggable_target(handler),
        request.remote_ip,
        1000.0 * request.request_time(),
    )


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
