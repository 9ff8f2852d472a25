"""The OpenAPI description of every route, served at ``GET /openapi.json``.

Kept true by a test that compares its paths and methods with the routes of ``make_app``.
"""

from __future__ import annotations

from typing import Any

from server import __version__

ERROR = {"$ref": "#/components/schemas/Error"}


def _query(name: str, choices: list[str], default: str) -> dict[str, Any]:
    """A query parameter taking one of ``choices``."""
    schema = {"type": "string", "enum": choices, "default": default}
    return {"name": name, "in": "query", "schema": schema}


def _with_response(
    operation: dict[str, Any], status: str, description: str, schema: dict[str, Any]
) -> dict[str, Any]:
    """``operation`` with one more success response."""
    content = {"application/json": {"schema": schema}}
    operation["responses"][status] = {"description": description, "content": content}
    return operation


def _op(
    summary: str,
    ok: tuple[str, dict[str, Any]] | None,
    *errors: str,
    body: dict[str, Any] | None = None,
    public: bool = False,
) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if ok:
        status, schema = ok
        responses[status] = (
            {"description": "success", "content": {"application/json": {"schema": schema}}}
            if schema
            else {"description": "success"}
        )
    for status in ("401",) * (not public) + errors:
        responses[status] = {
            "description": "error",
            "content": {"application/json": {"schema": ERROR}},
        }
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    if public:
        operation["security"] = []
    return operation


SESSION_ID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
}
DOWNLOAD = ("200", {"type": "string", "format": "binary"})
CACHE_KEY = {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}
RESULT = {"$ref": "#/components/schemas/EnrichedExecutionResult"}
SESSION = {"$ref": "#/components/schemas/Session"}
EXECUTE_BODY = {
    "type": "object",
    "required": ["code"],
    "properties": {
        "language": {"type": "string", "enum": ["python", "sql"], "default": "python"},
        "code": {"type": "string"},
        "max_rows": {"type": "integer", "minimum": 0},
        "session_id": {"type": "string"},
        "result_name": {
            "type": "string",
            "description": "SQL in a session: the kernel variable the frame lands in "
            "(default df_<execution_count>)",
        },
        "params": {
            "type": "object",
            "description": "SQL only: values of the query's :name parameters",
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
        },
    },
}
EXECUTE_ERRORS = ("400", "403", "404", "409", "413", "500", "503")


