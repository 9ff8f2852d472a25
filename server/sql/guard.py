"""The SQL guard: lets one read-only query through and refuses everything else.

Every query that reaches the database passes through ``check_query``, whether it comes from
``POST /execute`` or from ``sql()`` in a kernel through the broker. The guard either returns
the single statement as the database should run it, or raises ``SqlNotAllowed`` with a reason
that names what it found: the statement kind, the refused function or view, a
data-modifying CTE, ``SELECT INTO``, ``FOR UPDATE``, a second statement, or the line and
column where the query stopped making sense.

The guard works from an allow-list, never from a list of forbidden statements. A list of
forbidden statements is always one entry short: sqlglot turns statements it does not know
(``DO``, ``EXPLAIN ANALYZE``, ``PREPARE``, ``VACUUM``, ``LISTEN``) into opaque commands or
even into bare column names, and a prefix check passes
``WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d``. So the guard asks the opposite
question. The statement must start like a query (``SELECT``, ``WITH``, ``VALUES``, ``TABLE``
or a parenthesis), its root must be a query (``ALLOWED_ROOT_TYPES``), and *every* node of its
syntax tree must be of a type in ``ALLOWED_NODE_TYPES``. A node type that sqlglot adds
tomorrow is refused until someone adds it here on purpose. On top of the structure, a
deny-list of names kept in ``denied_functions.txt`` (read once, on first use) refuses
functions with side effects, functions that run SQL given as a string and views that show
other sessions.

The checks run from cheap to expensive, so that hostile input costs little:

1. the length (``max_length``) and control characters, on the raw text;
2. tokens: the first keyword, one statement, the nesting depth of parentheses, brackets and
   CASE (``max_depth``), lexical forms that PostgreSQL reads differently from sqlglot, and
   the names of called functions;
3. the parse, bounded in CPU time (``max_parse_seconds``) because a few constructs (nested
   ``ARRAY[...]``) make sqlglot's backtracking exponential;
4. the tree walk: allowed node types, data-modifying CTEs, ``SELECT INTO``, row locks,
   refused functions and relations.

``check_query`` is synchronous and CPU-bound; callers on the event loop run it in an
executor. sqlglot is imported on the first call (about 0.1 s), not when this module is
imported.

.. warning::

   The guard checks text; the database must run exactly that text. Two ways in which it
   would not, and that the code around the guard must prevent:

   - SQLAlchemy's ``text()`` replaces ``:name`` everywhere, inside string literals and
     comments too. A bound value then lands inside a literal the guard saw as inert and can
     close it. Pass the names of bound parameters as ``params`` and the guard refuses such
     queries.
   - With ``standard_conforming_strings = off``, PostgreSQL reads backslashes in plain
     ``'...'`` strings as escapes and sqlglot does not. Keep it on (the default).

The guard is the first of three walls: behind it every query runs in a ``READ ONLY``
transaction with a ``statement_timeout``, under a role that may only ``SELECT``.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Collection, Sequence
from importlib import resources
from typing import TYPE_CHECKING, NamedTuple

from server.errors import SqlNotAllowed

if TYPE_CHECKING:
    from sqlglot import exp
    from sqlglot.dialects.dialect import Dialect
    from sqlglot.tokens import Token

DEFAULT_MAX_LENGTH = 100_000
# sqlglot's recursive descent spends 20-25 Python frames per level of nesting, so under
# Python's default recursion limit of 1000 it parses about 40 levels. 32 keeps a margin for
# the caller's own stack; real queries rarely go past 10. Deeper input is refused before
# parsing, and a RecursionError during the parse is still caught and refused.
DEFAULT_MAX_DEPTH = 32
# CPU time of the calling thread (not wall time, so a busy server does not refuse queries
# that a quiet one accepts). A 100 KB query of 28,000 tokens parses in about 0.35 s here.
DEFAULT_MAX_PARSE_SECONDS = 1.0

DENY_LIST_FILE = "denied_functions.txt"

# The root of the statement: a query and nothing else.
ALLOWED_ROOT_TYPES: frozenset[str] = frozenset(
    {"Select", "Union", "Intersect", "Except", "Values", "Subquery"}
)

# Every node of the tree must be an instance of one of these sqlglot expression classes
# (names in ``sqlglot.exp``; base classes admit their subclasses). Statements (Insert,
# Update, Delete, Merge, Create, Command, ...), SELECT INTO (Into) and row locks (Lock) are
# absent on purpose; the walk names them in its reasons when it meets them.
ALLOWED_NODE_TYPES: frozenset[str] = frozenset(
    {
        # the shape of a query
        "Select", "Union", "Intersect", "Except", "Values", "Subquery",
        "With", "CTE", "RecursiveWithSearch",
        "From", "Join", "Lateral", "Table", "TableAlias", "TableSample", "TableFromRows",
        "ColumnDef",  # column definition lists: FROM json_to_recordset(x) AS t(a int)
        "Where", "Group", "GroupingSets", "Cube", "Rollup", "Having", "Qualify",
        "Window", "WindowSpec", "Order", "Ordered", "Distinct",
        "Limit", "LimitOptions", "Offset", "Fetch",
        "Hint", "JoinHint", "IndexTableHint", "WithTableHint",
        # expressions
        "Func",  # every function call, CASE, CAST, EXISTS, AND/OR; names meet the deny-list
        "Binary", "Unary", "Predicate",  # operators, comparisons, LIKE, IN, BETWEEN, NOT, ()
        "Column", "Identifier", "Star", "Var", "Alias", "Aliases", "Tuple", "Bracket", "Slice",
        "Literal", "Boolean", "Null", "HexString", "BitString", "ByteString", "RawString",
        "UnicodeString", "National", "Introducer",
        "Parameter", "Placeholder", "SessionParameter",
        "DataType", "DataTypeParam", "Interval", "IntervalSpan",
        "AtTimeZone", "FromTimeZone", "Filter", "WithinGroup", "IgnoreNulls", "RespectNulls",
        "HavingMax", "Lambda",
        "JSONPath", "JSONPathPart", "JSONKeyValue", "FormatJson", "JSONColumnDef",
        "JSONSchema", "OnCondition", "XMLNamespace", "XMLKeyValueOption",
    }
)  # fmt: skip

# What a refused statement is called in the reason, by root node type.
_STATEMENT_KINDS = {
    "Insert": "INSERT", "Update": "UPDATE", "Delete": "DELETE", "Merge": "MERGE",
    "TruncateTable": "TRUNCATE", "Drop": "DROP", "Create": "CREATE", "Alter": "ALTER",
    "Grant": "GRANT", "Revoke": "REVOKE", "Copy": "COPY", "Analyze": "ANALYZE", "Set": "SET",
    "Commit": "COMMIT", "Rollback": "ROLLBACK", "Pragma": "PRAGMA", "Attach": "ATTACH",
    "Detach": "DETACH", "Execute": "EXECUTE", "Comment": "COMMENT", "Use": "USE",
}  # fmt: skip
_DATA_MODIFYING = ("Insert", "Update", "Delete", "Merge")

# SQLAlchemy's dialect names (``URL.get_backend_name()``) to sqlglot's.
_DIALECTS = {
    "postgresql": "postgres",
    "postgres": "postgres",
    "cockroachdb": "postgres",
    "sqlite": "sqlite",
    "mysql": "mysql",
    "mariadb": "mysql",
    "mssql": "tsql",
    "oracle": "oracle",
    "redshift": "redshift",
    "snowflake": "snowflake",
    "bigquery": "bigquery",
    "duckdb": "duckdb",
    "trino": "trino",
    "presto": "presto",
    "databricks": "databricks",
    "clickhouse": "clickhouse",
}

# Dialects whose servers tokenize like PostgreSQL (identifiers may contain `$`, dollar quotes).
_PG_LEXER = frozenset({"postgres", "redshift", "materialize", "risingwave"})
_FIRST_KEYWORDS = ("SELECT", "WITH", "VALUES", "TABLE", "L_PAREN")
_OPENERS = ("L_PAREN", "L_BRACKET", "L_BRACE", "CASE")
_CLOSERS = ("R_PAREN", "R_BRACKET", "R_BRACE", "END")
_LITERALS = (
    "STRING", "NATIONAL_STRING", "BYTE_STRING", "HEX_STRING", "BIT_STRING", "RAW_STRING",
    "HEREDOC_STRING", "UNICODE_STRING", "NUMBER",
)  # fmt: skip

# Control characters other than tab, newline and carriage return: lexers disagree on them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A character that PostgreSQL reads as part of a word (identifiers may contain `$`).
_WORD_CHAR = re.compile(r"[\w$]")
# What may not touch the end of a number: a word, a `$` or a quote.
_RUN_ON = re.compile(r"[\w$'\"]")
# SQLAlchemy's own pattern for bind parameters in text() (sqlalchemy.sql.elements).
_BIND_MARKER = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")
_DENY_ENTRY = re.compile(r"[a-z0-9_$]+\*?")


def check_query(
    sql: str,
    dialect: str = "postgres",
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_parse_seconds: float = DEFAULT_MAX_PARSE_SECONDS,
    params: Collection[str] = (),
) -> str:
    """Return the one read-only statement in ``sql``, or raise ``SqlNotAllowed`` saying why.

    ``dialect`` is SQLAlchemy's name for the database ("postgresql", "sqlite", ...) or
    sqlglot's. ``params`` names the parameters the caller will bind as ``:name``.
    """
    deadline = time.thread_time() + max_parse_seconds
    _check_text(sql, max_length)
    name = sqlglot_dialect(dialect)
    glot = _glot_dialect(name)
    tokens = _tokenize(glot, sql)
    _check_tokens(sql, tokens, max_depth, params, pg_lexer=name in _PG_LEXER)
    root = _parse(glot, tokens, sql, deadline)
    _check_tree(root, tokens)
    return _statement_text(glot, sql, tokens)


def sqlglot_dialect(name: str) -> str:
    """sqlglot's name for a SQLAlchemy dialect name; ValueError for one we cannot guard."""
    base = name.split("+", 1)[0].strip().lower()
    if base in _DIALECTS:
        return _DIALECTS[base]
    from sqlglot.dialects.dialect import Dialect

    if base and base in Dialect.classes:
        return base
    raise ValueError(f"the SQL guard knows no dialect {name!r}")


