"""GET /schema and GET /schema/{table}/profile, on PostgreSQL (the demo data plus a made-up
catalog: views, a non-public schema, quoted mixed-case names, an empty table, tables the
query role may not read). SQLite's are in ``tests/unit/test_schema_sqlite.py``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from server.embedded.postgres import EmbeddedPostgres
from server.errors import DatabaseUnavailable, NotFound
from server.sql.introspect import describe_schema
from server.sql.profile import profile_table

CATALOG = """
CREATE SCHEMA sales;
CREATE TABLE sales."Customers" (
    "CustomerId" integer PRIMARY KEY,
    "Name" varchar(50) NOT NULL
);
CREATE TABLE sales."Orders" (
    id serial PRIMARY KEY,
    "CustomerId" integer NOT NULL REFERENCES sales."Customers",
    carrier varchar(2) REFERENCES public.airlines (carrier),
    amount numeric(10, 2),
    placed_at timestamp NOT NULL DEFAULT now(),
    paid boolean
);
COMMENT ON TABLE sales."Orders" IS 'One row per order';
COMMENT ON COLUMN sales."Orders".amount IS 'In euros';
INSERT INTO sales."Customers" VALUES (1, 'Ada'), (2, 'Grace');
INSERT INTO sales."Orders" ("CustomerId", carrier, amount, placed_at, paid) VALUES
    (1, 'UA', 10.50, '2024-01-01 10:00', true),
    (1, 'AA', 20.00, '2024-01-02 11:00', false),
    (2, NULL, NULL, '2024-02-01 12:00', NULL);
CREATE VIEW sales.big_orders AS SELECT id, amount FROM sales."Orders" WHERE amount > 15;
CREATE VIEW public.late_flights AS
    SELECT carrier, flight, dep_delay FROM flights WHERE dep_delay > 60;
CREATE TABLE public.empty_table (id integer PRIMARY KEY, label text, at date);
CREATE TABLE public.payroll (who text, salary integer);
REVOKE SELECT ON public.payroll FROM dataexec_query;
CREATE SCHEMA private;
REVOKE USAGE ON SCHEMA private FROM dataexec_query;
CREATE TABLE private.secrets (x integer);
CREATE TABLE public.readings (n integer, v double precision, t timestamptz, label text)
    WITH (autovacuum_enabled = false);
INSERT INTO public.readings
    SELECT i, i / 7.0, timestamptz '2024-01-01' + i * interval '1 minute', 'L' || mod(i, 13)
    FROM generate_series(1, 20000) AS i;
