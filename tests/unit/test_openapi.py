"""/openapi.json against the routing table: every route and method described, nothing else.

Built from ``server.app.ROUTES`` without a server; that it is served without auth is checked
in ``tests/test_api.py``.
"""

from __future__ import annotations

from server.app import ROUTES
from server.handlers.openapi import openapi_document


async def test_openapi_describes_exactly_the_routes() -> None:
    document = openapi_document(ROUTES)
    import re

    def as_template(pattern: str) -> str:
        return re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern).replace("\\", "")

    routed = {}
    for pattern, handler in ROUTES:
        methods = {
            m.lower()
            for m in ("GET", "POST", "PUT", "DELETE", "PATCH")
            if getattr(handler, m.lower())
            is not getattr(__import__("tornado.web").web.RequestHandler, m.lower())
        }
        routed[as_template(pattern)] = methods
    described = {
        path: {m for m in item if m != "parameters"} for path, item in document["paths"].items()
    }
    assert described == routed
