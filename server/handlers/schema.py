"""``GET /schema`` and ``GET /schema/{table}/profile``: what an LLM needs to write SQL."""

from __future__ import annotations

import asyncio

from server.handlers.base import BaseHandler
from server.sql.introspect import describe_schema
from server.sql.profile import profile_table


class SchemaHandler(BaseHandler):
    async def get(self) -> None:
        self.current_tenant()
        engine = self.runtime.query_engine()
        loop = asyncio.get_running_loop()
        self.write_json(await loop.run_in_executor(None, describe_schema, engine))


class ProfileHandler(BaseHandler):
    async def get(self, table: str) -> None:
        self.current_tenant()
        engine = self.runtime.query_engine()
        loop = asyncio.get_running_loop()
        self.write_json(await loop.run_in_executor(None, profile_table, engine, table))


routes = [
    (r"/schema", SchemaHandler),
    (r"/schema/(?P<table>[^/]+)/profile", ProfileHandler),
]
