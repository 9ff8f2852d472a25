"""The read-only role SQL that docs/databases.md gives operators, taken from the doc itself.

The fixtures make their reader by executing exactly what the doc says, so a doc that stops
working breaks the tests. ``doc_role_sql("postgresql")`` reads the fenced ```` ```sql ````
block after the marker ``<!-- role-sql:postgresql -->`` and splits it into statements.
The substitutions the fixtures make, and only these:

- ``with_password``: the literal ``'change-me'`` becomes the generated password;
- ``schema_lines`` (PostgreSQL): the doc says "repeat the schema lines for every schema";
  those are the statements naming ``SCHEMA public``, with ``public`` replaced by the schema;
- ``database_lines`` (PostgreSQL): the statements naming ``DATABASE analytics`` (``GRANT
  CONNECT``), for another database, e.g. ``sakila``; with ``schema_lines`` run in that
  database they open it to the same role;
- ``database_grants`` (MariaDB): the ``GRANT ... ON analytics.*`` statement with the
  database replaced (how a second database, e.g. ``sakila``, is opened to the same user).
"""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "databases.md"
DOC_PASSWORD = "'change-me'"
DOC_DATABASE = "analytics"


def doc_role_sql(dialect: str, doc: Path = DOC) -> list[str]:
    """The statements of the doc's ```sql block under ``<!-- role-sql:<dialect> -->``."""
    text = doc.read_text()
    marker = f"<!-- role-sql:{dialect} -->"
    start = text.find(marker)
    if start < 0:
        raise AssertionError(f"{doc} has no {marker} marker")
    found = re.compile(r"```sql\n(.*?)```", re.S).search(text, start + len(marker))
    if not found:
        raise AssertionError(f"{doc}: no ```sql block after {marker}")
    statements = [s.strip() for s in found.group(1).split(";")]
    return [s for s in statements if s]


def with_password(statements: list[str], password: str) -> list[str]:
    """The statements with the doc's placeholder password replaced (no quotes allowed)."""
    if "'" in password or "\\" in password:
        raise ValueError("use a password without quotes or backslashes")
    if not any(DOC_PASSWORD in s for s in statements):
        raise AssertionError(f"the doc's role SQL has no {DOC_PASSWORD} placeholder")
    return [s.replace(DOC_PASSWORD, f"'{password}'") for s in statements]


def schema_lines(statements: list[str], schema: str) -> list[str]:
    """PostgreSQL: the statements naming ``SCHEMA public``, for ``schema`` instead."""
    quoted = '"' + schema.replace('"', '""') + '"'
    lines = [s.replace("SCHEMA public", f"SCHEMA {quoted}") for s in statements]
    picked = [line for line, s in zip(lines, statements, strict=True) if "SCHEMA public" in s]
    if not picked:
        raise AssertionError("the doc's PostgreSQL role SQL has no 'SCHEMA public' lines")
    return picked


def database_lines(statements: list[str], database: str) -> list[str]:
    """PostgreSQL: the doc's statements naming ``DATABASE analytics``, for ``database``."""
    pattern = f" DATABASE {DOC_DATABASE} "
    quoted = '"' + database.replace('"', '""') + '"'
    picked = [s.replace(pattern, f" DATABASE {quoted} ") for s in statements if pattern in s]
    if not picked:
        raise AssertionError(f"the doc's PostgreSQL role SQL has no '...{pattern}...' line")
    return picked


def database_grants(statements: list[str], database: str) -> list[str]:
    """MariaDB: the doc's ``GRANT ... ON analytics.*`` statements, for ``database`` instead."""
    pattern = f" ON {DOC_DATABASE}.*"
    picked = [
        s.replace(pattern, f" ON `{database}`.*")
        for s in statements
        if s.upper().startswith("GRANT") and pattern in s
    ]
    if not picked:
        raise AssertionError(f"the doc's MariaDB role SQL has no GRANT ...{pattern}")
    return picked
