"""The server's log lines: JSON for machines, text for people, never a secret.

``configure_logging`` installs one handler on the root logger: JSON lines when
``log_format`` is ``json``, or ``auto`` and the stream is not a terminal (a file, a pipe,
a container's log); human-readable text on a terminal or with ``text``.

A JSON line is ``{"ts", "level", "logger", "message"}`` plus the fields of the record's
``event`` (``extra={"event": {...}}``): the access log's line per request and
``steps``' line per execution carry request id, tenant, session, execution count,
duration, status and error type. Any line logged while a request is being handled also
carries its ``request_id`` (``REQUEST_ID``, set by the HTTP layer for the request's task
and the tasks it starts).

What must never be logged (tokens, passwords, code) is kept out where lines are made:
the access log (``server.handlers.access_log``) and the execution line, which carries the
code only when the operator sets ``log_code``.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
from typing import Any, TextIO

import orjson

# The id of the request whose task (or a task it started) logs: set by BaseHandler.prepare.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "dataexec_request_id", default=None
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request id, the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            line["request_id"] = request_id
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            line.update(event)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """The classic one-line text, and below it the code of an execution when it is logged."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        event = getattr(record, "event", None)
        if isinstance(event, dict) and isinstance(event.get("code"), str):
            text += "\n" + "\n".join("    | " + line for line in event["code"].splitlines())
        return text


def uses_json(log_format: str, stream: TextIO) -> bool:
    """Whether ``log_format`` means JSON on ``stream`` (``auto``: unless it is a terminal)."""
    if log_format == "auto":
        isatty = getattr(stream, "isatty", None)
        return not (isatty is not None and isatty())
    return log_format == "json"


def configure_logging(level: str, log_format: str, stream: TextIO) -> None:
    """Send every log record to ``stream``, formatted as ``log_format`` says."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if uses_json(log_format, stream) else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
