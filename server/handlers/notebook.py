"""``GET /sessions/{id}/notebook``: a session as a notebook an analyst can read and re-run.

``?format=ipynb`` (default) downloads ``<session>.ipynb``; ``?format=py`` a percent-format
script (``<session>.py``); ``?outputs=false`` leaves outputs and counts out.
"""

from __future__ import annotations

import datetime as dt

import nbformat

from server import __version__
from server.errors import ValidationError
from server.handlers.base import BaseHandler
from server.notebook.export import NotebookSession, build_notebook, to_percent_script

FORMATS = {
    "ipynb": ("application/x-ipynb+json", "ipynb"),
    "py": ("text/x-python; charset=utf-8", "py"),
}
BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


class NotebookHandler(BaseHandler):
    async def get(self, session_id: str) -> None:
        sessions = self.runtime.sessions
        session = await sessions.get(self.current_tenant(), session_id)
        kind = self.get_query_argument("format", "ipynb")
        outputs = self.get_query_argument("outputs", "true").lower()
        if kind not in FORMATS:
            raise ValidationError(f"format must be one of {', '.join(FORMATS)}")
        if outputs not in BOOLEANS:
            raise ValidationError("outputs must be true or false")
        about = NotebookSession(
            session_id=session.client_id,
            created=dt.datetime.fromtimestamp(session.created, dt.UTC),
            dialect=self.settings_obj.db_dialect,
            server_version=__version__,
            pool=session.pool.name,
        )
        notebook = build_notebook(about, await sessions.history(session), outputs=BOOLEANS[outputs])
        content_type, suffix = FORMATS[kind]
        body = nbformat.writes(notebook) if kind == "ipynb" else to_percent_script(notebook)
        self.set_header("Content-Type", content_type)
        self.set_header(
            "Content-Disposition", f'attachment; filename="{session.client_id}.{suffix}"'
        )
        self.finish(body.encode())


routes = [(r"/sessions/(?P<session_id>[^/]+)/notebook", NotebookHandler)]
