"""What differs between the databases DataExec analyses: one module per dialect.

``dialect_for(settings, url)`` picks the ``Dialect`` of a URL: PostgreSQL (ADBC and
psycopg2), MariaDB/MySQL (mysqlclient), SQLite, or the generic SQLAlchemy path for anything
else. ``DIALECTS`` lists them in the order docs/databases.md shows their guarantees.
"""

from __future__ import annotations

from sqlalchemy.engine import URL

from server.config import Settings
from server.sql.dialects.generic import Dialect, Guarantees
from server.sql.dialects.mysql import MySQL
from server.sql.dialects.postgresql import PostgreSQL
from server.sql.dialects.sqlite import SQLite

DIALECTS: tuple[type[Dialect], ...] = (PostgreSQL, MySQL, SQLite, Dialect)
# (backend, driver) as SQLAlchemy names them: the refined paths know their driver.
_BY_DRIVER = {
    ("postgresql", "psycopg2"): PostgreSQL,
    ("mysql", "mysqldb"): MySQL,
    ("mariadb", "mysqldb"): MySQL,
    ("sqlite", "pysqlite"): SQLite,
}


def dialect_class(url: URL) -> type[Dialect]:
    """The ``Dialect`` that serves ``url``: the generic one for a driver we do not ship."""
    return _BY_DRIVER.get((url.get_backend_name(), url.get_driver_name()), Dialect)


def dialect_for(settings: Settings, url: URL) -> Dialect:
    """The dialect of ``url``, its engine made."""
    return dialect_class(url)(settings, url)


__all__ = ["DIALECTS", "Dialect", "Guarantees", "dialect_class", "dialect_for"]
