"""The SQL guard on its own: what passes, what is refused and why, and that hostile input
gets its answer quickly. No database is needed; test_sql.py covers the walls behind it."""

from __future__ import annotations

import random
import time

import pytest
from dataexec_testing.guard_cases import MYSQL_REJECTED, REJECTED
from sqlglot import exp

from server.errors import SqlNotAllowed
from server.sql.guard import (
    ALLOWED_NODE_TYPES,
    ALLOWED_ROOT_TYPES,
    DEFAULT_MAX_LENGTH,
    check_query,
    parse_deny_lists,
    sqlglot_dialect,
)

THREE_TABLE_JOIN = (
    "SELECT f.carrier, a.name, p.model, count(*) AS n FROM flights f "
    "JOIN airlines a ON a.carrier = f.carrier LEFT JOIN planes p ON p.tailnum = f.tailnum "
    "WHERE f.dep_delay > 15 AND f.month BETWEEN 1 AND 6 GROUP BY 1, 2, 3 ORDER BY n DESC LIMIT 20"
)


def refusal(sql: str, dialect: str = "postgresql", **limits: object) -> str:
    """The reason the guard gives for refusing ``sql`` (fails the test if it passes)."""
    with pytest.raises(SqlNotAllowed) as info:
        check_query(sql, dialect, **limits)  # type: ignore[arg-type]
    assert info.value.type == "SQL_NOT_ALLOWED" and info.value.status == 400
    return info.value.message


ALLOWED = [
    pytest.param("SELECT 1", id="select-literal"),
    pytest.param("SELECT * FROM flights WHERE origin = 'JFK' LIMIT 10", id="select-where-limit"),
    pytest.param(THREE_TABLE_JOIN, id="three-table-join"),
    pytest.param("SELECT * FROM t1 FULL OUTER JOIN t2 USING (id) CROSS JOIN t3", id="join-kinds"),
    pytest.param(
        "WITH m AS (SELECT origin, avg(dep_delay) AS d FROM flights GROUP BY 1) "
        "SELECT * FROM m WHERE d > 10",
        id="cte",
    ),
    pytest.param(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) "
        "SELECT * FROM r",
        id="recursive-cte",
    ),
    pytest.param(
        "SELECT origin, rank() OVER (PARTITION BY origin ORDER BY dep_delay DESC), "
        "lag(dep_delay) OVER w FROM flights WINDOW w AS (ORDER BY time_hour "
        "ROWS BETWEEN 3 PRECEDING AND CURRENT ROW)",
        id="window-functions",
    ),
    pytest.param("SELECT 1 UNION SELECT 2 UNION ALL SELECT 3", id="union"),
    pytest.param(
        "SELECT a FROM t INTERSECT SELECT a FROM u EXCEPT SELECT 2", id="intersect-except"
    ),
    pytest.param("VALUES (1, 'a'), (2, 'b')", id="values"),
    pytest.param("(SELECT 1) UNION (SELECT 2) ORDER BY 1", id="parenthesized-query"),
    pytest.param("TABLE airlines", id="table-statement"),
    pytest.param("SELECT * FROM (VALUES (1)) AS v(a) WHERE EXISTS (SELECT 1)", id="subqueries"),
    pytest.param("SELECT a FROM t WHERE a IN (SELECT a FROM u WHERE u.b = t.b)", id="in-subquery"),
    pytest.param(
        "SELECT * FROM t1 LEFT JOIN LATERAL (SELECT * FROM t2 WHERE t2.a = t1.a LIMIT 1) x ON true",
        id="lateral",
    ),
    pytest.param("SELECT a::int, b::numeric(10, 2), '2020-01-01'::date FROM t", id="casts"),
    pytest.param(
        "SELECT data->'a'->>'b', data #>> '{x,y}' FROM t WHERE data ? 'k' AND data @> '{}'::jsonb",
        id="json-operators",
    ),
    pytest.param(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public'",
        id="information-schema-columns",
    ),
    pytest.param("SELECT tablename FROM pg_catalog.pg_tables", id="pg-catalog-pg-tables"),
    pytest.param("SELECT * FROM generate_series(1, 10) AS g(n)", id="generate-series-in-from"),
    pytest.param(
        "SELECT d FROM generate_series('2013-01-01'::date, '2013-12-01', interval '1 month') d",
        id="generate-series-dates",
    ),
    pytest.param("SELECT name FROM airlines WHERE name ILIKE '%air%'", id="ilike"),
    pytest.param(
        "SELECT date_trunc('month', time_hour), count(*) FROM flights GROUP BY 1", id="date-trunc"
    ),
    pytest.param(
        "SELECT dest, string_agg(DISTINCT carrier, ', ' ORDER BY carrier) FROM flights "
        "GROUP BY dest",
        id="string-agg",
    ),
    pytest.param(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY a), count(*) FILTER (WHERE a > 1) "
        "FROM t",
        id="ordered-set-and-filter",
    ),
    pytest.param(
        "SELECT DISTINCT ON (a) a, b FROM t ORDER BY a, b DESC NULLS LAST", id="distinct-on"
    ),
    pytest.param("SELECT x[1], x[2:3], ARRAY[1, 2] || ARRAY[3] FROM t", id="arrays"),
    pytest.param(
        "SELECT * FROM json_to_recordset('[{\"a\": 1}]') AS x(a int, b text)",
        id="column-definition-list",
    ),
    pytest.param("SELECT now() - interval '7 days', now() AT TIME ZONE 'UTC'", id="intervals"),
    pytest.param("SELECT a FROM t WHERE a = :name AND b = $1", id="placeholders"),
    pytest.param("SELECT current_setting('TimeZone')", id="current-setting-is-a-read"),
    pytest.param("SELECT name, setting FROM pg_settings", id="pg-settings-is-a-read"),
    pytest.param("SELECT * FROM pg_stat_user_tables", id="table-statistics"),
    pytest.param(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'pg_stat_activity'",
        id="refused-name-inside-a-string",
    ),
    pytest.param("SELECT lo_price, nextval FROM lo_orders", id="refused-names-as-columns"),
    pytest.param("SELECT $$ it's ; DELETE $$, 'a;b'", id="semicolons-inside-strings"),
    pytest.param("/* why */ SELECT 1 -- trailing words", id="comments"),
    pytest.param("SELECT 1 /* nested /* comment */ still comment */", id="nested-comment"),
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_read_only_query_passes(sql: str) -> None:
    checked = check_query(sql, "postgresql")
    # What runs is the text that was checked, at most cut before a trailing comment.
    assert checked and sql.strip().startswith(checked)