# -- 1. the raw text ------------------------------------------------------------------------


def _check_text(sql: str, max_length: int) -> None:
    if len(sql) > max_length:
        raise SqlNotAllowed(
            f"the query is {len(sql):,} characters long; the limit is {max_length:,}"
        )
    if match := _CONTROL.search(sql):
        line, col = _position(sql, match.start())
        raise SqlNotAllowed(
            f"control character U+{ord(match.group()):04X} at line {line}, column {col}"
        )


# -- 2. tokens --------------------------------------------------------------------------------


def _tokenize(glot: Dialect, sql: str) -> list[Token]:
    from sqlglot.errors import TokenError

    try:
        tokens = glot.tokenize(sql)
    except TokenError as exc:
        raise SqlNotAllowed(f"could not read the query: {exc}") from exc
    if not tokens:
        raise SqlNotAllowed("the query is empty")
    return tokens


def _check_tokens(
    sql: str, tokens: list[Token], max_depth: int, params: Collection[str], *, pg_lexer: bool
) -> None:
    if all(token.token_type.name == "SEMICOLON" for token in tokens):
        raise SqlNotAllowed("the query is empty")
    first = tokens[0]
    if first.token_type.name not in _FIRST_KEYWORDS:
        raise SqlNotAllowed(f"{_kind_of(first)} statements are not allowed; {_ONLY_QUERIES}")
    _check_single_statement(tokens)
    _check_depth(tokens, max_depth)
    _check_lexical(sql, tokens, pg_lexer=pg_lexer)
    _check_into(tokens)
    if params:
        _check_bind_markers(tokens, set(params))
    denied = _deny_lists().functions
    for token, following in zip(tokens, tokens[1:], strict=False):
        # Every call as written, before sqlglot maps known names to its own classes.
        if following.token_type.name == "L_PAREN" and token.token_type.name not in _LITERALS:
            if denied.matches(token.text):
                raise SqlNotAllowed(f"function {token.text} is not allowed")


