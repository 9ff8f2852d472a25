"""``POST /execute``, ``POST /sessions/{id}/execute`` and ``POST /execute-on-data``.

Each calls the session manager's one door, ``submit``: in a session, or once without one.
A client that disconnects cancels its request: queued, it leaves the queue; running, its
cell is interrupted (``interrupt_on_disconnect``). With ``"stream": true`` the answer is
Server-Sent Events once the cell starts (``stream``).
"""

from __future__ import annotations

import asyncio
import keyword
from typing import Any

from server.errors import ValidationError
from server.handlers.base import BaseHandler, Operation
from server.handlers.bodies import ExecuteBody, ExecutionResult, OnDataBody
from server.handlers.stream import DESCRIPTION, answer_with_events
from server.sessions.execution import ExecutionRequest, on_data_request
from server.sessions.outputs import OutputFeed

EXECUTE_ERRORS = (400, 403, 404, 409, 413, 500, 503)


class ExecuteBase(BaseHandler):
    task: asyncio.Future[Any] | None = None

    def request_of(self, body: ExecuteBody) -> ExecutionRequest:
        if not body.code.strip():
            raise ValidationError("code is empty")
        name = body.result_name
        if name is not None and (not name.isidentifier() or keyword.iskeyword(name)):
            raise ValidationError("result_name must be a Python identifier")
        if body.params is not None:
            if body.language != "sql":
                raise ValidationError("params go with language sql")
            if not all(k.isidentifier() for k in body.params):
                raise ValidationError("params must map names to strings, numbers, booleans or null")
        return ExecutionRequest(
            body.code, self.max_rows(body.max_rows), body.language, name, params=body.params
        )

    async def submit(
        self, request: ExecutionRequest, session_id: str | None, stream: bool = False
    ) -> None:
        """Run through the session manager's door; answer its result (as events: stream)."""
        feed = OutputFeed() if stream else None
        work = self.runtime.sessions.submit(self.current_tenant(), request, session_id, feed)
        self.task = asyncio.ensure_future(work)
        if feed is None:
            self.write_json(await self.task)
        else:
            await answer_with_events(self, self.task, feed)

    def on_connection_close(self) -> None:
        super().on_connection_close()  # ends a body still streaming in
        if (
            self.task is not None
            and not self.task.done()
            and self.settings_obj.interrupt_on_disconnect
        ):
            self.task.cancel()


class ExecuteHandler(ExecuteBase):
    api = {
        "post": Operation(
            "Run code; in a throwaway kernel (Python) or the server (SQL) unless session_id "
            "is given",
            ExecutionResult,
            errors=EXECUTE_ERRORS,
            body=ExecuteBody,
            events=DESCRIPTION,
        )
    }

    async def post(self) -> None:
        self.current_tenant()
        body = self.body(ExecuteBody)
        await self.submit(self.request_of(body), body.session_id, body.stream)


class SessionExecuteHandler(ExecuteBase):
    api = {
        "post": Operation(
            "Run code in the session (created on first use)",
            ExecutionResult,
            errors=EXECUTE_ERRORS,
            body=ExecuteBody,
            events=DESCRIPTION,
        )
    }

    async def post(self, session_id: str) -> None:
        self.current_tenant()
        body = self.body(ExecuteBody)
        await self.submit(self.request_of(body), session_id, body.stream)


class ExecuteOnDataHandler(ExecuteBase):
    """The replaced system's step over earlier results: ``input_data[name]`` are DataFrames
    (cached frames by key, literal rows as given) and the code sets ``result_df``."""

    api = {
        "post": Operation(
            "Run pandas code over earlier results (cache_keys) and literal rows (input_data); "
            "the code sets result_df",
            ExecutionResult,
            errors=EXECUTE_ERRORS,
            body=OnDataBody,
        )
    }

    async def post(self) -> None:
        tenant = self.current_tenant()
        body = self.body(OnDataBody)
        input_data, cache_keys = body.input_data or {}, body.cache_keys or {}
        if not all(input_data) or not all(cache_keys):
            raise ValidationError("input_data and cache_keys are keyed by non-empty names")
        if set(input_data) & set(cache_keys):
            raise ValidationError("a name is in both input_data and cache_keys")
        for key in cache_keys.values():  # unknown keys fail here, before any kernel runs
            await self.runtime.cache.entry(tenant.name, key)
        request = on_data_request(body.code, input_data, cache_keys, self.max_rows(body.max_rows))
        await self.submit(request, body.session_id)


routes = [
    (r"/execute", ExecuteHandler),
    (r"/execute-on-data", ExecuteOnDataHandler),
    (r"/sessions/(?P<session_id>[^/]+)/execute", SessionExecuteHandler),
]