@pytest.mark.parametrize(("sql", "reason"), REJECTED)
def test_refused_query_says_why(sql: str, reason: str) -> None:
    assert reason.lower() in refusal(sql).lower()


@pytest.mark.parametrize(("sql", "reason"), MYSQL_REJECTED)
def test_mysql_refusals_say_why(sql: str, reason: str) -> None:
    assert reason.lower() in refusal(sql, "mysql").lower()


def test_the_reason_of_a_parse_error_has_line_and_column() -> None:
    reason = refusal("SELECT 1\nFROM t\nWHERE (a = ")
    assert "line 3" in reason and "column" in reason


def test_the_statement_comes_back_without_semicolon_or_trailing_comment() -> None:
    assert check_query("  SELECT 1 ;  ") == "SELECT 1"
    assert check_query("SELECT 1; -- done") == "SELECT 1"
    assert check_query("/* lead */ SELECT 'a;b' -- tail\n;") == "/* lead */ SELECT 'a;b'"
    assert check_query("SELECT $q$ x $q$;;") == "SELECT $q$ x $q$"
    assert check_query('SELECT "a""b" FROM t') == 'SELECT "a""b" FROM t'


def test_a_marker_inside_a_literal_is_refused_when_parameters_are_bound() -> None:
    # SQLAlchemy's text() would put the bound value inside the string, where it can close it.
    sql = "SELECT ':x' AS a WHERE b = :x"
    assert check_query(sql) == sql
    assert "parameter marker :x" in refusal(sql, params={"x"})
    assert "parameter marker :y" in refusal("SELECT 1 -- :y\n", params=["y"])
    assert check_query("SELECT '{\"a\":1}'::jsonb WHERE b = :x", params={"x"})


def test_mangled_queries_only_ever_raise_sql_not_allowed() -> None:
    # Fail closed: whatever the parser makes of broken input, the answer is a refusal with a
    # reason, never another exception that a caller might mistake for something else.
    pieces = ["(", ")", "[", "'", '"', "$$", "--", "/*", "*/", ";", "::", "$1", "E'", "U&", "\\"]
    corpus = [str(p.values[0]) for p in ALLOWED + REJECTED]
    rng = random.Random(20240611)
    for _ in range(300):
        sql = rng.choice(corpus)
        for _ in range(rng.randint(1, 3)):
            at = rng.randint(0, len(sql))
            sql = sql[:at] + rng.choice(pieces + corpus[:5]) + sql[at + rng.randint(0, 3) :]
        for dialect in ("postgresql", "sqlite"):
            try:
                assert check_query(sql, dialect)
            except SqlNotAllowed as exc:
                assert exc.message


# -- limits: hostile input gets a clear answer, quickly -------------------------------------


