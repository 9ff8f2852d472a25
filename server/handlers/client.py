"""``GET /client`` and ``GET /client/<wheel>``: the client package for analysts' Jupyter.

Public, like ``/health``: the package holds no secret, and ``pip install <url>`` sends no
token.
"""

from __future__ import annotations

from server.errors import NotFound
from server.handlers.base import BaseHandler, Operation
from server.handlers.bodies import ClientInfo
from server.ops import client_wheel


class ClientHandler(BaseHandler):
    public = True
    api = {
        "get": Operation(
            "Where to get the client package (dataexec-kernel) for notebooks outside DataExec: "
            "its wheel URL and the pip command",
            ClientInfo,
        )
    }

    def get(self) -> None:
        url = f"{self.request.protocol}://{self.request.host}/client/{client_wheel.filename()}"
        self.write_json(
            {
                "package": "dataexec-kernel",
                "version": client_wheel.version(),
                "wheel": url,
                "install": f"pip install '{url}'",
                "configure": "DATAEXEC_URL and DATAEXEC_TOKEN, or DATAEXEC_DATABASE_URL",
            }
        )


class ClientWheelHandler(BaseHandler):
    public = True
    api = {
        "get": Operation(
            "The client package as a wheel (pip install <this URL>)",
            download="application/zip",
            errors=(404,),
        )
    }

    def get(self, name: str) -> None:
        if name != client_wheel.filename():
            raise NotFound(f"no client package {name!r}; GET /client names the current one")
        self.set_header("Content-Type", "application/zip")
        self.set_header("Content-Disposition", f'attachment; filename="{name}"')
        self.finish(client_wheel.build())


routes = [
    (r"/client", ClientHandler),
    (r"/client/(?P<name>[^/]+)", ClientWheelHandler),
]
