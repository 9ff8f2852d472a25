"""The exceptions ``sql()``, ``load()`` and ``save()`` raise, each with the server's type.

Inside a DataExec kernel a broker refusal raises the exception of its ``type``; the server
reads the exception's name back from the execute reply (``protocol.error_type``) and
answers the API error of the same type. Outside DataExec (``dataexec_client``) the same
exceptions stand for the HTTP answers of a DataExec server or the errors of a database.

    DataExecError                 INTERNAL
    ├── SqlNotAllowed             SQL_NOT_ALLOWED
    ├── QueryTimeout              TIMEOUT
    ├── ResultTooLarge            OUTPUT_TOO_LARGE
    ├── DatabaseUnavailable       DATABASE_UNAVAILABLE
    ├── DatabaseError             EXECUTION_ERROR
    ├── CacheKeyNotFound          NOT_FOUND
    ├── QuotaExceeded             QUOTA_EXCEEDED
    ├── TooManyQueries            RATE_LIMITED     (queries at once, per kernel or tenant)
    ├── InvalidRequest            VALIDATION_ERROR
    ├── AuthenticationFailed      UNAUTHORIZED     (outside DataExec only)
    ├── PermissionDenied          FORBIDDEN        (outside DataExec only)
    ├── ServerUnavailable         UNAVAILABLE      (outside DataExec only)
    ├── NotConfigured             NOT_CONFIGURED   (outside DataExec only)
    └── Unsupported               NOT_SUPPORTED    (outside DataExec only)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote


class DataExecError(Exception):
    """A request for data failed; ``type`` is the server's error type.

    Over HTTP (outside DataExec kernels) ``status`` is the HTTP status and ``detail`` the
    answer's whole ``detail`` object.
    """

    type = "INTERNAL"
    status: int | None = None
    detail: dict[str, Any] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SqlNotAllowed(DataExecError):
    type = "SQL_NOT_ALLOWED"


class QueryTimeout(DataExecError):
    type = "TIMEOUT"


class ResultTooLarge(DataExecError):
    type = "OUTPUT_TOO_LARGE"


class DatabaseUnavailable(DataExecError):
    type = "DATABASE_UNAVAILABLE"


class DatabaseError(DataExecError):
    type = "EXECUTION_ERROR"


class CacheKeyNotFound(DataExecError):
    type = "NOT_FOUND"


class QuotaExceeded(DataExecError):
    type = "QUOTA_EXCEEDED"


class TooManyQueries(DataExecError):
    """This kernel or its tenant ran as many queries at once as it may, for too long."""

    type = "RATE_LIMITED"


class InvalidRequest(DataExecError):
    type = "VALIDATION_ERROR"


class AuthenticationFailed(DataExecError):
    """The DataExec server refused the token."""

    type = "UNAUTHORIZED"


class PermissionDenied(DataExecError):
    type = "FORBIDDEN"


class ServerUnavailable(DataExecError):
    """The DataExec server could not be reached, or is out of capacity for now."""

    type = "UNAVAILABLE"


class NotConfigured(DataExecError):
    """Neither a DataExec kernel, a DataExec URL nor a database URL is configured."""

    type = "NOT_CONFIGURED"


class Unsupported(DataExecError, NotImplementedError):
    """What the configured connection cannot do, e.g. ``load()`` straight from a database."""

    type = "NOT_SUPPORTED"


# What the broker may answer inside a DataExec kernel: its error types and their exceptions.
BROKER_ERRORS: tuple[type[DataExecError], ...] = (
    SqlNotAllowed,
    QueryTimeout,
    ResultTooLarge,
    DatabaseUnavailable,
    DatabaseError,
    CacheKeyNotFound,
    QuotaExceeded,
    TooManyQueries,
    InvalidRequest,
)
BY_TYPE: dict[str, type[DataExecError]] = {cls.type: cls for cls in BROKER_ERRORS}
# The type of each exception by the name an execute reply gives it (its ``ename``). User code
# that let a database error or a refused request escape answers EXECUTION_ERROR, with its
# traceback, like any other exception of the user's code.
TYPE_OF_NAME: dict[str, str] = {
    cls.__name__: cls.type
    for cls in BROKER_ERRORS
    if cls.type not in ("EXECUTION_ERROR", "VALIDATION_ERROR")
}


# What drivers say when the database cannot be reached (as against a query that failed):
# the server's translator and the analysts' database client both classify by these.
CONNECTION_FAILURES = (
    "could not connect",
    "connection refused",
    "could not translate host",
    "server closed the connection",
    "connection to server",
    "timeout expired",
    "no such host",
    "unable to open database",
    "terminating connection",
    "connection reset",
    "broken pipe",
    "no connection to the server",
)


def is_connection_failure(message: str) -> bool:
    """Whether a driver's message says the database could not be reached."""
    text = message.lower()
    return any(failure in text for failure in CONNECTION_FAILURES)


def scrub(text: str, password: str | None) -> str:
    """``text`` without ``password``, as given or URL-encoded (for every message that leaves)."""
    if not password:
        return text
    for form in {password, quote(password, safe="")}:
        text = text.replace(form, "***")
    return text