def test_input_over_max_length_is_refused_before_anything_else() -> None:
    huge = "SELECT " + "1, " * (DEFAULT_MAX_LENGTH // 3) + "1"
    assert "characters long" in refusal(huge)
    assert "limit is 50" in refusal("SELECT " + "a" * 50, max_length=50)


def test_nesting_over_max_depth_is_refused_before_parsing() -> None:
    assert "nested too deeply" in refusal("SELECT " + "(" * 33 + "1" + ")" * 33)
    assert check_query("SELECT " + "(" * 32 + "1" + ")" * 32)
    assert "nested too deeply" in refusal("SELECT " + "(" * 5 + "1" + ")" * 5, max_depth=4)
    case = "SELECT " + "CASE WHEN true THEN " * 40 + "1" + " END" * 40
    assert "CASE" in refusal(case)


@pytest.mark.parametrize(
    ("sql", "verdict"),
    [
        pytest.param("SELECT " + "+".join(["1"] * 5000), None, id="5000-chained-additions"),
        pytest.param("SELECT " + "(" * 40_000 + "1" + ")" * 40_000, "nested", id="80k-parens"),
        pytest.param("SELECT " + "NOT " * 5000 + "true", "nested", id="5000-nots"),
        pytest.param("SELECT x" + "[1]" * 3000, "nested", id="3000-subscripts"),
        pytest.param("SELECT " + "ARRAY[" * 24 + "1" + "]" * 24, "too complex", id="nested-arrays"),
        pytest.param(
            "SELECT 1 WHERE a IN (" + ",".join(map(str, range(15_000))) + ")",
            None,
            id="long-in-list",
        ),
    ],
)
def test_pathological_input_is_answered_within_two_seconds(sql: str, verdict: str | None) -> None:
    # A safety property, not a benchmark: unbounded, the nested arrays take over a minute.
    started = time.perf_counter()
    if verdict is None:
        assert check_query(sql)
    else:
        assert verdict in refusal(sql)
    assert time.perf_counter() - started < 2.0


def test_parse_time_is_bounded_by_max_parse_seconds() -> None:
    started = time.perf_counter()
    reason = refusal("SELECT " + "ARRAY[" * 30 + "1" + "]" * 30, max_parse_seconds=0.1)
    assert "too complex" in reason
    assert time.perf_counter() - started < 1.0


def test_a_typical_query_is_checked_in_milliseconds() -> None:
    check_query(THREE_TABLE_JOIN)  # the first call imports sqlglot's dialect
    started = time.perf_counter()
    for _ in range(20):
        check_query(THREE_TABLE_JOIN)
    assert (time.perf_counter() - started) / 20 < 0.05


# -- other dialects -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        pytest.param("SELECT name FROM sqlite_master WHERE type = 'table'", None, id="select"),
        pytest.param("SELECT * FROM pragma_table_info('flights')", None, id="pragma-function"),
        pytest.param("ATTACH DATABASE '/tmp/x.db' AS x", "ATTACH", id="attach"),
        pytest.param("PRAGMA writable_schema = 1", "PRAGMA", id="pragma"),
        pytest.param("INSERT INTO t VALUES (1)", "INSERT", id="insert"),
        pytest.param("VACUUM INTO '/tmp/copy.db'", "VACUUM", id="vacuum-into"),
        pytest.param(
            "SELECT load_extension('/tmp/evil.so')", "load_extension", id="load-extension"
        ),
        pytest.param("SELECT * FROM fsdir('/')", "fsdir", id="fsdir"),
        # SQLite does not nest comments: the call below is code to it, and to the guard.
        pytest.param(
            "SELECT 1 /* /* */ , load_extension('x') -- */", "load_extension", id="flat-comments"
        ),
    ],
)
def test_sqlite(sql: str, reason: str | None) -> None:
    if reason is None:
        assert check_query(sql, "sqlite") == sql
    else:
        assert reason.lower() in refusal(sql, "sqlite").lower()


def test_mysql_executable_comments_are_refused() -> None:
    assert "executable comment" in refusal("SELECT 1 /*! , LOAD_FILE('/etc/passwd') */", "mysql")
    assert "assignments" in refusal("SELECT @a := 1", "mysql")


def test_dialect_names_are_sqlalchemys() -> None:
    assert sqlglot_dialect("postgresql") == "postgres"
    assert sqlglot_dialect("postgresql+psycopg2") == "postgres"
    assert sqlglot_dialect("sqlite") == "sqlite"
    assert sqlglot_dialect("mssql+pyodbc") == "tsql"
    assert sqlglot_dialect("duckdb") == "duckdb"
    with pytest.raises(ValueError, match="no dialect"):
        sqlglot_dialect("nosuchdb")


# -- the lists themselves -------------------------------------------------------------------


def test_every_allowed_node_type_exists_in_this_sqlglot() -> None:
    # A rename in a sqlglot upgrade would silently refuse every query using that node.
    for name in ALLOWED_NODE_TYPES | ALLOWED_ROOT_TYPES:
        assert isinstance(getattr(exp, name, None), type), name
    for absent in ("Insert", "Update", "Delete", "Merge", "Command", "Into", "Lock", "Set"):
        assert absent not in ALLOWED_NODE_TYPES


def test_deny_list_file_format() -> None:
    lists = parse_deny_lists("# c\n[functions]\nfoo\nbar_*  # prefix\n[relations]\nv\n")
    assert lists.functions.matches("FOO") and lists.functions.matches("bar_baz")
    assert not lists.functions.matches("bar") and not lists.functions.matches("v")
    assert lists.relations.matches("V")
    with pytest.raises(ValueError, match="unknown section"):
        parse_deny_lists("[tables]\nx\n")
    with pytest.raises(ValueError, match="not a name"):
        parse_deny_lists("[functions]\nDROP TABLE x\n")
    with pytest.raises(ValueError, match="not a name"):
        parse_deny_lists("orphan\n")
