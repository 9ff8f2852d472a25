"""The analysed database's URL, from whichever settings an operator gave.

``legacy_database_url`` builds it from the replaced system's ``DB_*`` names (as its README
shows them); ``checked_database_url`` gives a URL the driver DataExec ships for its
dialect (SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which is not installed)
and checks that the driver loads, so that a missing one is a line of the one config error,
at ``dataexec check-config`` and at start, never a traceback from the first query.
Both append what is wrong to ``errors`` (``server.config`` raises them together).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

# The replaced system's names that together make database_url.
LEGACY_DB_ENV = ("DB_DIALECT", "DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME")
# The driver DataExec ships for each dialect a URL may name without one. SQLAlchemy's own
# defaults differ: a bare postgresql:// means psycopg 3, which is not installed.
SHIPPED_DRIVERS = {
    "postgresql": "postgresql+psycopg2",
    "postgres": "postgresql+psycopg2",
    "mysql": "mysql+mysqldb",
    "mariadb": "mariadb+mysqldb",
}


def legacy_database_url(env: Mapping[str, str], errors: list[str]) -> str:
    """Build a SQLAlchemy URL from the replaced system's DB_* names (empty when none is set)."""
    given = {name: env[name] for name in LEGACY_DB_ENV if env.get(name)}
    if not given:
        return ""
    missing = [n for n in ("DB_HOST", "DB_USER", "DB_NAME") if n not in given]
    if missing:
        errors.append(
            f"DB_* settings: {', '.join(missing)} missing (DB_HOST, DB_USER and DB_NAME "
            "are needed together)"
        )
        return ""
    dialect = given.get("DB_DIALECT", "postgresql")
    if not re.fullmatch(r"[a-z0-9_+]+", dialect):
        errors.append(f"DB_DIALECT: not a SQLAlchemy dialect name: {dialect!r}")
    port = given.get("DB_PORT", "")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        errors.append(f"DB_PORT: expected a port number, got {port!r}")
        port = ""
    password = given.get("DB_PASSWORD", "")
    auth = quote(given["DB_USER"], safe="") + (":" + quote(password, safe="") if password else "")
    host = given["DB_HOST"] + (f":{port}" if port else "")
    return f"{dialect}://{auth}@{host}/{quote(given['DB_NAME'])}"


def checked_database_url(url: str, errors: list[str]) -> str:
    """``url`` with the driver DataExec ships for its dialect; an error if it cannot load.

    SQLAlchemy imports a dialect's driver only when it first connects: check it here, so
    that a URL naming a driver that is not installed is one line of the config error, at
    ``check-config`` and at start, and not a traceback from the first query.
    """
    if not url:
        return url
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        errors.append("database_url: expected a SQLAlchemy URL such as postgresql://user@host/db")
        return url
    parsed = parsed.set(drivername=SHIPPED_DRIVERS.get(parsed.drivername, parsed.drivername))
    try:
        parsed.get_dialect().import_dbapi()
    except sa_exc.NoSuchModuleError:
        errors.append(
            f"database_url: SQLAlchemy has no dialect {parsed.drivername!r} "
            "(see docs/databases.md for the ones DataExec ships drivers for)"
        )
    except ImportError as exc:
        errors.append(
            f"database_url: the driver of {parsed.drivername!r} is not installed "
            f"({exc.name or exc}); DataExec ships psycopg2 for postgresql:// and mysqlclient "
            "for mysql:// and mariadb://, or install that driver into the server's environment"
        )
    return parsed.render_as_string(hide_password=False)
