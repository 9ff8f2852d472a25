"""Session resources: create (or import a notebook), list, show, delete, interrupt,
restart, variables, import progress."""

from __future__ import annotations

from server.errors import NotFound, ValidationError
from server.handlers.base import BaseHandler, Operation
from server.handlers.bodies import (
    ImportProgress,
    Interrupted,
    Restarted,
    SessionBody,
    SessionList,
    SessionState,
    Variables,
)
from server.notebook.importer import cells_from_notebook
from server.sessions.replay import Replay


class SessionsHandler(BaseHandler):
    api = {
        "get": Operation("This tenant's sessions", SessionList),
        "post": Operation(
            "Create a session (with a kernel from its pool). With a notebook (nbformat v4) or "
            "cells, replay them as its steps: 201 with each cell's outcome in import, or 202 "
            "when the replay outlasts import_wait_s (poll GET /sessions/{id}/import)",
            SessionState,
            status=201,
            errors=(400, 403, 409, 503),
            body=SessionBody,
            accepted={202: "the replay goes on; poll the Location (GET /sessions/{id}/import)"},
        ),
    }

    async def get(self) -> None:
        sessions = await self.runtime.sessions.list(self.current_tenant())
        self.write_json({"sessions": [s.describe() for s in sessions]})

    async def post(self) -> None:
        tenant = self.current_tenant()
        body = self.body(SessionBody)
        replay = self._replay(body)
        session = await self.runtime.sessions.create(tenant, body.session_id, body.pool, replay)
        if replay is None:
            self.set_header("Location", f"/sessions/{session.client_id}")
            self.write_json(session.describe(), status=201)
            return
        done = await replay.wait(self.settings_obj.import_wait_s)
        poll = f"/sessions/{session.client_id}" + ("" if done else "/import")
        self.set_header("Location", poll)
        self.write_json({**session.describe(), "import": replay.describe()}, 201 if done else 202)

    def _replay(self, body: SessionBody) -> Replay | None:
        if body.notebook is not None and body.cells is not None:
            raise ValidationError("give a notebook or cells, not both")
        document = body.notebook if body.notebook is not None else body.cells
        if document is None:
            return None
        return Replay(
            cells_from_notebook(document), body.stop_on_error, self.max_rows(body.max_rows)
        )


class SessionHandler(BaseHandler):
    api = {
        "get": Operation("A session's state", SessionState, errors=(404,)),
        "delete": Operation("End a session and destroy its kernel", status=204, errors=(404,)),
    }

    async def get(self, session_id: str) -> None:
        session = await self.runtime.sessions.get(self.current_tenant(), session_id)
        self.write_json(session.describe())

    async def delete(self, session_id: str) -> None:
        await self.runtime.sessions.delete(self.current_tenant(), session_id)
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()


class ImportHandler(BaseHandler):
    api = {
        "get": Operation(
            "Progress of the session's notebook import: state (running, done, failed), and "
            "each cell's outcome",
            ImportProgress,
            errors=(404,),
        )
    }

    async def get(self, session_id: str) -> None:
        session = await self.runtime.sessions.get(self.current_tenant(), session_id)
        if session.replay is None:
            raise NotFound(f"session {session_id!r} was not made from a notebook")
        self.write_json({"session_id": session.client_id, **session.replay.describe()})


class InterruptHandler(BaseHandler):
    api = {
        "post": Operation(
            "Interrupt the running cell (skips the queue)", Interrupted, errors=(404,)
        )
    }

    async def post(self, session_id: str) -> None:
        session = await self.runtime.sessions.get(self.current_tenant(), session_id)
        interrupted = await self.runtime.sessions.interrupt(session)
        self.write_json({"session_id": session.client_id, "interrupted": interrupted})


class RestartHandler(BaseHandler):
    api = {
        "post": Operation(
            "Give the session a fresh kernel with its checkpointed frames restored (queued "
            "behind running steps)",
            Restarted,
            errors=(404, 409, 503),
        )
    }

    async def post(self, session_id: str) -> None:
        session = await self.runtime.sessions.get(self.current_tenant(), session_id)
        self.write_json(await self.runtime.sessions.restart(session))


class VariablesHandler(BaseHandler):
    api = {
        "get": Operation(
            "The session's named DataFrames as its last checkpoint saw them: name, shape, "
            "dtypes, bytes, cache_key, restorable",
            Variables,
            errors=(404,),
        )
    }

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
