"""``GET /sessions/{id}/notebook``: a session as a notebook an analyst can read and re-run.

``?format=ipynb`` (default) downloads ``<session>.ipynb``; ``?format=py`` a percent-format
script (``<session>.py``); ``?outputs=false`` leaves outputs and counts out. Outputs hold
user-controlled HTML, so the download carries ``DOWNLOAD_HEADERS`` (nosniff, a CSP that lets
a browser run nothing of it), as cache downloads do.
"""

from __future__ import annotations

import nbformat

from server import __version__, clock
from server.errors import ValidationError
from server.handlers.base import BaseHandler, Operation
from server.handlers.cache import DOWNLOAD_HEADERS
from server.notebook.export import NotebookSession, build_notebook
from server.notebook.percent import to_percent_script

FORMATS = {
    "ipynb": ("application/x-ipynb+json", "ipynb"),
    "py": ("text/x-python; charset=utf-8", "py"),
}
BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


class NotebookHandler(BaseHandler):
    api = {
        "get": Operation(
            "The session as an nbformat v4 notebook, or a percent-format script (an attachment)",
            download="application/x-ipynb+json",
            errors=(400, 404),
            query={
                "format": {"type": "string", "enum": list(FORMATS), "default": "ipynb"},
                "outputs": {"type": "string", "enum": ["true", "false"], "default": "true"},
            },
        )
    }

    def set_default_headers(self) -> None:
        super().set_default_headers()
        for name, value in DOWNLOAD_HEADERS.items():
            self.set_header(name, value)

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
            created=clock.from_timestamp(session.created),
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
