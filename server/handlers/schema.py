"""``GET /schema`` and ``GET /schema/{table}/profile``: what an LLM needs to write SQL."""

from __future__ import annotations

from server.handlers.base import BaseHandler, Operation
from server.handlers.bodies import Profile, SchemaAnswer


class SchemaHandler(BaseHandler):
    api = {
        "get": Operation(
            "Tables and views the query role can read, with columns and keys",
            SchemaAnswer,
            errors=(429, 503),
        )
    }

    async def get(self) -> None:
        tenant = self.current_tenant()
        self.write_json(await self.runtime.database.schema(tenant.name))


class ProfileHandler(BaseHandler):
    api = {
        "get": Operation(
            "Column statistics of one table: nulls, top values, histograms",
            Profile,
            errors=(404, 429, 503),
        )
    }

    async def get(self, table: str) -> None:
        tenant = self.current_tenant()
        self.write_json(await self.runtime.database.profile(tenant.name, table))


routes = [
    (r"/schema", SchemaHandler),
    (r"/schema/(?P<table>[^/]+)/profile", ProfileHandler),
]
