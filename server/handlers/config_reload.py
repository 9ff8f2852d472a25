"""``POST /config/reload``: the operator reloads the configuration, as SIGHUP does.

The work is ``Runtime.reload``; docs/config.md ("Reloading while the server runs") says
what applies live. A refused configuration answers ``400 VALIDATION_ERROR`` with every
problem in ``problems`` (and in the message), and the old configuration stays in force.
"""

from __future__ import annotations

from typing import Literal

from msgspec import Struct

from server.errors import ConfigError, ValidationError
from server.handlers.base import BaseHandler, Operation


class Reloaded(Struct, kw_only=True, forbid_unknown_fields=True):
    """The answer of a reload that applied."""

    status: Literal["reloaded"]
    config_file: str | None
    changes: list[str]


class ConfigReloadHandler(BaseHandler):
    api = {
        "post": Operation(
            "Read the configuration file and environment again and apply pools, tenants and "
            "tokens without a restart (operator); a bad configuration is refused whole",
            Reloaded,
            errors=(400, 403),
        )
    }

    async def post(self) -> None:
        assert self.tenant is not None
        self.auth.require_operator(self.tenant)
        try:
            changes = await self.runtime.reload()
        except ConfigError as exc:
            raise ValidationError(
                "configuration refused; the old one stays in force:\n  "
                + "\n  ".join(exc.problems),
                problems=exc.problems,
            ) from None
        config_file = self.runtime.settings.config_file
        self.write_json(
            {
                "status": "reloaded",
                "config_file": str(config_file) if config_file else None,
                "changes": changes,
            }
        )


routes = [(r"/config/reload", ConfigReloadHandler)]