_ONLY_QUERIES = "only one SELECT, UNION/INTERSECT/EXCEPT or VALUES query may run"


def _kind_of(token: Token) -> str:
    word = token.text.upper()
    return word if word.replace("_", "").isalpha() else f"'{token.text}'"


def _check_single_statement(tokens: list[Token]) -> None:
    seen_semicolon = False
    for token in tokens:
        if token.token_type.name == "SEMICOLON":
            seen_semicolon = True
        elif seen_semicolon:
            raise SqlNotAllowed(
                f"more than one statement (the second starts at line {token.line}, "
                f"column {token.col}); send one query at a time"
            )


def _check_depth(tokens: list[Token], max_depth: int) -> None:
    depth = 0
    for token in tokens:
        kind = token.token_type.name
        if kind in _OPENERS:
            depth += 1
            if depth > max_depth:
                raise SqlNotAllowed(
                    f"the query is nested too deeply: more than {max_depth} levels of "
                    f"parentheses, brackets or CASE at line {token.line}, column {token.col}"
                )
        elif kind in _CLOSERS:
            depth = max(0, depth - 1)


def _check_lexical(sql: str, tokens: list[Token], *, pg_lexer: bool) -> None:
    """Refuse spellings that the database tokenizes differently from sqlglot.

    Each of these let text that sqlglot reads as a string hide code that the database runs,
    or let a refused name pass in a disguise that the database decodes.
    """
    for token in tokens:
        kind = token.token_type.name
        start, end = token.start, token.end
        # `0b$$ , f() -- $$`: sqlglot sees 0b and a dollar-quoted string, PostgreSQL before 16
        # sees 0 and the identifier b$$ (identifiers may contain `$`), then code.
        if pg_lexer and sql[start] == "$" and start > 0 and _WORD_CHAR.match(sql[start - 1]):
            raise SqlNotAllowed(
                f"'$' right after a word at line {token.line}, column {token.col} is read "
                "differently by PostgreSQL; put a space before it"
            )
        # `1e'...'`, `1x$$`: PostgreSQL before 16 splits a number from the word after it.
        if pg_lexer and kind == "NUMBER" and end + 1 < len(sql) and _RUN_ON.match(sql[end + 1]):
            raise SqlNotAllowed(
                f"the number at line {token.line}, column {token.col} runs into the text "
                "after it; put a space between them"
            )
        # U&"pg\0072ead_file": PostgreSQL decodes the escapes, sqlglot keeps them.
        if kind == "IDENTIFIER" and sql[max(0, start - 2) : start].upper() == "U&":
            raise SqlNotAllowed(
                f'Unicode-escaped identifiers (U&"...") are not allowed (line {token.line}, '
                f"column {token.col})"
            )
        # MySQL runs the text of /*! ... */ comments; everyone else ignores it.
        for comment in token.comments:
            if comment.startswith("!"):
                raise SqlNotAllowed("executable comments (/*! ... */) are not allowed")


