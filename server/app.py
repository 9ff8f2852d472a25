"""``make_app``: the Tornado application, with every route in one table; ``make_server``:
the HTTP(S) server it runs behind (``handlers.edge``), as ``dataexec serve`` and the tests
start it."""

from __future__ import annotations

import tornado.httpserver
import tornado.web

from server.auth import Authenticator
from server.config import Settings
from server.handlers import (
    cache,
    client,
    config_reload,
    execute,
    health,
    metrics,
    notebook,
    openapi,
    operator,
    schema,
    sessions,
)
from server.handlers.access_log import log_request
from server.handlers.base import NotFoundHandler
from server.handlers.edge import make_http_server
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
    *config_reload.routes,
    *metrics.routes,
    *operator.routes,
]


def make_app(settings: Settings, runtime: Runtime) -> tornado.web.Application:
    """The application for ``settings`` (tenants resolved) serving ``runtime``."""
    auth = Authenticator(settings)
    context = {"settings": settings, "runtime": runtime, "auth": auth}

    def reloaded(new: Settings) -> None:
        auth.reload(new)
        # Tornado passes this very dict to each new handler: later requests see ``new``.
        context["settings"] = new

    runtime.reloaded.append(reloaded)
    return tornado.web.Application(
        [(pattern, handler, context) for pattern, handler in ROUTES],
        default_handler_class=NotFoundHandler,
        default_handler_args=context,
        compress_response=False,
        api_routes=ROUTES,
        serve_traceback=False,
        log_function=log_request,
    )


def make_server(settings: Settings, runtime: Runtime) -> tornado.httpserver.HTTPServer:
    """The HTTP(S) server of ``make_app``, with the limits, timeouts and TLS of ``settings``."""
    return make_http_server(settings, make_app(settings, runtime))


def make_metrics_server(settings: Settings, runtime: Runtime) -> tornado.httpserver.HTTPServer:
    """The server of ``metrics_port``: ``GET /metrics`` without a token, nothing else."""
    context = {"settings": settings, "runtime": runtime, "auth": Authenticator(settings)}
    return make_http_server(settings, metrics.make_metrics_app(context))
