"""Session resources: create, list, show, delete, interrupt, restart, variables."""

from __future__ import annotations

from server.handlers.base import BaseHandler, str_field


class SessionsHandler(BaseHandler):
    async def get(self) -> None:
        sessions = await self.runtime.sessions.list(self.current_tenant())
        self.write_json({"sessions": [s.describe() for s in sessions]})

    async def post(self) -> None:
        tenant = self.current_tenant()
        body = self.json_body()
        session = await self.runtime.sessions.create(
            tenant, str_field(body, "session_id"), str_field(body, "pool")
        )
        self.set_header("Location", f"/sessions/{session.client_id}")
        self.write_json(session.describe(), status=201)


class SessionHandler(BaseHandler):
    async def get(self, session_id: str) -> None:
        session = await self.runtime.sessions.get(self.current_tenant(), session_id)
        self.write_json(session.describe())

    async def delete(self, session_id: str) -> None:
        await self.runtime.sessions.delete(self.current_tenant(), session_id)
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()


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
    (r"/sessions/(?P<session_id>[^/]+)/interrupt", InterruptHandler),
    (r"/sessions/(?P<session_id>[^/]+)/restart", RestartHandler),
    (r"/sessions/(?P<session_id>[^/]+)/variables", VariablesHandler),
]