def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    with_id = {"parameters": [SESSION_ID]}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "DataExec",
            "version": __version__,
            "description": "Runs LLM-written pandas code in sandboxed, warm Jupyter "
            "kernels next to a database.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/health": {
                "get": _op(
                    "Liveness, database dialect and pool state",
                    ("200", {"type": "object"}),
                    "503",
                    public=True,
                )
            },
            "/pools": {
                "get": _op(
                    "Pools with their settings and live counts (operator)",
                    ("200", {"type": "object"}),
                    "403",
                )
            },
            "/openapi.json": {
                "get": _op("This document", ("200", {"type": "object"}), public=True)
            },
            "/schema": {
                "get": _op(
                    "Tables and views the query role can read, with columns and keys",
                    ("200", {"type": "object"}),
                    "503",
                )
            },
            "/schema/{table}/profile": {
                "parameters": [
                    {
                        "name": "table",
                        "in": "path",
                        "required": True,
                        "description": "as /schema names it (schema-qualified outside the "
                        "default schema), URL-encoded",
                        "schema": {"type": "string"},
                    }
                ],
                "get": _op(
                    "Column statistics of one table: nulls, top values, histograms",
                    ("200", {"type": "object"}),
                    "404",
                    "503",
                ),
            },
            "/cache": {
                "post": {
                    **_with_response(
                        _op(
                            "Keep a frame (an Arrow IPC stream body, within max_body_bytes) "
                            "under a new cache key: save() from outside DataExec",
                            None,
                            "400",
                            "413",
                        ),
                        "201",
                        "the new key's meta (as GET /cache/{key}/meta); Location: /cache/{key}",
                        {"type": "object"},
                    ),
                    "parameters": [{"name": "name", "in": "query", "schema": {"type": "string"}}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/vnd.apache.arrow.stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                },
            },
            "/cache/{key}": {
                "parameters": [CACHE_KEY],
                "get": {
                    **_op("Download a cached frame (streamed)", DOWNLOAD, "400", "404"),
                    "parameters": [
                        _query("format", ["parquet", "arrow", "csv", "json"], "parquet")
                    ],
                },
                "delete": _op("Delete a cache key and its file", ("204", {}), "404"),
            },
            "/cache/{key}/meta": {
                "parameters": [CACHE_KEY],
                "get": _op(
                    "A cache key's shape, schema, bytes, times and lineage",
                    ("200", {"type": "object"}),
                    "404",
                ),
            },
            "/execute": {
                "post": _op(
                    "Run code; in a throwaway kernel unless session_id is given",
                    ("200", RESULT),
                    *EXECUTE_ERRORS,
                    body=EXECUTE_BODY,
                )
            },
            "/execute-on-data": {
                "post": _op(
                    "Run pandas code over earlier results (cache_keys) and literal rows "
                    "(input_data); the code sets result_df",
                    ("200", RESULT),
                    *EXECUTE_ERRORS,
                    body={
                        "type": "object",
                        "required": ["code"],
                        "properties": {
                            "code": {"type": "string"},
                            "input_data": {"type": "object"},
                            "cache_keys": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "session_id": {"type": "string"},
                            "max_rows": {"type": "integer", "minimum": 0},
                        },
                    },
                )
            },
            "/sessions": {
                "get": _op(
                    "This tenant's sessions",
                    (
                        "200",
                        {
                            "type": "object",
                            "properties": {"sessions": {"type": "array", "items": SESSION}},
                        },
                    ),
                ),
                "post": _with_response(
                    _op(
                        "Create a session (with a kernel from its pool). With a notebook (nbformat "
                        "v4) or cells, replay them as its steps: 201 with each cell's outcome in "
                        "import, or 202 when the replay outlasts import_wait_s (poll "
                        "GET /sessions/{id}/import)",
                        ("201", SESSION),
                        "400",
                        "403",
                        "409",
                        "503",
                        body={
                            "type": "object",
                            "properties": {
                                "session_id": {"type": "string"},
                                "pool": {"type": "string"},
                                "notebook": {"type": "object"},
                                "cells": {"type": "array"},
                                "stop_on_error": {"type": "boolean", "default": True},
                                "max_rows": {"type": "integer"},
                            },
                        },
                    ),
                    "202",
                    "accepted: the replay goes on; poll the Location (GET /sessions/{id}/import)",
                    SESSION,
                ),
            },
            "/client": {
                "get": _op(
                    "Where to get the client package (dataexec-kernel) for notebooks "
                    "outside DataExec: its wheel URL and the pip command",
                    ("200", {"type": "object"}),
                    public=True,
                ),
            },
            "/client/{name}": {
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "get": _op(
                    "The client package as a wheel (pip install <this URL>)",
                    DOWNLOAD,
                    "404",
                    public=True,
                ),
            },
            "/sessions/{session_id}/import": {
                **with_id,
                "get": _op(
                    "Progress of the session's notebook import: state (running, done, "
                    "failed), and each cell's outcome",
                    ("200", {"type": "object"}),
                    "404",
                ),
            },
            "/sessions/{session_id}": {
                **with_id,
                "get": _op("A session's state", ("200", SESSION), "404"),
                "delete": _op("End a session and destroy its kernel", ("204", {}), "404"),
            },
            "/sessions/{session_id}/execute": {
                **with_id,
                "post": _op(
                    "Run code in the session (created on first use)",
                    ("200", RESULT),
                    *EXECUTE_ERRORS,
                    body=EXECUTE_BODY,
                ),
            },
            "/sessions/{session_id}/interrupt": {
                **with_id,
                "post": _op(
                    "Interrupt the running cell (skips the queue)",
                    ("200", {"type": "object"}),
                    "404",
                ),
            },
            "/sessions/{session_id}/restart": {
                **with_id,
                "post": _op(
                    "Give the session a fresh kernel with its checkpointed frames restored "
                    "(queued behind running steps): kernel_replaced, replaced_reason, "
                    "restored_frames, unrestored_frames",
                    ("200", {"type": "object"}),
                    "404",
                    "409",
                    "503",
                ),
            },
            "/sessions/{session_id}/notebook": {
                **with_id,
                "get": {
                    **_op(
                        "The session as an nbformat v4 notebook, or a percent-format script "
                        "(an attachment)",
                        DOWNLOAD,
                        "400",
                        "404",
                    ),
                    "parameters": [
                        _query("format", ["ipynb", "py"], "ipynb"),
                        _query("outputs", ["true", "false"], "true"),
                    ],
                },
            },
            "/sessions/{session_id}/variables": {
                **with_id,
                "get": _op(
                    "The session's named DataFrames as its last checkpoint saw them: name, "
                    "shape, dtypes, bytes, cache_key, restorable",
                    ("200", {"type": "object"}),
                    "404",
                ),
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["detail"],
                    "properties": {
                        "detail": {
                            "type": "object",
                            "required": ["type", "message"],
                            "properties": {
                                "type": {"type": "string"},
                                "message": {"type": "string"},
                                "request_id": {"type": "string"},
                                "ename": {"type": "string"},
                                "evalue": {"type": "string"},
                                "traceback": {"type": "array", "items": {"type": "string"}},
                                "outputs": {"type": "array"},
                                "session_id": {"type": ["string", "null"]},
                                "execution_count": {"type": "integer"},
                                "kernel_replaced": {"type": "boolean"},
                            },
                        }
                    },
                },
                "Session": {
                    "type": "object",
                    "properties": {
                        "session_id": {"type": "string"},
                        "state": {"type": "string", "enum": ["idle", "busy", "no_kernel"]},
                        "pool": {"type": "string"},
                        "kernel": {"type": "object"},
                        "created": {"type": "string"},
                        "last_activity": {"type": "string"},
                        "execution_count": {"type": "integer"},
                        "queued": {"type": "integer"},
                    },
                },
                "EnrichedExecutionResult": {
                    "type": "object",
                    "required": ["status", "metadata", "data"],
                    "properties": {
                        "status": {"type": "string", "enum": ["success"]},
                        "session_id": {"type": ["string", "null"]},
                        "execution_count": {"type": "integer"},
                        "metadata": {
                            "type": "object",
                            "properties": {
                                "execution_time_ms": {"type": "number"},
                                "row_count": {"type": "integer"},
                                "truncated": {"type": "boolean"},
                                "result_schema": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "name": {"type": "string"},
                                            "type": {"type": "string"},
                                            "stats": {"type": "object"},
                                        },
                                    },
                                },
                            },
                        },
                        "data": {
                            "type": ["object", "null"],
                            "properties": {
                                "columns": {"type": "array", "items": {"type": "string"}},
                                "rows": {"type": "array", "items": {"type": "array"}},
                            },
                        },
                        "cache_key": {"type": ["string", "null"]},
                        "outputs": {"type": "array", "items": {"type": "object"}},
                        "kernel_replaced": {"type": "boolean"},
                        "replaced_reason": {"type": "string"},
                        "restored_frames": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    }
