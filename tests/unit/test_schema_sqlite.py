"""GET /schema and profiles on SQLite, below HTTP: ``describe_schema`` and ``profile_table``
on a file database made by the test. PostgreSQL's are in ``tests/test_schema.py``."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from server.errors import DatabaseUnavailable, NotFound
from server.sql.introspect import describe_schema
from server.sql.profile import profile_table


def _tables(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in answer["schema"]["tables"]}


def _columns(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in table["columns"]}


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR(50) NOT NULL);
            CREATE TABLE "Orders" (
                id INTEGER PRIMARY KEY,
                customer_id INTEGER REFERENCES customers (id),
                amount REAL,
                placed_at DATETIME DEFAULT CURRENT_TIMESTAMP,
                note TEXT
            );
            CREATE TABLE empty_table (x INTEGER);
            CREATE VIEW big_orders AS SELECT id, amount FROM "Orders" WHERE amount > 15;
            INSERT INTO customers VALUES (1, 'Ada'), (2, 'Grace');
            INSERT INTO "Orders" VALUES
                (1, 1, 10.5, '2024-01-01 10:00:00', 'first'),
                (2, 1, 20.0, '2024-01-02 11:00:00', NULL),
                (3, 2, 30.0, '2024-02-01 12:00:00', 'x'),
                (4, 2, 'n/a', 'not a date', 'x');
            """
        )
    engine = sa.create_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


def test_sqlite_schema(sqlite_engine: sa.Engine) -> None:
    answer = describe_schema(sqlite_engine)
    assert answer["dialect"] == "sqlite"
    tables = _tables(answer)
    assert set(tables) == {"customers", "Orders", "empty_table", "big_orders"}
    orders = tables["Orders"]
    assert orders["schema"] == "main" and orders["row_estimate"] is None
    columns = _columns(orders)
    assert columns["id"]["type"] == "INTEGER" and columns["id"]["is_primary_key"]
    assert columns["placed_at"]["type"] == "DATETIME"
    assert columns["placed_at"]["default"] == "CURRENT_TIMESTAMP"
    assert orders["foreign_keys"] == [
        {"columns": ["customer_id"], "references": {"table": "customers", "columns": ["id"]}}
    ]
    assert _columns(tables["customers"])["name"]["type"] == "VARCHAR(50)"
    assert tables["big_orders"]["kind"] == "view"


def test_sqlite_profiles_read_rows_and_tolerate_odd_values(sqlite_engine: sa.Engine) -> None:
    profile = profile_table(sqlite_engine, "Orders")
    assert profile["source"] == "full" and profile["row_count"] == 4
    columns = {c["name"]: c for c in profile["columns"]}
    assert columns["amount"]["min"] == 10.5 and columns["amount"]["max"] == 30.0
    assert columns["placed_at"]["min"] == "2024-01-01T10:00:00"
    assert columns["note"]["top_values"][0] == {"value": "x", "count": 2}
    assert columns["note"]["null_count"] == 1

    limited = profile_table(sqlite_engine, "Orders", sample_rows=2)
    assert limited["source"] == "sample" and limited["sample_method"] == "LIMIT"
    assert limited["row_count"] is None and limited["sample_rows"] == 2

    assert profile_table(sqlite_engine, "empty_table")["row_count"] == 0
    with pytest.raises(NotFound):
        profile_table(sqlite_engine, "orders; DROP TABLE customers")


def test_sqlite_missing_file_is_unavailable(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///file:{tmp_path}/nope.db?mode=ro&uri=true")
    with pytest.raises(DatabaseUnavailable):
        describe_schema(engine)
