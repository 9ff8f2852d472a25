"""Query parameters as DB-API users write them, made into the ``:name`` ones ``sql()`` takes.

``pd.read_sql(q, conn, params=...)`` and ``conn.cursor().execute(q, params)`` are written
for whatever driver their author knew, so ``named(query, params)`` accepts PEP 249's styles
and PostgreSQL's own:

    params a dict          ``:name`` (SQLAlchemy's, as is) or ``%(name)s`` (psycopg2's)
    params a list/tuple    ``%s`` (psycopg2, mysqlclient), ``?`` (sqlite3, ADBC) or
                           ``$1``/``:1`` (PostgreSQL, PEP 249's numeric)

and answers the query with ``:name`` markers and a dict (positional values become ``p1``,
``p2``, ...). Markers are found only outside string literals, quoted identifiers, dollar
quotes and comments, so ``'50%'``, ``'?'`` and ``x::int`` stay as they are; in the ``%``
styles ``%%`` is a literal ``%``, as the drivers read it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

# What the scanner skips (literals, identifiers, comments), then the markers it knows.
_TOKEN = re.compile(
    r"""
      (?P<skip> [Ee]'(?:[^'\\]|\\.|'')*'     # E'...' (backslash escapes)
              | '(?:[^']|'')*'              # '...'
              | "(?:[^"]|"")*"              # "identifier"
              | `[^`]*`                     # `identifier` (MySQL)
              | \$(?P<tag>[A-Za-z_][A-Za-z_0-9]*|)\$.*?\$(?P=tag)\$   # $tag$...$tag$
              | --[^\n]*                    # -- comment
              | /\*.*?\*/                   # /* comment */
              | ::                          # a cast, not a marker
              )
    | (?P<pyformat> %\((?P<name>[^)]+)\)s )
    | (?P<format> %s )
    | (?P<percent> %% )
    | (?P<qmark> \? )
    | (?P<numeric> (?<![\w\])])[$:](?P<number>[0-9]+) )   # not a slice's a[1:2]
    """,
    re.X | re.S,
)


def named(query: str, params: Any) -> tuple[str, dict[str, Any] | None]:
    """``query`` with ``:name`` markers, and its parameters as a dict (None: none given)."""
    if params is None:
        return query, None
    if isinstance(params, Mapping):
        values = {str(k): plain(v) for k, v in params.items()}
        if not any(m.lastgroup == "pyformat" for m in _TOKEN.finditer(query)):
            return query, values or None
        return _rewrite(query, {"pyformat": lambda m: ":" + m.group("name")}), values
    if isinstance(params, (str, bytes)) or not isinstance(params, Sequence):
        raise TypeError(
            "query parameters are a dict ({'name': value} for :name or %(name)s) or a list "
            f"(for %s, ? or $1), not {type(params).__name__}"
        )
    given = [plain(v) for v in params]
    if not given:
        return query, None
    kinds = {m.lastgroup for m in _TOKEN.finditer(query)}
    if "format" in kinds:
        return _positional(query, "format", given)
    if "numeric" in kinds:
        return _numbered(query, given)
    if "qmark" in kinds:
        return _positional(query, "qmark", given)
    raise TypeError(
        f"{len(given)} parameters given, and the query has no %s, ? or $1 marker for them"
    )


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (the broker's frames are JSON)."""
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (str, bytes)):
        try:
            return item()
        except (TypeError, ValueError):
            return value
    return value


def _positional(query: str, kind: str, given: list[Any]) -> tuple[str, dict[str, Any]]:
    count = 0

    def marker(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f":p{count}"

    rewritten = _rewrite(query, {kind: marker}, percent=kind == "format")
    if count != len(given):
        marks = "%s" if kind == "format" else "?"
        raise TypeError(
            f"the query has {count} {marks} markers and {len(given)} parameters were given"
        )
    return rewritten, {f"p{i}": value for i, value in enumerate(given, 1)}


def _numbered(query: str, given: list[Any]) -> tuple[str, dict[str, Any]]:
    def marker(match: re.Match[str]) -> str:
        number = int(match.group("number"))
        if not 1 <= number <= len(given):
            raise TypeError(
                f"the query names parameter {match.group('numeric')} and "
                f"{len(given)} parameters were given"
            )
        return f":p{number}"

    rewritten = _rewrite(query, {"numeric": marker})
    return rewritten, {f"p{i}": value for i, value in enumerate(given, 1)}


def _rewrite(query: str, markers: dict[str, Any], percent: bool = False) -> str:
    """``query`` with the markers of the kinds given replaced (``%%`` too when ``percent``)."""

    def replace(match: re.Match[str]) -> str:
        kind = match.lastgroup or ""
        if kind in markers:
            # ``:p1::int`` is no bind marker to SQLAlchemy (``:p1`` before ``:``): a space.
            after = match.string[match.end() : match.end() + 1]
            return str(markers[kind](match)) + (" " if after == ":" else "")
        if kind == "percent" and (percent or "pyformat" in markers):
            return "%"
        return match.group(0)

    return _TOKEN.sub(replace, query)