"""

CLEANUP = """
DROP SCHEMA IF EXISTS sales CASCADE;
DROP SCHEMA IF EXISTS private CASCADE;
DROP VIEW IF EXISTS public.late_flights;
DROP TABLE IF EXISTS public.empty_table, public.payroll, public.readings;
"""


@pytest.fixture(scope="module")
def catalog(admin_engine: sa.Engine) -> Iterator[None]:
    """The made-up catalog, created by the owner role next to the demo tables."""
    with admin_engine.connect() as conn:
        conn.exec_driver_sql(CLEANUP)
        conn.exec_driver_sql(CATALOG)
        conn.commit()
        # Publish this backend's insert counts now, so a later ANALYZE really is later.
        conn.exec_driver_sql("SELECT pg_stat_force_next_flush()")
        conn.commit()
    yield
    with admin_engine.begin() as conn:
        conn.exec_driver_sql(CLEANUP)


@pytest.fixture(scope="module")
def schema(query_engine: sa.Engine, catalog: None) -> dict[str, Any]:
    return describe_schema(query_engine)


def _tables(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in answer["schema"]["tables"]}


def _columns(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in table["columns"]}


# ------------------------------------------------------------------------ /schema


def test_schema_keeps_the_replaced_systems_shape(schema: dict[str, Any]) -> None:
    assert schema["dialect"] == "postgresql"
    for table in schema["schema"]["tables"]:
        assert isinstance(table["name"], str)
        for column in table["columns"]:
            assert isinstance(column["name"], str)
            assert isinstance(column["type"], str) and column["type"]
            assert isinstance(column["is_primary_key"], bool)
        assert set(table) == {
            "name",
            "schema",
            "kind",
            "columns",
            "primary_key",
            "foreign_keys",
            "comment",
            "row_estimate",
        }


def test_flights_columns_have_the_replaced_systems_type_strings(schema: dict[str, Any]) -> None:
    flights = _tables(schema)["flights"]
    columns = _columns(flights)
    assert flights["schema"] == "public" and flights["kind"] == "table"
    assert columns["year"]["type"] == "INTEGER"
    assert columns["carrier"]["type"] == "VARCHAR(2)"
    assert columns["time_hour"]["type"].startswith("TIMESTAMP")
    assert columns["dep_delay"]["type"] == "DOUBLE PRECISION"
    assert columns["carrier"]["is_primary_key"] and not columns["dep_delay"]["is_primary_key"]
    assert columns["dep_delay"]["nullable"] and not columns["year"]["nullable"]
    assert flights["row_estimate"] == 336_776
    assert flights["comment"].startswith("nycflights13")


def test_non_default_schemas_and_quoted_mixed_case_names(schema: dict[str, Any]) -> None:
    tables = _tables(schema)
    orders = tables["sales.Orders"]
    assert orders["schema"] == "sales" and orders["kind"] == "table"
    assert orders["comment"] == "One row per order"
    columns = _columns(orders)
    assert list(columns) == ["id", "CustomerId", "carrier", "amount", "placed_at", "paid"]
    assert columns["id"]["is_primary_key"] and orders["primary_key"] == ["id"]
    assert columns["id"]["default"].startswith("nextval(")
    assert columns["amount"]["type"] == "NUMERIC(10, 2)"
    assert columns["amount"]["comment"] == "In euros"
    assert columns["placed_at"]["type"] == "TIMESTAMP WITHOUT TIME ZONE"
    assert columns["paid"]["type"] == "BOOLEAN"
    assert sorted(orders["foreign_keys"], key=lambda fk: fk["columns"]) == [
        {
            "columns": ["CustomerId"],
            "references": {"table": "sales.Customers", "columns": ["CustomerId"]},
        },
        {"columns": ["carrier"], "references": {"table": "airlines", "columns": ["carrier"]}},
    ]
    assert tables["sales.Customers"]["columns"][1]["type"] == "VARCHAR(50)"


def test_views_are_listed_as_views(schema: dict[str, Any]) -> None:
    tables = _tables(schema)
    assert tables["late_flights"]["kind"] == "view"
    assert [c["name"] for c in tables["late_flights"]["columns"]] == [
        "carrier",
        "flight",
        "dep_delay",
    ]
    assert tables["late_flights"]["row_estimate"] is None
    assert tables["sales.big_orders"]["kind"] == "view"
    assert tables["sales.big_orders"]["primary_key"] == []


def test_empty_table_is_listed(schema: dict[str, Any]) -> None:
    empty = _tables(schema)["empty_table"]
    assert empty["row_estimate"] is None  # never analyzed: unknown, not 0
    assert empty["primary_key"] == ["id"]


def test_tables_the_role_may_not_read_are_absent(
    schema: dict[str, Any], admin_engine: sa.Engine
) -> None:
    names = set(_tables(schema))
    assert "payroll" not in names and "private.secrets" not in names
    assert not any(name.startswith(("pg_", "information_schema")) for name in names)
    owner_view = _tables(describe_schema(admin_engine))
    assert "payroll" in owner_view and "private.secrets" in owner_view


def test_default_schema_comes_first(schema: dict[str, Any]) -> None:
    schemas = [t["schema"] for t in schema["schema"]["tables"]]
    assert schemas == sorted(schemas, key=lambda s: (s != "public", s))


def test_schema_of_an_unreachable_database_names_host_and_database_but_no_password(
    embedded_pg: EmbeddedPostgres,
) -> None:
    url = embedded_pg.query_url.set(port=1, password="not-this-one-0123")
    engine = sa.create_engine(url)
    with pytest.raises(DatabaseUnavailable) as raised:
        describe_schema(engine)
    message = raised.value.detail()["message"]
    assert "127.0.0.1" in message and "dataexec" in message
    assert "not-this-one-0123" not in message and embedded_pg.query_url.password not in message
    assert raised.value.detail()["type"] == "DATABASE_UNAVAILABLE"


# ----------------------------------------------------------------------- profiles


def test_profile_of_flights_uses_fresh_statistics(query_engine: sa.Engine) -> None:
    profile = profile_table(query_engine, "flights")
    assert profile["table_name"] == "flights"
    assert profile["source"] == "statistics" and profile["analyzed_at"]
    assert profile["row_count"] == 336_776 and profile["row_count_exact"] is False
    columns = {c["name"]: c for c in profile["columns"]}
    assert list(columns) == [c["name"] for c in _flights_columns(query_engine)]

    delay = columns["dep_delay"]  # a float: histogram and moments, no top values
    assert set(delay) == {
        "name",
        "type",
        "null_count",
        "distinct_count",
        "min",
        "max",
        "mean",
        "histogram",
    }
    # Estimates from ANALYZE's sample of 30,000 rows: within a few percent of the truth.
    assert 7_400 < delay["null_count"] < 9_100  # 8,255 exactly
    # Close to the truth (-43, 1301, 12.6), not it.
    assert delay["min"] <= -10 and delay["max"] >= 300 and 10 < delay["mean"] < 16
    assert len(delay["histogram"]) == 10
    assert all(set(b) == {"bucket_start", "bucket_end", "count"} for b in delay["histogram"])
    in_buckets = sum(b["count"] for b in delay["histogram"])
    assert in_buckets == pytest.approx(336_776 - delay["null_count"], abs=20)

    carrier = columns["carrier"]  # text: top values and examples, no histogram
    assert set(carrier) == {
        "name",
        "type",
        "null_count",
        "distinct_count",
        "top_values",
        "distinct_examples",
    }
    assert carrier["top_values"][0]["value"] == "UA"
    assert 52_000 < carrier["top_values"][0]["count"] < 65_000  # 58,665 exactly
    assert 14 <= carrier["distinct_count"] <= 16  # 16; OO flew 32 times, a sample may miss it
    assert len(carrier["distinct_examples"]) == 10

    month = columns["month"]  # a small integer range: one bucket per value, top values
    assert [b["bucket_start"] for b in month["histogram"]] == list(range(1, 13))
    assert month["min"] == 1 and month["max"] == 12
    assert len(month["top_values"]) == 10

    when = columns["time_hour"]  # a timestamp: ISO min/max and a histogram
    assert when["min"].startswith("2013-01-01") and when["max"].startswith("2014-01-01")
    assert when["histogram"][0]["bucket_start"] == when["min"]
    assert "top_values" not in when and "mean" not in when


def _flights_columns(engine: sa.Engine) -> list[dict[str, Any]]:
    return _tables(describe_schema(engine))["flights"]["columns"]


def test_profile_samples_a_table_without_statistics_then_uses_them_after_analyze(
    query_engine: sa.Engine, admin_engine: sa.Engine, catalog: None
) -> None:
    sampled = profile_table(query_engine, "readings", sample_rows=2_000)
    assert sampled["source"] == "sample" and sampled["sample_method"] == "TABLESAMPLE SYSTEM"
    assert 500 < sampled["sample_rows"] <= 4_000
    assert 10_000 < sampled["row_count"] < 40_000 and sampled["row_count_exact"] is False
    columns = {c["name"]: c for c in sampled["columns"]}
    assert 1 <= columns["n"]["min"] and columns["n"]["max"] <= 20_000
    assert columns["label"]["distinct_count"] == 13
    assert columns["t"]["min"].startswith("2024-01")

    with admin_engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE public.readings")
    analyzed = profile_table(query_engine, "readings", sample_rows=2_000)
    assert analyzed["source"] == "statistics" and analyzed["row_count"] == 20_000
    columns = {c["name"]: c for c in analyzed["columns"]}
    assert columns["n"]["min"] == 1 and columns["n"]["max"] == 20_000
    assert columns["n"]["distinct_count"] == 20_000
    assert sum(b["count"] for b in columns["n"]["histogram"]) == pytest.approx(20_000, rel=0.01)
    labels = columns["label"]["top_values"]
    assert len(labels) == 10 and {v["value"] for v in labels} <= {f"L{i}" for i in range(13)}

    full = profile_table(query_engine, "readings")  # small enough to read whole
    assert full["source"] == "full" and full["row_count"] == 20_000
    assert full["row_count_exact"] is True
    n = {c["name"]: c for c in full["columns"]}["n"]
    assert n["distinct_count"] == 20_000 and n["mean"] == pytest.approx(10_000.5)
    assert sum(b["count"] for b in n["histogram"]) == 20_000


def test_profile_of_quoted_mixed_case_table_in_another_schema(
    query_engine: sa.Engine, catalog: None
) -> None:
    profile = profile_table(query_engine, "sales.Orders")
    assert profile["table_name"] == "sales.Orders" and profile["schema"] == "sales"
    assert profile["source"] == "full" and profile["row_count"] == 3
    columns = {c["name"]: c for c in profile["columns"]}
    assert columns["CustomerId"]["top_values"] == [{"value": 1, "count": 2}]
    assert columns["amount"]["min"] == 10.5 and columns["amount"]["null_count"] == 1
    assert columns["paid"] == {
        "name": "paid",
        "type": "BOOLEAN",
        "null_count": 1,
        "true_count": 1,
        "false_count": 1,
    }
    assert columns["placed_at"]["min"] == "2024-01-01T10:00:00"
    assert columns["carrier"]["distinct_examples"] == ["AA", "UA"]


def test_profile_of_a_view(query_engine: sa.Engine, catalog: None) -> None:
    profile = profile_table(query_engine, "late_flights", sample_rows=1_000)
    assert profile["kind"] == "view"
    assert profile["source"] == "sample" and profile["sample_method"] == "LIMIT"
    assert profile["sample_rows"] == 1_000 and profile["row_count"] is None
    delay = {c["name"]: c for c in profile["columns"]}["dep_delay"]
    assert delay["min"] > 60


def test_profile_of_an_empty_table(query_engine: sa.Engine, catalog: None) -> None:
    profile = profile_table(query_engine, "empty_table")
    assert profile["source"] == "full" and profile["row_count"] == 0
    columns = {c["name"]: c for c in profile["columns"]}
    assert columns["id"] == {
        "name": "id",
        "type": "INTEGER",
        "null_count": 0,
        "distinct_count": 0,
        "min": None,
        "max": None,
        "mean": None,
        "histogram": [],
        "top_values": [],
    }
    assert columns["label"]["top_values"] == [] and columns["label"]["distinct_examples"] == []
    assert columns["at"]["histogram"] == []


@pytest.mark.parametrize(
    "name",
    [
        "no_such_table",
        "flights; DROP TABLE x",
        'flights"; DROP TABLE flights; --',
        '"flights"',
        "public.flights",  # /schema names it "flights"
        "FLIGHTS",
        "payroll",  # exists, but the role may not read it
        "private.secrets",
        "sales.orders",
    ],
)
def test_profile_of_an_unknown_name_is_not_found(
    query_engine: sa.Engine, catalog: None, name: str
) -> None:
    with pytest.raises(NotFound) as raised:
        profile_table(query_engine, name)
    assert raised.value.detail()["type"] == "NOT_FOUND"
    with query_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM flights")).scalar() == 336_776


def test_schema_costs_a_few_queries_whatever_the_number_of_tables(
    query_engine: sa.Engine, admin_engine: sa.Engine, catalog: None
) -> None:
    def queries() -> int:
        statements: list[str] = []

        def count(*args: Any) -> None:
            statements.append(args[2])

        sa.event.listen(query_engine, "before_cursor_execute", count)
        try:
            describe_schema(query_engine)
        finally:
            sa.event.remove(query_engine, "before_cursor_execute", count)
        return len(statements)

    before = queries()
    with admin_engine.begin() as conn:
        for i in range(40):
            conn.exec_driver_sql(f"CREATE TABLE sales.extra_{i} (id integer PRIMARY KEY, x text)")
    try:
        assert queries() == before <= 12  # two readable schemas: public and sales
    finally:
        with admin_engine.begin() as conn:
            for i in range(40):
                conn.exec_driver_sql(f"DROP TABLE sales.extra_{i}")


def test_copy_fast_path_and_row_path_agree(
    query_engine: sa.Engine, catalog: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.sql import profile

    # (Not a view over flights: which rows LIMIT takes from a parallel scan is not fixed.)
    names = ["sales.Orders", "readings", "airports", "weather", "empty_table", "sales.big_orders"]
    fast = [profile_table(query_engine, name, sample_rows=5_000) for name in names]
    monkeypatch.setattr(profile, "_read_by_copy", lambda *args: None)
    slow = [profile_table(query_engine, name, sample_rows=5_000) for name in names]
    assert fast == slow
