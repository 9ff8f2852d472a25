"""``POST /execute`` and ``POST /sessions/{id}/execute``: run code, answer the result.

Both take ``{"language", "code", "max_rows", "session_id", "result_name", "params"}``
(``params``: the SQL's ``:name`` parameters). Without a
session, SQL runs in the server (guard, database, no kernel) and Python in a fresh kernel
that is discarded afterwards, as the replaced system did. In a session, SQL runs in the
kernel as a ``%%sql <result_name>`` cell, so the frame is there for the next step. A client that
disconnects cancels its request: queued, it leaves the queue; running, its cell is
interrupted (``interrupt_on_disconnect``).
"""

from __future__ import annotations

import asyncio
import keyword
from typing import Any

from server.errors import ValidationError
from server.handlers.base import BaseHandler, int_field, str_field
from server.sessions.manager import ExecutionRequest

LANGUAGES = ("python", "sql")
SCALARS = (str, int, float, bool)


def _params(value: Any, language: str) -> dict[str, Any] | None:
    """SQL ``:name`` parameters: names to strings, numbers, booleans or null."""
    if value is None:
        return None
    if language != "sql":
        raise ValidationError("params go with language sql")
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k.isidentifier() and (v is None or isinstance(v, SCALARS))
        for k, v in value.items()
    ):
        raise ValidationError("params must map names to strings, numbers, booleans or null")
    return value


class ExecuteBase(BaseHandler):
    task: asyncio.Future[Any] | None = None

    def parse(self) -> tuple[dict[str, Any], ExecutionRequest]:
        body = self.json_body()
        language = str_field(body, "language", choices=LANGUAGES) or "python"
        code = str_field(body, "code", required=True)
        assert code is not None
        if not code.strip():
            raise ValidationError("code is empty")
        result_name = str_field(body, "result_name")
        if result_name is not None and (
            not result_name.isidentifier() or keyword.iskeyword(result_name)
        ):
            raise ValidationError("result_name must be a Python identifier")
        params = _params(body.get("params"), language)
        settings = self.settings_obj
        max_rows = int_field(body, "max_rows", settings.max_rows_default, 0, settings.max_rows_cap)
        return body, ExecutionRequest(code, max_rows, language, result_name, params=params)

    async def run(self, work: Any) -> None:
        self.task = asyncio.ensure_future(work)
        self.write_json(await self.task)

    def on_connection_close(self) -> None:
        if (
            self.task is not None
            and not self.task.done()
            and self.settings_obj.interrupt_on_disconnect
        ):
            self.task.cancel()


class ExecuteHandler(ExecuteBase):
    async def post(self) -> None:
        tenant = self.current_tenant()
        body, request = self.parse()
        session_id = str_field(body, "session_id")
        sessions = self.runtime.sessions
        if session_id is None:
            await self.run(sessions.run_once(tenant, request))
        else:
            session = await sessions.get_or_create(tenant, session_id)
            await self.run(sessions.execute(session, request))


class SessionExecuteHandler(ExecuteBase):
    async def post(self, session_id: str) -> None:
        tenant = self.current_tenant()
        _, request = self.parse()
        session = await self.runtime.sessions.get_or_create(tenant, session_id)
        await self.run(self.runtime.sessions.execute(session, request))


routes = [
    (r"/execute", ExecuteHandler),
    (r"/sessions/(?P<session_id>[^/]+)/execute", SessionExecuteHandler),
]
