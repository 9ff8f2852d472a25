"""The operator's endpoints over every tenant: ``GET /audit`` (past executions, from the
store), ``GET /operator/sessions`` (live sessions with their kernels' memory) and
``DELETE /operator/sessions/{tenant}/{session_id}`` (end one by force).

Operator token only: a tenant's token answers 403, none 401. The work is in
``server.sessions.audit`` and ``server.sessions.overview``; the answers are declared here.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct

from server.config import TenantSettings
from server.handlers.base import BaseHandler, Operation
from server.sessions import overview
from server.sessions.audit import LANGUAGES, MAX_LIMIT, MAX_LIMIT_WITH_CODE, STATUSES, AuditQuery


class AuditExecution(Struct, kw_only=True, forbid_unknown_fields=True):
    """One execution request as the audit keeps it; ``code`` and ``params`` only when
    asked for (``include_code=true``)."""

    id: int
    started: str
    tenant: str
    session_id: str | None
    execution_count: int | None
    kind: str
    language: str
    pool: str | None
    status: Literal["success", "error", "disconnected"]
    error_type: str | None
    duration_ms: float
    row_count: int | None
    cache_key: str | None
    kernel_replaced: str | None
    request_id: str | None
    code_bytes: int
    code: str | None = None
    params: dict[str, Any] | None = None


class AuditPage(Struct, kw_only=True, forbid_unknown_fields=True):
    executions: list[AuditExecution]
    next_cursor: str | None
    retention_s: float


class OperatorKernel(Struct, kw_only=True):
    status: Literal["ready", "none"]
    lost_reason: str | None
    id: str | None
    started: str | None
    memory_bytes: int | None
    memory_limit_bytes: int


class OperatorSession(Struct, kw_only=True):
    tenant: str
    session_id: str
    state: Literal["idle", "busy", "no_kernel"]
    pool: str
    kernel: OperatorKernel
    created: str
    last_activity: str
    idle_s: float
    execution_count: int
    queued: int
    frames: list[str]


class OperatorSessions(Struct):
    sessions: list[OperatorSession]


def _text(description: str, **schema: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **schema}


AUDIT_QUERY = {
    "tenant": _text("only this tenant's executions"),
    "session_id": _text("only this session's (the client's id)"),
    "since": _text("ISO 8601; executions started at or after it (UTC without a zone)"),
    "until": _text("ISO 8601; executions started before it"),
    "status": _text(f"{', '.join(STATUSES)}, or an error type such as TIMEOUT"),
    "language": {"type": "string", "enum": list(LANGUAGES)},
    "limit": {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_LIMIT,
        "description": f"rows per page (default 100; at most {MAX_LIMIT_WITH_CODE} with code)",
    },
    "cursor": _text("next_cursor of the previous page"),
    "include_code": {
        "type": "boolean",
        "description": "answer each execution's code and SQL params (they may hold secrets)",
    },
}


class OperatorHandler(BaseHandler):
    def authorize(self, tenant: TenantSettings) -> None:
        self.auth.require_operator(tenant)

    def query_args(self) -> dict[str, str]:
        """The query parameters, each by its last value."""
        return {name: self.get_query_argument(name) for name in self.request.query_arguments}


class AuditHandler(OperatorHandler):
    api = {
        "get": Operation(
            "Past executions of every tenant, newest first, filtered and paginated "
            "(operator); code only with include_code=true",
            AuditPage,
            errors=(400, 403),
            query=AUDIT_QUERY,
        )
    }

    async def get(self) -> None:
        query = AuditQuery.parse(self.query_args())
        self.write_json(await self.runtime.audit.page(query))


class OperatorSessionsHandler(OperatorHandler):
    api = {
        "get": Operation(
            "Every tenant's sessions (or one tenant's) with state, pool, kernel, memory, idle "
            "time, created and execution count (operator)",
            OperatorSessions,
            errors=(403, 404),
            query={"tenant": _text("only this tenant's sessions")},
        )
    }

    async def get(self) -> None:
        tenant = self.get_query_argument("tenant", None)
        self.write_json({"sessions": await overview.sessions_of(self.runtime.sessions, tenant)})


class OperatorSessionHandler(OperatorHandler):
    api = {
        "delete": Operation(
            "End a tenant's session by force (operator): a running cell's request answers "
            "CANCELLED (reason session_terminated) and the kernel is destroyed",
            status=204,
            errors=(403, 404),
        )
    }

    async def delete(self, tenant: str, session_id: str) -> None:
        await overview.terminate(self.runtime.sessions, tenant, session_id)
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()


routes = [
    (r"/audit", AuditHandler),
    (r"/operator/sessions", OperatorSessionsHandler),
    (r"/operator/sessions/(?P<tenant>[^/]+)/(?P<session_id>[^/]+)", OperatorSessionHandler),
]
