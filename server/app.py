"""``make_app``: the Tornado application, with every route in one table."""

from __future__ import annotations

import tornado.web

from server.auth import Authenticator
from server.config import Settings
from server.handlers import (
    cache,
    client,
    execute,
    health,
    notebook,
    openapi,
    schema,
    sessions,
)
from server.handlers.base import NotFoundHandler
from server.runtime import Runtime

ROUTES = [
    *health.routes,
    *openapi.routes,
    *schema.routes,
    *execute.routes,
    *sessions.routes,
    *notebook.routes,
    *cache.routes,
    *client.routes,
]


def make_app(settings: Settings, runtime: Runtime) -> tornado.web.Application:
    """The application for ``settings`` (tenants resolved) serving ``runtime``."""
    context = {"settings": settings, "runtime": runtime, "auth": Authenticator(settings)}
    return tornado.web.Application(
        [(pattern, handler, context) for pattern, handler in ROUTES],
        default_handler_class=NotFoundHandler,
        default_handler_args=context,
        compress_response=False,
        api_routes=ROUTES,
        serve_traceback=False,
    )
