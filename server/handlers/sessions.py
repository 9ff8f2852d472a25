"""Session resources: create (or import a notebook), list, show, delete, interrupt,
restart, variables."""

from __future__ import annotations

from typing import Any

from server.errors import NotFound, ValidationError
from server.handlers.base import BaseHandler, int_field, str_field
from server.notebook.export import cells_from_notebook
from server.sessions.replay import Replay


class SessionsHandler(BaseHandler):
    async def get(self) -> None:
        sessions = await self.runtime.sessions.list(self.current_tenant())
        self.write_json({"sessions": [s.describe() for s in sessions]})

    async def post(self) -> None:
        """A new session; with ``notebook`` or ``cells``, their replay (201, or 202 to poll)."""
        tenant = self.current_tenant()
        body = self.json_body()
        replay = self._replay(body)
        session = await self.runtime.sessions.create(
            tenant, str_field(body, "session_id"), str_field(body, "pool")
        )
        if replay is None:
            self.set_header("Location", f"/sessions/{session.client_id}")
            self.write_json(session.describe(), status=201)
            return
        session.replay = replay
        replay.start(self.runtime.sessions, session)
        done = await replay.wait(self.settings_obj.import_wait_s)
        poll = f"/sessions/{session.client_id}" + ("" if done else "/import")
        self.set_header("Location", poll)
        self.write_json({**session.describe(), "import": replay.describe()}, 201 if done else 202)

    def _replay(self, body: dict[str, Any]) -> Replay | None:
        document = body.get("notebook", body.get("cells"))
        if document is None:
            return None
        if "notebook" in body and "cells" in body:
            raise ValidationError("give a notebook or cells, not both")
        stop_on_error = body.get("stop_on_error", True)
        if not isinstance(stop_on_error, bool):
            raise ValidationError("stop_on_error must be true or false")
        settings = self.settings_obj
        max_rows = int_field(body, "max_rows", settings.max_rows_default, 0, settings.max_rows_cap)
        return Replay(cells_from_notebook(document), stop_on_error, max_rows)


class SessionHandler(BaseHandler):
    async def get(self, session_id: str) -> None:
        session = await self.runtime.sessions.get(self.current_tenant(), session_id)
        self.write_json(session.describe())

    async def delete(self, session_id: str) -> None:
        await self.runtime.sessions.delete(self.current_tenant(), session_id)
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()


class ImportHandler(BaseHandler):
    async def get(self, session_id: str) -> None:
        session = await self.runtime.sessions.get(self.current_tenant(), session_id)
        if session.replay is None:
            raise NotFound(f"session {session_id!r} was not made from a notebook")
        self.write_json({"session_id": session.client_id, **session.replay.describe()})


class InterruptHandler(BaseHandler):
    async def post(self, session_id: str) -> None:
        session = await self.runtime.sessions.get(self.current_tenant(), session_id)
        interrupted = await self.runtime.sessions.interrupt(session)
        self.write_json({"session_id": session.client_id, "interrupted": interrupted})


class RestartHandler(BaseHandler):
    async def post(self, session_id: str) -> None:
        session = await self.runtime.sessions.get(self.current_tenant(), session_id)
        self.write_json(await self.runtime.sessions.restart(session))


class VariablesHandler(BaseHandler):
    async def get(self, session_id: str) -> None:
        session = await self.runtime.sessions.get(self.current_tenant(), session_id)
        self.write_json(await self.runtime.sessions.variables(session))


routes = [
    (r"/sessions", SessionsHandler),
    (r"/sessions/(?P<session_id>[^/]+)", SessionHandler),
    (r"/sessions/(?P<session_id>[^/]+)/import", ImportHandler),
    (r"/sessions/(?P<session_id>[^/]+)/interrupt", InterruptHandler),
    (r"/sessions/(?P<session_id>[^/]+)/restart", RestartHandler),
    (r"/sessions/(?P<session_id>[^/]+)/variables", VariablesHandler),
]