def _check_into(tokens: list[Token]) -> None:
    """Refuse ``INTO`` in a query by name, before a dialect fails to parse it.

    MySQL's ``SELECT ... INTO OUTFILE``/``DUMPFILE`` writes a file on the database server
    and ``INTO @var`` sets a variable; sqlglot parses some of these forms and not others,
    so the refusal says what they are instead of "could not parse".
    """
    for before, token, following in zip(tokens, tokens[1:], tokens[2:], strict=False):
        # INSERT INTO inside a query is a data-modifying CTE: the tree walk names it.
        if token.token_type.name == "INTO" and before.token_type.name != "INSERT":
            target = following.text.upper()
            if target in ("OUTFILE", "DUMPFILE"):
                raise SqlNotAllowed(
                    f"SELECT ... INTO {target} is not allowed: it writes a file on the "
                    "database server"
                )
            raise SqlNotAllowed("SELECT INTO is not allowed: it creates a table or sets variables")


def _check_bind_markers(tokens: list[Token], params: set[str]) -> None:
    for token in tokens:
        inert = [*token.comments]
        if token.token_type.name in _LITERALS or token.token_type.name == "IDENTIFIER":
            inert.append(token.text)
        for text in inert:
            for match in _BIND_MARKER.finditer(text):
                if match.group(1) in params:
                    raise SqlNotAllowed(
                        f"the parameter marker :{match.group(1)} sits inside a string, quoted "
                        f"name or comment (line {token.line}); the value bound to it would "
                        "change the query there"
                    )


# -- 3. the parse -----------------------------------------------------------------------------


class _Overtime(Exception):
    """The parse used up its CPU time (raised from inside sqlglot's parser)."""


