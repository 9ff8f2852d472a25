"""``GET /health`` and ``GET /pools``.

``/health`` needs no token and answers what the replaced system's does (``status``,
``db_dialect``) plus ``version``; the server's state (sandbox, pools, the number of sessions
across tenants, the database) only to the operator token, since it tells one tenant about
the others.
"""

from __future__ import annotations

from server import __version__
from server.handlers.base import BaseHandler, Operation
from server.handlers.bodies import Health, Pools


class HealthHandler(BaseHandler):
    public = True
    api = {
        "get": Operation(
            "Liveness, database dialect and version; with the operator token also sandbox, "
            "pools, sessions and database",
            Health,
            errors=(503,),
        )
    }

    def get(self) -> None:
        ready = self.runtime.started and not self.runtime.closing
        answer = {
            "status": "ok" if ready else "starting" if not self.runtime.closing else "stopping",
            "db_dialect": self.settings_obj.db_dialect,
            "version": __version__,
        }
        if self.auth.is_operator(self.request.headers.get("Authorization")):
            answer.update(self.runtime.health())
        self.write_json(answer, status=200 if ready else 503)


class PoolsHandler(BaseHandler):
    """Operator view of the pools: settings and live counts."""

    api = {
        "get": Operation(
            "Pools with their settings and live counts (operator)", Pools, errors=(403,)
        )
    }

    def get(self) -> None:
        assert self.tenant is not None
        self.auth.require_operator(self.tenant)
        pools = {
            name: {**vars(pool.settings), **pool.stats()}
            for name, pool in self.runtime.pools.items()
        }
        self.write_json({"sandbox": self.runtime.health()["sandbox"], "pools": pools})


routes = [
    (r"/health", HealthHandler),
    (r"/pools", PoolsHandler),
]
