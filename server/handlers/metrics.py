"""``GET /metrics``: Prometheus metrics, to the operator token on the API port, or to anyone
on the separate ``metrics_port`` (``make_metrics_app``), meant for a private network.

The metrics are declared in ``server.telemetry.metrics``; the runtime takes the scrape
(``Runtime.scrape``).
"""

from __future__ import annotations

import tornado.web

from server.handlers.access_log import log_request
from server.handlers.base import BaseHandler, NotFoundHandler, Operation
from server.telemetry.metrics import CONTENT_TYPE


class MetricsHandler(BaseHandler):
    """Every metric in the Prometheus text format (operator token)."""

    api = {
        "get": Operation(
            "Prometheus metrics in the text exposition format (operator)",
            download="text/plain",
            errors=(403,),
        )
    }

    async def get(self) -> None:
        if not self.public:
            assert self.tenant is not None
            self.auth.require_operator(self.tenant)
        text = await self.runtime.scrape()
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(text)


class OpenMetricsHandler(MetricsHandler):
    """The same, without a token: served only on ``metrics_port``."""

    public = True


routes = [(r"/metrics", MetricsHandler)]


def make_metrics_app(context: dict[str, object]) -> tornado.web.Application:
    """The application of ``metrics_port``: ``/metrics`` open, anything else NOT_FOUND."""
    open_routes = [(r"/metrics", OpenMetricsHandler)]
    return tornado.web.Application(
        [(pattern, handler, context) for pattern, handler in open_routes],
        default_handler_class=NotFoundHandler,
        default_handler_args=context,
        api_routes=open_routes,
        serve_traceback=False,
        log_function=log_request,
    )