def _parse(glot: Dialect, tokens: list[Token], sql: str, deadline: float) -> exp.Expression:
    from sqlglot.errors import ParseError, SqlglotError

    parser = _bounded_parser_class(glot.parser_class)(dialect=glot)
    parser.deadline = deadline
    parser.ticks = 0
    try:
        parsed = parser.parse(tokens, sql)
    except _Overtime:
        raise SqlNotAllowed(
            "the query is too complex to check in the time allowed; simplify it"
        ) from None
    except RecursionError:
        raise SqlNotAllowed("the query is nested too deeply to check") from None
    except ParseError as exc:
        raise SqlNotAllowed(f"could not parse the query: {_describe_parse_error(exc)}") from exc
    except SqlglotError as exc:
        raise SqlNotAllowed(f"could not parse the query: {exc}") from exc
    except Exception as exc:  # fail closed: a crash inside the parser must refuse, not pass
        raise SqlNotAllowed("could not parse the query") from exc
    # A comment after the last semicolon comes back as a Semicolon node holding it.
    statements = [s for s in parsed if s is not None and type(s).__name__ != "Semicolon"]
    if not statements:
        raise SqlNotAllowed("the query is empty")
    if len(statements) > 1:
        raise SqlNotAllowed("more than one statement; send one query at a time")
    return statements[0]


def _describe_parse_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None) or []
    if not errors:
        return str(exc).splitlines()[0]
    first = errors[0]
    return f"{first.get('description')} (line {first.get('line')}, column {first.get('col')})"


@functools.cache
def _bounded_parser_class(parser_class: type) -> type:
    """A subclass of the dialect's parser that stops once the CPU time is used up.

    Every step of the parser, backtracking included, goes through ``_advance``; checking
    the clock there (every 64 steps, the clock costs a system call) bounds any pathological
    input, such as ``ARRAY[ARRAY[...]]`` 20 deep, which takes over a minute unbounded.
    """

    class BoundedParser(parser_class):  # type: ignore[valid-type,misc]
        __slots__ = ("deadline", "ticks")

        def _advance(self, times: int = 1) -> None:
            self.ticks += 1
            if not self.ticks & 63 and time.thread_time() > self.deadline:
                raise _Overtime
            super()._advance(times)

    return BoundedParser


@functools.cache
def _glot_dialect(name: str) -> Dialect:
    """Our own instance of a sqlglot dialect (never the shared one sqlglot caches)."""
    from sqlglot.dialects.dialect import Dialect

    glot = type(Dialect.get_or_raise(name))()
    # sqlglot rewrites 1-based array subscripts (PostgreSQL) to 0-based ones, typing the
    # whole subtree at every subscript: x[1][1]... becomes quadratic and then recursive.
    # The guard returns the original text and never generates SQL, so the offset is moot.
    glot.INDEX_OFFSET = 0
    return glot


# -- 4. the tree --------------------------------------------------------------------------


def _check_tree(root: exp.Expression, tokens: list[Token]) -> None:
    from sqlglot import exp

    roots, allowed = _allowed_classes()
    if not isinstance(root, roots):
        if isinstance(root, exp.Command):
            kind = str(root.this).upper()
        else:
            kind = _STATEMENT_KINDS.get(type(root).__name__) or _kind_of(tokens[0])
        raise SqlNotAllowed(f"{kind} statements are not allowed; {_ONLY_QUERIES}")
    lists = _deny_lists()
    for node in root.walk():
        name = type(node).__name__
        if name in _DATA_MODIFYING:
            if node.find_ancestor(exp.CTE) is not None:
                raise SqlNotAllowed(
                    f"data-modifying CTE ({name.upper()} inside WITH) is not allowed"
                )
            raise SqlNotAllowed(f"{name.upper()} inside a query is not allowed")
        if isinstance(node, exp.Into):
            raise SqlNotAllowed("SELECT INTO is not allowed: it creates a table")
        if isinstance(node, exp.Lock):
            raise SqlNotAllowed(f"{_lock_clause(node)} is not allowed: it locks rows")
        if not isinstance(node, allowed):
            raise SqlNotAllowed(f"{name} syntax is not allowed in a read-only query")
        if isinstance(node, exp.Func):
            for function in _function_names(node):
                if lists.functions.matches(function):
                    raise SqlNotAllowed(f"function {function} is not allowed")
        elif isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier):
            if lists.relations.matches(node.this.name):
                shown = ".".join(p.name for p in node.parts)
                raise SqlNotAllowed(
                    f"reading {shown} is not allowed: it shows other sessions or server secrets"
                )
        elif isinstance(node, exp.PropertyEQ) and not isinstance(node.parent, exp.Func):
            # f(a := 1) names an argument; anywhere else := assigns (MySQL @var := ...).
            raise SqlNotAllowed("assignments (:=) are not allowed")


