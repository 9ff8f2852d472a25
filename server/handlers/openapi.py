"""``GET /openapi.json``: the API description (no auth)."""

from __future__ import annotations

from server.handlers.base import BaseHandler
from server.handlers.openapi_document import openapi_document


class OpenAPIHandler(BaseHandler):
    public = True

    def get(self) -> None:
        self.write_json(openapi_document())


routes = [(r"/openapi.json", OpenAPIHandler)]
