"""The one error hierarchy of DataExec; every failure a client sees is one of these.

Each class carries its HTTP status and its ``type`` string; the HTTP layer renders any of
them as ``{"detail": {"type", "message", ...extra}}`` and nothing else.

    DataExecError                      500 INTERNAL
    ├── ConfigError                    (start-up only: every bad setting, one message)
    ├── SandboxUnavailable             500 INTERNAL   (a sandbox cannot run here)
    ├── ValidationError                400 VALIDATION_ERROR
    ├── UserCodeError                  400            (the user's code caused it)
    │   ├── ExecutionError                 EXECUTION_ERROR (ename, evalue, traceback)
    │   ├── SqlNotAllowed                  SQL_NOT_ALLOWED
    │   ├── ExecutionTimeout               TIMEOUT
    │   ├── OutOfMemory                    OUT_OF_MEMORY
    │   ├── OutputTooLarge                 OUTPUT_TOO_LARGE
    │   └── QuotaExceeded                  QUOTA_EXCEEDED
    ├── Unauthorized                   401 UNAUTHORIZED
    ├── Forbidden                      403 FORBIDDEN
    ├── NotFound                       404 NOT_FOUND
    ├── MethodNotAllowed               405 METHOD_NOT_ALLOWED
    ├── Conflict                       409 CONFLICT
    ├── Cancelled                      409 CANCELLED     (session deleted or restarted mid-request)
    ├── SessionBusy                    409 SESSION_BUSY  (Retry-After)
    ├── PayloadTooLarge                413 PAYLOAD_TOO_LARGE
    ├── UnsupportedMediaType           415 UNSUPPORTED_MEDIA_TYPE
    ├── RateLimited                    429 RATE_LIMITED  (Retry-After)
    ├── HeadersTooLarge                431 HEADERS_TOO_LARGE (request line and headers)
    ├── Capacity                       503 CAPACITY      (Retry-After)
    ├── DatabaseUnavailable            503 DATABASE_UNAVAILABLE (Retry-After)
    └── KernelDied                     500 KERNEL_DIED
"""

from __future__ import annotations

from typing import Any


class DataExecError(Exception):
    """Base of every error DataExec reports; ``extra`` goes into the error's detail."""

    status = 500
    type = "INTERNAL"
    retry_after: float | None = None

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def detail(self) -> dict[str, Any]:
        """The ``detail`` object of the error response."""
        return {"type": self.type, "message": self.message, **self.extra}


class ConfigError(DataExecError):
    """The configuration has bad values; ``problems`` names each one."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


class SandboxUnavailable(DataExecError):
    """The chosen sandbox cannot run kernels on this host."""


class ValidationError(DataExecError):
    status, type = 400, "VALIDATION_ERROR"


class UserCodeError(DataExecError):
    status = 400


class ExecutionError(UserCodeError):
    type = "EXECUTION_ERROR"


class SqlNotAllowed(UserCodeError):
    type = "SQL_NOT_ALLOWED"


class ExecutionTimeout(UserCodeError):
    type = "TIMEOUT"


class OutOfMemory(UserCodeError):
    type = "OUT_OF_MEMORY"


class OutputTooLarge(UserCodeError):
    type = "OUTPUT_TOO_LARGE"


class QuotaExceeded(UserCodeError):
    type = "QUOTA_EXCEEDED"


class Unauthorized(DataExecError):
    status, type = 401, "UNAUTHORIZED"


class Forbidden(DataExecError):
    status, type = 403, "FORBIDDEN"


class NotFound(DataExecError):
    status, type = 404, "NOT_FOUND"


class MethodNotAllowed(DataExecError):
    status, type = 405, "METHOD_NOT_ALLOWED"


class Conflict(DataExecError):
    status, type = 409, "CONFLICT"


class Cancelled(DataExecError):
    """Another request ended the work under this one: the session was deleted or restarted
    (or the server shut down) while it ran or waited; ``reason`` names which."""

    status, type = 409, "CANCELLED"


class SessionBusy(DataExecError):
    status, type, retry_after = 409, "SESSION_BUSY", 1.0


class PayloadTooLarge(DataExecError):
    status, type = 413, "PAYLOAD_TOO_LARGE"


class UnsupportedMediaType(DataExecError):
    status, type = 415, "UNSUPPORTED_MEDIA_TYPE"


class RateLimited(DataExecError):
    status, type, retry_after = 429, "RATE_LIMITED", 1.0


class HeadersTooLarge(DataExecError):
    """The request line and headers together are over ``max_header_bytes``."""

    status, type = 431, "HEADERS_TOO_LARGE"


class Capacity(DataExecError):
    status, type, retry_after = 503, "CAPACITY", 5.0


class DatabaseUnavailable(DataExecError):
    """The analysed database cannot be reached; the message names host and database only."""

    status, type, retry_after = 503, "DATABASE_UNAVAILABLE", 5.0


class KernelDied(DataExecError):
    type = "KERNEL_DIED"


def error_class(error_type: str) -> type[DataExecError]:
    """The class of an error type string (``SQL_NOT_ALLOWED`` -> SqlNotAllowed)."""
    found = _BY_TYPE.get(error_type)
    if found is None:
        raise KeyError(error_type)
    return found


def _subclasses(cls: type[DataExecError]) -> list[type[DataExecError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _subclasses(sub))]


# Every concrete type, once (a base that shares its type with a subclass names the base).
_BY_TYPE: dict[str, type[DataExecError]] = {}
for _cls in _subclasses(DataExecError):
    _BY_TYPE.setdefault(_cls.type, _cls)
