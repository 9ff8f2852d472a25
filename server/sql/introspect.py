"""The schema of the analysed database, as ``GET /schema`` answers it.

``describe_schema(engine)`` lists every table and view the connecting role may read, in
every non-system schema, with columns (type, nullable, default, primary key, comment),
primary and foreign keys, comments and an estimated row count. The keys the replaced system
had (``name``, ``columns[].name``, ``columns[].type``, ``columns[].is_primary_key``) keep
its meaning; type strings are SQLAlchemy's for the dialect (``INTEGER``, ``VARCHAR(50)``,
``TIMESTAMP WITH TIME ZONE``). A table outside the default schema is named ``schema.table``
(``sales.Orders``), and that name is what ``GET /schema/{table}/profile`` takes.

Few queries, whatever the size of the catalog: on PostgreSQL one catalog query finds the
relations the role may read (``has_schema_privilege`` and ``has_any_column_privilege``),
with their comments and ``pg_class.reltuples``; then, per schema, SQLAlchemy's bulk
reflection (``get_multi_columns``, ``get_multi_pk_constraint``, ``get_multi_foreign_keys``)
limited to those names. Partitions are left out (their parent is listed). On MariaDB/MySQL
one ``information_schema.TABLES`` query does the same (its ``TABLE_ROWS`` the estimate;
each database the user may read is a schema). Other dialects use the Inspector for the
list too, and give no row estimate.

Everything here is synchronous (callers run it in a thread); SQLAlchemy and driver errors
are translated by ``server.sql.errors``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine.reflection import Inspector, ObjectKind

from server.sql.errors import DriverErrors

log = logging.getLogger(__name__)

SYSTEM_SCHEMAS = frozenset(
    {"information_schema", "pg_catalog", "mysql", "performance_schema", "sys", "temp"}
)

_PG_RELATIONS = sa.text(
    """
    SELECT n.nspname AS schema, c.relname AS name, c.relkind AS relkind,
           c.reltuples AS reltuples, obj_description(c.oid, 'pg_class') AS comment
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND NOT c.relispartition
      AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
      AND has_schema_privilege(n.oid, 'USAGE')
      AND has_any_column_privilege(c.oid, 'SELECT')
    ORDER BY n.nspname, c.relname
    """
)

# Every database but MariaDB/MySQL's own: TABLES lists only what the user may see. TABLE_ROWS
# is InnoDB's estimate (exact for MyISAM); a view's TABLE_COMMENT is the word "VIEW".
_MYSQL_RELATIONS = sa.text(
    """
    SELECT TABLE_SCHEMA AS `schema`, TABLE_NAME AS name, TABLE_TYPE AS type,
           TABLE_ROWS AS row_estimate, TABLE_COMMENT AS comment
    FROM information_schema.TABLES
    WHERE TABLE_TYPE IN ('BASE TABLE', 'VIEW')
      AND TABLE_SCHEMA NOT IN ('information_schema', 'mysql', 'performance_schema', 'sys')
    ORDER BY TABLE_SCHEMA, TABLE_NAME
    """
)
MYSQL_DIALECTS = ("mysql", "mariadb")

_PG_TYPE_NAMES = sa.text(
    """
    SELECT a.attname, format_type(a.atttypid, a.atttypmod)
    FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = :schema AND c.relname = :name AND a.attnum > 0 AND NOT a.attisdropped
    """
)


@dataclass(frozen=True)
class Relation:
    """A table or view the role may read."""

    schema: str
    name: str
    kind: str  # "table" | "view"
    qualified: str
    row_estimate: int | None = None
    comment: str | None = None
    samplable: bool = False  # a heap PostgreSQL can TABLESAMPLE


def qualified_name(schema: str, name: str, default_schema: str | None) -> str:
    """The name /schema shows: bare in the default schema, else ``schema.name``."""
    return name if schema == default_schema else f"{schema}.{name}"


def readable_relations(conn: sa.Connection, inspector: Inspector) -> list[Relation]:
    """Every table and view in a non-system schema that the connected role may read."""
    default = inspector.default_schema_name
    if conn.dialect.name == "postgresql":
        return [
            Relation(
                schema=row.schema,
                name=row.name,
                kind="view" if row.relkind in ("v", "m") else "table",
                qualified=qualified_name(row.schema, row.name, default),
                row_estimate=int(row.reltuples)
                if row.reltuples is not None and row.reltuples >= 0 and row.relkind != "v"
                else None,
                comment=row.comment,
                samplable=row.relkind in ("r", "p", "m"),
            )
            for row in conn.execute(_PG_RELATIONS)
        ]
    if conn.dialect.name in MYSQL_DIALECTS:
        return [
            Relation(
                schema=row.schema,
                name=row.name,
                kind="view" if row.type == "VIEW" else "table",
                qualified=qualified_name(row.schema, row.name, default),
                row_estimate=None if row.type == "VIEW" else _int_or_none(row.row_estimate),
                comment=(row.comment or None) if row.type != "VIEW" else None,
            )
            for row in conn.execute(_MYSQL_RELATIONS)
        ]
    relations = []
    for schema in inspector.get_schema_names():
        if schema.lower() in SYSTEM_SCHEMAS or schema.lower().startswith("pg_"):
            continue
        for kind, names in (
            ("table", inspector.get_table_names(schema=schema)),
            ("view", inspector.get_view_names(schema=schema)),
        ):
            for name in names:
                qualified = qualified_name(schema, name, default)
                relations.append(Relation(schema, name, kind, qualified))
    return relations


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def type_string(type_: Any, dialect: sa.Dialect) -> str:
    """A column type as the dialect spells it (``INTEGER``, ``VARCHAR(50)``)."""
    if isinstance(type_, sa.types.NullType):
        return "UNKNOWN"
    try:
        return str(type_.compile(dialect=dialect))
    except (sa_exc.CompileError, NotImplementedError):
        return type(type_).__name__.upper()


def describe_schema(engine: sa.Engine) -> dict[str, Any]:
    """The ``GET /schema`` answer: ``{"dialect", "schema": {"tables": [...]}}``."""
    with DriverErrors(engine.url).connect(engine, "reading the schema") as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        inspector = sa.inspect(conn)
        default = inspector.default_schema_name
        relations = readable_relations(conn, inspector)
        by_schema: dict[str, list[Relation]] = {}
        for relation in relations:
            by_schema.setdefault(relation.schema, []).append(relation)
        tables = []
        for schema, members in by_schema.items():
            tables.extend(_describe(conn, inspector, schema, members, default))
        conn.rollback()
    tables.sort(key=lambda t: (t["schema"] != default, t["schema"], t["name"]))
    return {"dialect": engine.dialect.name, "schema": {"tables": tables}}


def _describe(
    conn: sa.Connection,
    inspector: Inspector,
    schema: str,
    members: list[Relation],
    default: str | None,
) -> list[dict[str, Any]]:
    names = [m.name for m in members]
    options: dict[str, Any] = {"schema": schema, "filter_names": names, "kind": ObjectKind.ANY}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa_exc.SAWarning)  # "Did not recognize type ..."
        columns = _by_name(inspector.get_multi_columns(**options))
        primary = _by_name(inspector.get_multi_pk_constraint(**options))
        foreign = _by_name(inspector.get_multi_foreign_keys(**options))
    comments: dict[str, Any] = {}
    if conn.dialect.name not in ("postgresql", *MYSQL_DIALECTS) and conn.dialect.supports_comments:
        with contextlib.suppress(NotImplementedError):
            comments = _by_name(inspector.get_multi_table_comment(**options))
    dialect = conn.dialect
    out = []
    for member in members:
        cols = columns.get(member.name, [])
        pk = list((primary.get(member.name) or {}).get("constrained_columns") or [])
        types = [type_string(c["type"], dialect) for c in cols]
        if "UNKNOWN" in types and dialect.name == "postgresql":
            types = _pg_type_names(conn, member, cols, types)
        comment = member.comment
        if comment is None and member.name in comments:
            comment = comments[member.name].get("text")
        out.append(
            {
                "name": member.qualified,
                "schema": member.schema,
                "kind": member.kind,
                "columns": [
                    {
                        "name": c["name"],
                        "type": t,
                        "nullable": bool(c.get("nullable", True)),
                        "default": None if c.get("default") is None else str(c["default"]),
                        "is_primary_key": c["name"] in pk,
                        "comment": c.get("comment"),
                    }
                    for c, t in zip(cols, types, strict=True)
                ],
                "primary_key": pk,
                "foreign_keys": [
                    {
                        "columns": list(fk["constrained_columns"]),
                        "references": {
                            "table": qualified_name(
                                # None: found through the search path, i.e. the default
                                fk.get("referred_schema") or default or schema,
                                fk["referred_table"],
                                default,
                            ),
                            "columns": list(fk["referred_columns"]),
                        },
                    }
                    for fk in foreign.get(member.name, [])
                ],
                "comment": comment,
                "row_estimate": member.row_estimate,
            }
        )
    return out


def _by_name(result: dict[tuple[str | None, str], Any]) -> dict[str, Any]:
    return {name: value for (_, name), value in result.items()}


def _pg_type_names(
    conn: sa.Connection, relation: Relation, cols: list[dict[str, Any]], types: list[str]
) -> list[str]:
    """PostgreSQL's own names for the types SQLAlchemy does not know (extensions, ...)."""
    params = {"schema": relation.schema, "name": relation.name}
    names: dict[str, str] = dict(conn.execute(_PG_TYPE_NAMES, params).tuples().all())
    return [
        str(names.get(c["name"], t)).upper() if t == "UNKNOWN" else t
        for c, t in zip(cols, types, strict=True)
    ]
