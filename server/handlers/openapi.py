"""``GET /openapi.json``: the API description, built from the routes and the bodies.

Every handler declares its operations (``api``: summary, request body, answer, errors) next
to its methods, and the bodies are the msgspec declarations of ``bodies``; this module only
joins them. A test compares the document with the routes and holds real answers against it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from server import __version__
from server.handlers import bodies
from server.handlers.base import BaseHandler, Operation

COMPONENT = "#/components/schemas/{name}"
BINARY = {"type": "string", "format": "binary"}
PATH_PARAMETERS = {
    "session_id": {"type": "string", "pattern": bodies.SESSION_ID_PATTERN},
    "key": {"type": "string", "description": "a cache key (UUID4)"},
    "table": {
        "type": "string",
        "description": "as /schema names it (schema-qualified outside the default schema), "
        "URL-encoded",
    },
    "name": {"type": "string", "description": "the wheel's file name, as GET /client gives it"},
    "tenant": {"type": "string", "description": "a tenant's name in the configuration"},
}
GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(op: Operation, public: bool, refs: dict[type, dict[str, Any]]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    success: dict[str, Any] = {"description": "success"}
    if op.answer is not None:
        success["content"] = _json(refs[op.answer])
    elif op.download is not None:
        success["content"] = {op.download: {"schema": BINARY}}
    if op.events is not None:
        events = {"type": "string", "description": f"Server-Sent Events: {op.events}"}
        success.setdefault("content", {})["text/event-stream"] = {"schema": events}
    responses[str(op.status)] = success
    for status, description in op.accepted.items():
        accepted: dict[str, Any] = {"description": description}
        if op.answer is not None:
            accepted["content"] = _json(refs[op.answer])
        responses[str(status)] = accepted
    for status in ((), (401,))[not public] + op.errors:
        responses[str(status)] = {
            "description": "error",
            "content": _json(refs[bodies.ErrorAnswer]),
        }
    operation: dict[str, Any] = {"summary": op.summary, "responses": responses}
    if op.body is not None:
        operation["requestBody"] = {"required": True, "content": _json(refs[op.body])}
    elif op.upload is not None:
        operation["requestBody"] = {"required": True, "content": {op.upload: {"schema": BINARY}}}
    if op.query:
        operation["parameters"] = [
            {"name": name, "in": "query", "schema": schema} for name, schema in op.query.items()
        ]
    if public:
        operation["security"] = []
    return operation


def openapi_document(routes: Sequence[tuple[str, type[BaseHandler]]]) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document of ``routes``."""
    declared = [(pattern, handler) for pattern, handler in routes if handler.api]
    types: set[type] = {bodies.ErrorAnswer}
    for _, handler in declared:
        for op in handler.api.values():
            types.update(t for t in (op.body, op.answer) if t is not None)
    ordered = sorted(types, key=lambda t: t.__name__)
    refs, components = msgspec.json.schema_components(ordered, ref_template=COMPONENT)
    by_type = dict(zip(ordered, refs, strict=True))
    paths: dict[str, Any] = {}
    for pattern, handler in declared:
        path = GROUP.sub(r"{\1}", pattern)
        item: dict[str, Any] = {
            method: _operation(op, handler.public, by_type) for method, op in handler.api.items()
        }
        names = GROUP.findall(pattern)
        if names:
            item["parameters"] = [
                {"name": n, "in": "path", "required": True, "schema": PATH_PARAMETERS[n]}
                for n in names
            ]
        paths[path] = item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "DataExec",
            "version": __version__,
            "description": "Runs LLM-written SQL and pandas code in sandboxed, warm Jupyter "
            "kernels next to a database.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": components,
        },
    }


class OpenAPIHandler(BaseHandler):
    public = True
    api = {"get": Operation("This document", download="application/json")}

    def get(self) -> None:
        self.write_json(openapi_document(self.application.settings["api_routes"]))


routes = [(r"/openapi.json", OpenAPIHandler)]