@functools.cache
def _allowed_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """The allow-lists as classes; a name this sqlglot lacks admits nothing (fails closed)."""
    from sqlglot import exp

    def classes(names: frozenset[str]) -> tuple[type, ...]:
        found = (getattr(exp, name, None) for name in sorted(names))
        return tuple(cls for cls in found if isinstance(cls, type))

    return classes(ALLOWED_ROOT_TYPES), classes(ALLOWED_NODE_TYPES)


def _function_names(node: exp.Func) -> set[str]:
    from sqlglot import exp

    # sqlglot maps known functions to classes (pg's generate_series -> GenerateSeries);
    # check the SQL names of the class as well as the name as written.
    names = {n.lower() for n in type(node).sql_names()}
    if isinstance(node, exp.Anonymous | exp.AnonymousAggFunc):
        names.add(node.name.lower())
    return names


def _lock_clause(lock: exp.Lock) -> str:
    update, key = bool(lock.args.get("update")), bool(lock.args.get("key"))
    if update:
        return "FOR NO KEY UPDATE" if key else "FOR UPDATE"
    return "FOR KEY SHARE" if key else "FOR SHARE"


# -- the statement as it will run -----------------------------------------------------------


def _statement_text(glot: Dialect, sql: str, tokens: list[Token]) -> str:
    """The statement cut after its last token: no trailing semicolon or comment.

    The cut keeps the text that was checked, byte for byte, so that a caller may wrap it in a
    subquery. The tail must tokenize to semicolons only, or the cut is refused.
    """
    last = next(t for t in reversed(tokens) if t.token_type.name != "SEMICOLON")
    tail = sql[last.end + 1 :]
    if tail.strip() and any(t.token_type.name != "SEMICOLON" for t in _tokenize_tail(glot, tail)):
        raise SqlNotAllowed("could not tell where the statement ends")
    return sql[: last.end + 1].strip()


def _tokenize_tail(glot: Dialect, tail: str) -> list[Token]:
    from sqlglot.errors import TokenError

    try:
        return glot.tokenize(tail)
    except TokenError as exc:
        raise SqlNotAllowed("could not tell where the statement ends") from exc


# -- the deny-list --------------------------------------------------------------------------


class DenyList(NamedTuple):
    """Names refused outright, and prefixes (lines ending in ``*``), all lower case."""

    names: frozenset[str]
    prefixes: tuple[str, ...]

    def matches(self, name: str) -> bool:
        """Whether ``name`` (any case, unqualified) is refused."""
        lowered = name.lower()
        return lowered in self.names or lowered.startswith(self.prefixes)


class DenyLists(NamedTuple):
    functions: DenyList
    relations: DenyList


@functools.cache
def _deny_lists() -> DenyLists:
    text = resources.files("server.sql").joinpath(DENY_LIST_FILE).read_text(encoding="utf-8")
    return parse_deny_lists(text)


def parse_deny_lists(text: str) -> DenyLists:
    """Parse the deny-list file format (see ``denied_functions.txt``); ValueError if malformed."""
    sections: dict[str, list[str]] = {"functions": [], "relations": []}
    current: list[str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            if line[1:-1] not in sections:
                raise ValueError(f"{DENY_LIST_FILE}:{number}: unknown section {line}")
            current = sections[line[1:-1]]
        elif current is None or not _DENY_ENTRY.fullmatch(line):
            raise ValueError(f"{DENY_LIST_FILE}:{number}: not a name or name* here: {raw!r}")
        else:
            current.append(line)
    return DenyLists(*(_deny_list(entries) for entries in sections.values()))


def _deny_list(entries: Sequence[str]) -> DenyList:
    return DenyList(
        names=frozenset(e for e in entries if not e.endswith("*")),
        prefixes=tuple(e[:-1] for e in entries if e.endswith("*")),
    )


def _position(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1
