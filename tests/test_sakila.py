"""Sakila, a public sample database no one here wrote, through DataExec on both dialects.

This module owns the end-to-end checks of issue 11's "public sample database": a real
DataExec server (bubblewrap, a small pool) per dialect, pointed at Sakila through the
SELECT-only reader exactly as a user would give it (``sakila_mariadb``: a
``mysql+mysqldb://`` URL; ``sakila_postgres``: a bare ``postgresql://`` URL), checked over
HTTP:

1. ``GET /schema`` lists Sakila's 16 tables and 7 views with their kinds, primary keys,
   all 22 foreign keys and row estimates close to the real counts; both dialects describe
   the same columns and keys;
2. ``GET /schema/{table}/profile`` answers for every table and view, named as ``/schema``
   names them, with the owner's row counts; both dialects count the same rows and nulls;
3. fifteen analyst-style queries (``QUERIES``: joins, window functions, CTEs, a recursive
   one, date arithmetic and durations, GROUP BY/HAVING, subqueries, string functions,
   ``:name`` parameters) answer what the same text answers through the owner's own
   connection (the driver, no DataExec), answer the same on MariaDB and PostgreSQL, keep
   their whole result readable under their cache key, and hold known facts about Sakila
   (``test_known_facts``); in a kernel, a duration is a pandas timedelta, as
   ``pandas.read_sql`` makes it;
4. a session's steps (``sql()`` with parameters, a SQL step, a ``%%sql`` cell, ``conn``
   with pandas) export as a notebook that re-runs top to bottom outside DataExec, in a
   plain ipykernel with the client package and ``DATAEXEC_DATABASE_URL`` = the reader, to
   the session's final answer.

Answers compare after ``plain()``: decimals and floats as floats (6 places), timestamps as
naive UTC ISO strings (MariaDB's DATETIME is naive, pgloader made PostgreSQL's
``timestamptz``), durations as DataExec spells MariaDB's (``1 day, 23:11:00``), booleans as
integers (MariaDB's ``TINYINT(1)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import io
import re
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pandas as pd
import pytest
import sqlalchemy as sa
from dataexec_testing.api import RunningServer, make_settings, start_server
from dataexec_testing.plain_kernel import (
    KERNEL_NAME,
    clean_env,
    install_client_package,
    plain_kernel_specs,
)
from dataexec_testing.sakila import COUNTS, FOREIGN_KEYS, TABLES, VIEW_NAMES, VIEWS, Sakila
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from server.config import with_default_tenant

TOKEN = "sakila-token-" + secrets.token_hex(8)
SMALL = """
[pools.default]
min_idle = 0
max_kernels = 2
"""
DIALECTS = ("mariadb", "postgresql")
FIXTURES = {"mariadb": "sakila_mariadb", "postgresql": "sakila_postgres"}
MAX_ROWS = 5000  # every answer here is smaller: none may come back truncated

TABLE_NAMES = (
    "actor", "address", "category", "city", "country", "customer", "film", "film_actor",
    "film_category", "film_text", "inventory", "language", "payment", "rental", "staff",
    "store",
)  # fmt: skip
# Sakila's foreign keys: (table, columns, referenced table, referenced columns).
SAKILA_FOREIGN_KEYS = {
    ("address", ("city_id",), "city", ("city_id",)),
    ("city", ("country_id",), "country", ("country_id",)),
    ("customer", ("address_id",), "address", ("address_id",)),
    ("customer", ("store_id",), "store", ("store_id",)),
    ("film", ("language_id",), "language", ("language_id",)),
    ("film", ("original_language_id",), "language", ("language_id",)),
    ("film_actor", ("actor_id",), "actor", ("actor_id",)),
    ("film_actor", ("film_id",), "film", ("film_id",)),
    ("film_category", ("category_id",), "category", ("category_id",)),
    ("film_category", ("film_id",), "film", ("film_id",)),
    ("inventory", ("film_id",), "film", ("film_id",)),
    ("inventory", ("store_id",), "store", ("store_id",)),
    ("payment", ("customer_id",), "customer", ("customer_id",)),
    ("payment", ("rental_id",), "rental", ("rental_id",)),
    ("payment", ("staff_id",), "staff", ("staff_id",)),
    ("rental", ("customer_id",), "customer", ("customer_id",)),
    ("rental", ("inventory_id",), "inventory", ("inventory_id",)),
    ("rental", ("staff_id",), "staff", ("staff_id",)),
    ("staff", ("address_id",), "address", ("address_id",)),
    ("staff", ("store_id",), "store", ("store_id",)),
    ("store", ("address_id",), "address", ("address_id",)),
    ("store", ("manager_staff_id",), "staff", ("staff_id",)),
}
# Every other table's primary key is <table>_id.
PRIMARY_KEYS = {
    "film_actor": ["actor_id", "film_id"],
    "film_category": ["film_id", "category_id"],
    "film_text": ["film_id"],
}


# --- the queries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """An analyst's query: one text for both dialects, or one per dialect where the syntax
    differs (``{"mariadb": ..., "postgresql": ...}``); ``:name`` parameters from ``params``.
    Every query orders its rows by a unique key, so answers compare as lists."""

    name: str
    sql: str | Mapping[str, str]
    params: Mapping[str, Any] = field(default_factory=dict)

    def text(self, dialect: str) -> str:
        return self.sql if isinstance(self.sql, str) else self.sql[dialect]


_FILM_CATEGORY = """
    JOIN inventory i ON i.inventory_id = r.inventory_id
    JOIN film_category fc ON fc.film_id = i.film_id
    JOIN category c ON c.category_id = fc.category_id"""

QUERIES = [
    Query(
        "totals",  # scalar subqueries
        """SELECT (SELECT COUNT(*) FROM rental) AS rentals,
            (SELECT COUNT(*) FROM rental WHERE return_date IS NULL) AS not_returned,
            (SELECT COUNT(*) FROM payment) AS payments,
            (SELECT SUM(amount) FROM payment) AS revenue,
            (SELECT COUNT(*) FROM film) AS films,
            (SELECT COUNT(DISTINCT customer_id) FROM rental) AS renting_customers""",
    ),
    Query(
        "films_per_category",  # join, GROUP BY
        """SELECT c.name AS category, COUNT(*) AS films
        FROM category c JOIN film_category fc ON fc.category_id = c.category_id
        GROUP BY c.category_id, c.name
        ORDER BY films DESC, c.category_id""",
    ),
    Query(
        "best_customers",  # joins, GROUP BY ... HAVING, CONCAT
        """SELECT cu.customer_id, CONCAT(cu.first_name, ' ', cu.last_name) AS customer,
            ci.city, COUNT(*) AS payments, SUM(p.amount) AS total
        FROM customer cu
            JOIN payment p ON p.customer_id = cu.customer_id
            JOIN address a ON a.address_id = cu.address_id
            JOIN city ci ON ci.city_id = a.city_id
        GROUP BY cu.customer_id, cu.first_name, cu.last_name, ci.city
        HAVING SUM(p.amount) > 180
        ORDER BY total DESC, cu.customer_id""",
    ),
    Query(
        "top_films_per_category",  # CTEs, RANK() with ties
        """WITH film_rentals AS (
            SELECT i.film_id, COUNT(*) AS rentals
            FROM rental r JOIN inventory i ON i.inventory_id = r.inventory_id
            GROUP BY i.film_id
        ), ranked AS (
            SELECT c.name AS category, f.film_id, f.title, fr.rentals,
                RANK() OVER (PARTITION BY c.category_id ORDER BY fr.rentals DESC) AS place
            FROM film_rentals fr
                JOIN film f ON f.film_id = fr.film_id
                JOIN film_category fc ON fc.film_id = f.film_id
                JOIN category c ON c.category_id = fc.category_id
        )
        SELECT category, title, rentals, place FROM ranked WHERE place <= 2
        ORDER BY category, place, film_id""",
    ),
    Query(
        "monthly_revenue",  # month of a timestamp, running sum, share of the total
        {
            dialect: f"""WITH monthly AS (
                SELECT {month} AS month, COUNT(*) AS payments, SUM(amount) AS revenue
                FROM payment GROUP BY {month}
            )
            SELECT month, payments, revenue,
                SUM(revenue) OVER (ORDER BY month) AS running_revenue,
                ROUND(100 * revenue / SUM(revenue) OVER (), 2) AS percent_of_total
            FROM monthly ORDER BY month"""
            for dialect, month in (
                ("mariadb", "DATE_FORMAT(payment_date, '%Y-%m')"),
                ("postgresql", "to_char(payment_date, 'YYYY-MM')"),
            )
        },
    ),
    Query(
        "rental_days_by_category",  # DATEDIFF vs date subtraction, AVG, ROUND
        {
            dialect: f"""SELECT c.name AS category, COUNT(*) AS returned,
                ROUND(AVG({days}), 2) AS avg_days, MIN({days}) AS min_days,
                MAX({days}) AS max_days
            FROM rental r {_FILM_CATEGORY}
            WHERE r.return_date IS NOT NULL
            GROUP BY c.category_id, c.name
            ORDER BY avg_days DESC, c.category_id"""
            for dialect, days in (
                ("mariadb", "DATEDIFF(r.return_date, r.rental_date)"),
                ("postgresql", "(r.return_date::date - r.rental_date::date)"),
            )
        },
    ),
    Query(
        "rental_durations",  # a timestamp minus a timestamp: a duration
        {
            "mariadb": """SELECT rental_id, TIMEDIFF(return_date, rental_date) AS rented_for
            FROM rental WHERE rental_id <= 5 ORDER BY rental_id""",
            "postgresql": """SELECT rental_id, return_date - rental_date AS rented_for
            FROM rental WHERE rental_id <= 5 ORDER BY rental_id""",
        },
    ),
    Query(
        "late_returns_by_store",  # a per-row interval: rental date + the film's duration
        {
            dialect: f"""SELECT i.store_id, COUNT(*) AS returned,
                SUM(CASE WHEN r.return_date > {due} THEN 1 ELSE 0 END) AS late,
                ROUND(100.0 * SUM(CASE WHEN r.return_date > {due} THEN 1 ELSE 0 END)
                    / COUNT(*), 2) AS percent_late
            FROM rental r
                JOIN inventory i ON i.inventory_id = r.inventory_id
                JOIN film f ON f.film_id = i.film_id
            WHERE r.return_date IS NOT NULL
            GROUP BY i.store_id ORDER BY i.store_id"""
            for dialect, due in (
                ("mariadb", "r.rental_date + INTERVAL f.rental_duration DAY"),
                ("postgresql", "r.rental_date + f.rental_duration * INTERVAL '1 day'"),
            )
        },
    ),
    Query(
        "time_between_rentals",  # LAG over a named window, timestamp differences
        {
            dialect: f"""SELECT customer_id, rental_id, rental_date,
                LAG(rental_date) OVER w AS previous_rental,
                {hours} AS hours_since_previous
            FROM rental WHERE customer_id <= 3
            WINDOW w AS (PARTITION BY customer_id ORDER BY rental_date, rental_id)
            ORDER BY customer_id, rental_date, rental_id"""
            for dialect, hours in (
                ("mariadb", "TIMESTAMPDIFF(HOUR, LAG(rental_date) OVER w, rental_date)"),
                (
                    "postgresql",
                    "FLOOR(EXTRACT(EPOCH FROM rental_date - LAG(rental_date) OVER w) / 3600)",
                ),
            )
        },
    ),
    Query(
        "favourite_first_rentals",  # ROW_NUMBER() to pick each customer's first rental
        """WITH ordered AS (
            SELECT r.customer_id, f.film_id, f.title,
                ROW_NUMBER() OVER (PARTITION BY r.customer_id
                                   ORDER BY r.rental_date, r.rental_id) AS n
            FROM rental r
                JOIN inventory i ON i.inventory_id = r.inventory_id
                JOIN film f ON f.film_id = i.film_id
        )
        SELECT film_id, title, COUNT(*) AS first_rentals FROM ordered WHERE n = 1
        GROUP BY film_id, title HAVING COUNT(*) >= 2
        ORDER BY first_rentals DESC, film_id""",
    ),
    Query(
        "rentals_per_month_calendar",  # a recursive CTE: every month, the empty ones too
        {
            "mariadb": """WITH RECURSIVE months AS (
                SELECT DATE '2005-05-01' AS month_start
                UNION ALL
                SELECT month_start + INTERVAL 1 MONTH FROM months
                WHERE month_start < DATE '2006-02-01'
            )
            SELECT m.month_start, COUNT(r.rental_id) AS rentals
            FROM months m LEFT JOIN rental r
                ON r.rental_date >= m.month_start
                AND r.rental_date < m.month_start + INTERVAL 1 MONTH
            GROUP BY m.month_start ORDER BY m.month_start""",
            "postgresql": """WITH RECURSIVE months AS (
                SELECT DATE '2005-05-01' AS month_start
                UNION ALL
                SELECT (month_start + INTERVAL '1 month')::date FROM months
                WHERE month_start < DATE '2006-02-01'
            )
            SELECT m.month_start, COUNT(r.rental_id) AS rentals
            FROM months m LEFT JOIN rental r
                ON r.rental_date >= m.month_start
                AND r.rental_date < m.month_start + INTERVAL '1 month'
            GROUP BY m.month_start ORDER BY m.month_start""",
        },
    ),
    Query(
        "stock_never_rented",  # NOT EXISTS, NOT IN
        """SELECT
            (SELECT COUNT(*) FROM film f
             WHERE NOT EXISTS (SELECT 1 FROM inventory i WHERE i.film_id = f.film_id))
                AS films_not_in_stock,
            (SELECT COUNT(*) FROM inventory i
             WHERE i.inventory_id NOT IN (SELECT r.inventory_id FROM rental r))
                AS copies_never_rented""",
    ),
    Query(
        "longer_than_category_average",  # a correlated subquery
        """SELECT c.name AS category, COUNT(*) AS longer_films
        FROM film f
            JOIN film_category fc ON fc.film_id = f.film_id
            JOIN category c ON c.category_id = fc.category_id
        WHERE f.length > (
            SELECT AVG(f2.length) FROM film f2
                JOIN film_category fc2 ON fc2.film_id = f2.film_id
            WHERE fc2.category_id = fc.category_id)
        GROUP BY c.category_id, c.name
        ORDER BY longer_films DESC, c.category_id""",
    ),
    Query(
        "actor_initials",  # string functions, LIKE with a literal %
        """SELECT CONCAT(SUBSTRING(first_name, 1, 1), SUBSTRING(last_name, 1, 1)) AS initials,
            COUNT(*) AS actors,
            MIN(CONCAT(UPPER(SUBSTRING(first_name, 1, 1)), LOWER(SUBSTRING(first_name, 2))))
                AS first_name_example,
            MAX(LENGTH(first_name) + LENGTH(last_name)) AS longest_name,
            SUM(CASE WHEN last_name LIKE '%SON%' THEN 1 ELSE 0 END) AS sons
        FROM actor
        GROUP BY CONCAT(SUBSTRING(first_name, 1, 1), SUBSTRING(last_name, 1, 1))
        HAVING COUNT(*) >= 3
        ORDER BY actors DESC, initials""",
    ),
    Query(
        "sales_by_category_view",  # a view, DENSE_RANK, share of the total
        """SELECT category, total_sales,
            DENSE_RANK() OVER (ORDER BY total_sales DESC) AS place,
            ROUND(100 * total_sales / SUM(total_sales) OVER (), 2) AS percent_of_sales
        FROM sales_by_film_category ORDER BY place, category""",
    ),
    Query(
        "customer_rentals_with_params",  # :name parameters next to a literal %
        """SELECT r.rental_id, f.title, r.rental_date, p.amount
        FROM rental r
            JOIN inventory i ON i.inventory_id = r.inventory_id
            JOIN film f ON f.film_id = i.film_id
            LEFT JOIN payment p ON p.rental_id = r.rental_id
        WHERE r.customer_id = :customer AND f.title LIKE '%A%' AND p.amount >= :least
        ORDER BY r.rental_date, r.rental_id""",
        {"customer": 1, "least": 2.99},
    ),
]


# --- normalising answers ----------------------------------------------------------------------

_ISO_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")


def plain(value: Any) -> Any:
    """A value as both dialects and both paths (JSON, the driver) can agree on it."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal | float):
        return round(float(value), 6)
    if isinstance(value, str) and _ISO_TIMESTAMP.match(value):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.timedelta):  # as DataExec spells MariaDB's TIME: 1 day, 23:11:00
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


@dataclass
class Answer:
    columns: list[str]
    rows: list[list[Any]]
    cache_key: str | None = None  # DataExec's answers: where the whole result is kept

    @classmethod
    def of(cls, columns: list[str], rows: Any) -> Answer:
        return cls(list(columns), [[plain(v) for v in row] for row in rows])

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


# --- the servers ------------------------------------------------------------------------------


@dataclass
class SakilaDataExec:
    """A DataExec server on one dialect's Sakila, the owner's engine beside it, and the
    answers of ``QUERIES`` once asked (both tests of a query share one request)."""

    dialect: str
    sakila: Sakila
    server: RunningServer
    owner: sa.Engine
    answers: dict[str, Answer] = field(default_factory=dict)

    def client(self, timeout: float = 60.0) -> httpx.AsyncClient:
        return self.server.client(token=TOKEN, timeout=timeout)

    async def answer(self, query: Query) -> Answer:
        if query.name not in self.answers:
            body = {"language": "sql", "code": query.text(self.dialect), "max_rows": MAX_ROWS}
            if query.params:
                body["params"] = dict(query.params)
            async with self.client() as http:
                response = await http.post("/execute", json=body)
            assert response.status_code == 200, f"{query.name}: {response.text}"
            result = response.json()
            assert result["metadata"]["truncated"] is False, query.name
            assert result["metadata"]["row_count"] == len(result["data"]["rows"]), query.name
            answer = Answer.of(result["data"]["columns"], result["data"]["rows"])
            answer.cache_key = result["cache_key"]
            self.answers[query.name] = answer
        return self.answers[query.name]

    def owner_answer(self, sql: str, params: Mapping[str, Any] | None = None) -> Answer:
        """``sql`` through the owner's own driver connection: no DataExec, no SQLAlchemy
        text processing (``:name`` becomes the driver's ``%(name)s``)."""
        connection = self.owner.raw_connection()
        try:
            cursor = connection.cursor()
            if params:
                pyformat = re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql.replace("%", "%%"))
                cursor.execute(pyformat, dict(params))
            else:
                cursor.execute(sql)
            columns = [d[0] for d in cursor.description]
            return Answer.of(columns, cursor.fetchall())
        finally:
            connection.close()


@contextlib.asynccontextmanager
async def start_dataexec(
    dialect: str, sakila: Sakila, tmp_path: Path
) -> AsyncIterator[SakilaDataExec]:
    """A server given the reader's URL as a user would give it; the owner's engine."""
    reader = sakila.reader_url().render_as_string(hide_password=False)
    if dialect == "postgresql":
        assert reader.startswith("postgresql://"), "given as a user would: no driver named"
    settings = make_settings(tmp_path, SMALL, DATAEXEC_DATABASE_URL=reader, DATAEXEC_TOKEN=TOKEN)
    server = await start_server(with_default_tenant(settings))
    # the owner straight through the driver DataExec also uses (psycopg 3 is not installed)
    kwargs = {"drivername": "postgresql+psycopg2"} if dialect == "postgresql" else {}
    owner = sa.create_engine(sakila.owner_url(**kwargs), poolclass=sa.NullPool)
    try:
        yield SakilaDataExec(dialect, sakila, server, owner)
    finally:
        owner.dispose()
        await server.stop()


@pytest.fixture(scope="module")
async def mariadb_dataexec(
    sakila_mariadb: Sakila, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SakilaDataExec]:
    async with start_dataexec("mariadb", sakila_mariadb, tmp_path_factory.mktemp("sk")) as server:
        yield server


@pytest.fixture(scope="module")
async def postgresql_dataexec(
    sakila_postgres: Sakila, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SakilaDataExec]:
    async with start_dataexec("postgresql", sakila_postgres, tmp_path_factory.mktemp("sk")) as s:
        yield s


@pytest.fixture(params=DIALECTS)
def target(request: pytest.FixtureRequest) -> SakilaDataExec:
    """The server of one dialect (``sakila_mariadb`` or ``sakila_postgres`` behind it)."""
    server: SakilaDataExec = request.getfixturevalue(f"{request.param}_dataexec")
    assert server.sakila is request.getfixturevalue(FIXTURES[request.param])
    return server


# --- 1. /schema -------------------------------------------------------------------------------


def base_name(table: dict[str, Any]) -> str:
    """A listed name without its schema (PostgreSQL's reader lists ``sakila.film``: its
    default schema is ``public``; MariaDB's lists ``film`` in its database ``sakila``)."""
    return str(table["name"]).removeprefix(f"{table['schema']}.")


async def sakila_relations(server: SakilaDataExec) -> dict[str, dict[str, Any]]:
    """Sakila's tables and views as ``GET /schema`` lists them, by base name."""
    async with server.client() as http:
        response = await http.get("/schema")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["dialect"] == {"mariadb": "mysql", "postgresql": "postgresql"}[server.dialect]
    listed = [t for t in answer["schema"]["tables"] if t["schema"] == server.sakila.schema]
    return {base_name(t): t for t in listed}


def owner_counts(server: SakilaDataExec, names: list[str]) -> dict[str, int]:
    sql = " UNION ALL ".join(f"SELECT '{n}' AS name, COUNT(*) AS n FROM {n}" for n in names)
    return {name: int(n) for name, n in server.owner_answer(sql).rows}


async def test_schema_lists_sakilas_tables_views_and_keys(target: SakilaDataExec) -> None:
    relations = await sakila_relations(target)
    kinds = {name: t["kind"] for name, t in relations.items()}
    assert sorted(n for n, k in kinds.items() if k == "table") == sorted(TABLE_NAMES)
    assert sorted(n for n, k in kinds.items() if k == "view") == sorted(VIEW_NAMES)
    assert (len(TABLE_NAMES), len(VIEW_NAMES)) == (TABLES, VIEWS)
    by_listed_name = {t["name"]: base for base, t in relations.items()}
    foreign_keys = set()
    for name, table in relations.items():
        for fk in table["foreign_keys"]:
            referenced = fk["references"]["table"]
            assert referenced in by_listed_name, f"{name}: {referenced} is not a listed name"
            foreign_keys.add(
                (name, tuple(fk["columns"]), by_listed_name[referenced],
                 tuple(fk["references"]["columns"]))
            )  # fmt: skip
    assert foreign_keys == SAKILA_FOREIGN_KEYS
    assert len(foreign_keys) == FOREIGN_KEYS
    counts = owner_counts(target, list(TABLE_NAMES))
    for name in TABLE_NAMES:
        table = relations[name]
        assert table["primary_key"] == PRIMARY_KEYS.get(name, [f"{name}_id"]), name
        assert [c["name"] for c in table["columns"] if c["is_primary_key"]] == sorted(
            table["primary_key"], key=[c["name"] for c in table["columns"]].index
        )
        estimate = table["row_estimate"]
        assert isinstance(estimate, int), (name, estimate)
        # InnoDB's TABLE_ROWS is an estimate (rental: 16,067 for 16,044); ANALYZE's is exact
        assert abs(estimate - counts[name]) <= max(5, counts[name] // 10), (name, estimate)
    for name in VIEW_NAMES:
        view = relations[name]
        assert (view["primary_key"], view["foreign_keys"], view["row_estimate"]) == ([], [], None)
        assert view["columns"], name
    assert {name: counts[name] for name in COUNTS} == COUNTS
    nullable: dict[str, list[tuple[str, bool]]] = {}
    for table, column, is_nullable in target.owner_answer(
        "SELECT table_name, column_name, is_nullable FROM information_schema.columns"
        f" WHERE table_schema = '{target.sakila.schema}' ORDER BY table_name, ordinal_position"
    ).rows:
        nullable.setdefault(table, []).append((column, is_nullable == "YES"))
    for name in TABLE_NAMES:
        columns = [(c["name"], c["nullable"]) for c in relations[name]["columns"]]
        assert columns == nullable[name], name


async def test_both_dialects_describe_the_same_columns(
    mariadb_dataexec: SakilaDataExec, postgresql_dataexec: SakilaDataExec
) -> None:
    mariadb = await sakila_relations(mariadb_dataexec)
    postgresql = await sakila_relations(postgresql_dataexec)
    assert mariadb.keys() == postgresql.keys()
    for name in mariadb:
        for key in ("kind", "primary_key"):
            assert mariadb[name][key] == postgresql[name][key], (name, key)
        # names only: nullability is each copy's own (pgloader left last_update nullable);
        # the fixture's PostgreSQL views name their columns in lower case (ID -> id)
        assert [c["name"].lower() for c in mariadb[name]["columns"]] == [
            c["name"].lower() for c in postgresql[name]["columns"]
        ], name


# --- 2. profiles ------------------------------------------------------------------------------


async def profiles(server: SakilaDataExec) -> dict[str, dict[str, Any]]:
    relations = await sakila_relations(server)
    found = {}
    async with server.client() as http:
        for name, table in relations.items():
            response = await http.get(f"/schema/{table['name']}/profile")
            assert response.status_code == 200, f"{table['name']}: {response.text}"
            found[name] = response.json()
    return found


async def test_every_table_and_view_profiles(target: SakilaDataExec) -> None:
    relations = await sakila_relations(target)
    found = await profiles(target)
    counts = owner_counts(target, list(relations))
    for name, profile in found.items():
        table = relations[name]
        assert profile["table_name"] == table["name"] and profile["kind"] == table["kind"]
        assert [c["name"] for c in profile["columns"]] == [c["name"] for c in table["columns"]]
        if profile["row_count_exact"]:
            assert profile["row_count"] == counts[name], name
        else:  # a sample: the estimate must still be near the truth
            estimate = profile["row_count"] or profile.get("row_estimate")
            assert estimate and abs(estimate - counts[name]) <= counts[name] // 10, profile
        for column in profile["columns"]:
            assert 0 <= column["null_count"] <= counts[name], (name, column)
    film = found["film"]
    assert film["row_count"] == 1000 or not film["row_count_exact"]
    by_column = {c["name"]: c for c in film["columns"]}
    assert by_column["original_language_id"]["null_count"] == 1000
    assert (by_column["length"]["min"], by_column["length"]["max"]) == (46, 185)
    ratings = {v["value"]: v["count"] for v in by_column["rating"]["top_values"]}
    assert ratings == {"PG-13": 223, "NC-17": 210, "R": 195, "PG": 194, "G": 178}
    rental = {c["name"]: c for c in found["rental"]["columns"]}
    assert rental["return_date"]["null_count"] == 183


async def test_both_dialects_profile_the_same_counts(
    mariadb_dataexec: SakilaDataExec, postgresql_dataexec: SakilaDataExec
) -> None:
    mariadb, postgresql = await profiles(mariadb_dataexec), await profiles(postgresql_dataexec)
    assert mariadb.keys() == postgresql.keys()

    def counts(profile: dict[str, Any]) -> dict[str, Any]:
        return {
            "rows": profile["row_count"] if profile["row_count_exact"] else None,
            "nulls": {c["name"].lower(): c["null_count"] for c in profile["columns"]},
        }

    assert {n: counts(p) for n, p in mariadb.items()} == {
        n: counts(p) for n, p in postgresql.items()
    }


# --- 3. queries -------------------------------------------------------------------------------


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.name)
async def test_a_query_answers_as_the_owner_sees_it(target: SakilaDataExec, query: Query) -> None:
    answer = await target.answer(query)
    direct = await asyncio.to_thread(target.owner_answer, query.text(target.dialect), query.params)
    assert answer.columns == direct.columns
    assert answer.rows == direct.rows
    assert answer.rows, "every query has an answer"


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.name)
async def test_a_query_answers_the_same_on_both_dialects(
    mariadb_dataexec: SakilaDataExec, postgresql_dataexec: SakilaDataExec, query: Query
) -> None:
    mariadb = await mariadb_dataexec.answer(query)
    postgresql = await postgresql_dataexec.answer(query)
    assert mariadb.columns == postgresql.columns
    assert mariadb.rows == postgresql.rows


async def test_answers_are_kept_under_their_cache_keys(target: SakilaDataExec) -> None:
    unreadable = {}
    async with target.client() as http:
        for query in QUERIES:
            answer = await target.answer(query)
            assert answer.cache_key, query.name
            cached = await http.get(f"/cache/{answer.cache_key}", params={"format": "parquet"})
            if cached.status_code != 200:
                unreadable[query.name] = cached.text
                continue
            frame = pd.read_parquet(io.BytesIO(cached.content))
            assert (list(frame.columns), len(frame)) == (answer.columns, len(answer.rows))
    assert not unreadable


def query_named(name: str) -> Query:
    [query] = [q for q in QUERIES if q.name == name]
    return query


async def answer_of(server: SakilaDataExec, name: str) -> Answer:
    return await server.answer(query_named(name))


async def test_a_duration_reaches_pandas_as_a_timedelta(target: SakilaDataExec) -> None:
    """In a kernel, ``sql()`` gives a duration column what ``pandas.read_sql`` gives it."""
    durations = query_named("rental_durations").text(target.dialect)
    code = (
        f"d = sql({durations!r})['rented_for']\n"
        "pd.DataFrame({'dtype': [str(d.dtype)], 'seconds': [d.dt.total_seconds().sum()]})"
    )
    async with target.client() as http:
        response = await http.post("/execute", json={"code": code})
    assert response.status_code == 200, response.text
    [[dtype, seconds]] = response.json()["data"]["rows"]
    direct = pd.read_sql(sa.text(durations), target.owner)["rented_for"]
    assert direct.dtype.kind == "m", "pandas.read_sql: timedelta64"
    assert dtype.startswith("timedelta64")
    assert seconds == direct.dt.total_seconds().sum()


async def test_known_facts(target: SakilaDataExec) -> None:
    """What Sakila is known to hold, read from DataExec's answers."""
    [totals] = (await answer_of(target, "totals")).records()
    assert totals == {
        "rentals": 16044, "not_returned": 183, "payments": 16049, "revenue": 67416.51,
        "films": 1000, "renting_customers": 599,
    }  # fmt: skip
    categories = (await answer_of(target, "films_per_category")).rows
    assert categories[0] == ["Sports", 74] and len(categories) == 16
    assert sum(n for _, n in categories) == 1000
    best = (await answer_of(target, "best_customers")).records()
    assert best[0]["customer"] == "KARL SEAL" and best[0]["total"] == 221.55
    top = (await answer_of(target, "top_films_per_category")).records()
    assert max(r["rentals"] for r in top) == 34
    assert {"category": "Travel", "title": "BUCKET BROTHERHOOD", "rentals": 34, "place": 1} in top
    months = (await answer_of(target, "monthly_revenue")).records()
    assert [m["month"] for m in months] == ["2005-05", "2005-06", "2005-07", "2005-08", "2006-02"]
    assert months[-1]["running_revenue"] == totals["revenue"]
    assert sum(m["payments"] for m in months) == 16049
    calendar = (await answer_of(target, "rentals_per_month_calendar")).rows
    assert [r for r in calendar if r[1]] == [
        ["2005-05-01", 1156], ["2005-06-01", 2311], ["2005-07-01", 6709],
        ["2005-08-01", 5686], ["2006-02-01", 182],
    ]  # fmt: skip
    assert len(calendar) == 10, "the months without rentals are there too, with 0"
    days = (await answer_of(target, "rental_days_by_category")).records()
    assert sum(d["returned"] for d in days) == 16044 - 183
    assert {(d["min_days"], d["max_days"]) for d in days} == {(0, 10)}
    [stock] = (await answer_of(target, "stock_never_rented")).records()
    assert stock == {"films_not_in_stock": 42, "copies_never_rented": 1}
    gaps = (await answer_of(target, "time_between_rentals")).records()
    firsts = [g for g in gaps if g["previous_rental"] is None]
    assert [g["customer_id"] for g in firsts] == [1, 2, 3]
    assert all(g["hours_since_previous"] is None for g in firsts)
    assert all(g["hours_since_previous"] >= 0 for g in gaps if g not in firsts)
    sales = (await answer_of(target, "sales_by_category_view")).records()
    assert sales[0]["category"] == "Sports" and sales[0]["place"] == 1


# --- 4. a session exported, re-run outside DataExec ------------------------------------------

STEPS: list[dict[str, Any]] = [
    {
        "code": """rentals = sql(
    "SELECT r.rental_id, r.customer_id, i.film_id, r.rental_date, r.return_date"
    " FROM rental r JOIN inventory i ON i.inventory_id = r.inventory_id"
    " WHERE r.customer_id <= :last_customer",
    {"last_customer": 100},
)
len(rentals)"""
    },
    {
        "language": "sql",
        "result_name": "categories",
        "code": "SELECT fc.film_id, c.name AS category\n"
        "FROM film_category fc JOIN category c ON c.category_id = fc.category_id",
    },
    {"code": "%%sql films\nSELECT film_id, title, rental_rate FROM film WHERE title LIKE '%A%'"},
    {
        "code": "payments = pd.read_sql(\n"
        '    "SELECT rental_id, amount FROM payment WHERE customer_id <= 100", conn\n)\n'
        "payments.shape"
    },
    {
        "code": """joined = (
    rentals.merge(films, on="film_id")
    .merge(categories, on="film_id")
    .merge(payments, on="rental_id", how="left")
)
joined["days"] = (joined["return_date"] - joined["rental_date"]).dt.total_seconds() / 86400
joined["amount"] = joined["amount"].astype(float)
summary = (
    joined.groupby("category")
    .agg(
        rentals=("rental_id", "count"),
        customers=("customer_id", "nunique"),
        avg_days=("days", "mean"),
        revenue=("amount", "sum"),
    )
    .round(4)
    .sort_values(["rentals", "category"], ascending=[False, True])
    .reset_index()
)
summary"""
    },
]
# The same summary's first two numbers, straight from the database.
SUMMARY_CHECK = """SELECT c.name AS category, COUNT(*) AS rentals
FROM rental r
    JOIN inventory i ON i.inventory_id = r.inventory_id
    JOIN film f ON f.film_id = i.film_id
    JOIN film_category fc ON fc.film_id = f.film_id
    JOIN category c ON c.category_id = fc.category_id
WHERE r.customer_id <= 100 AND f.title LIKE '%A%'
GROUP BY c.name"""
# Database mode's drivers as the client package's extras install them ([mysql]: SQLAlchemy,
# mysqlclient; [postgresql]: + psycopg2, ADBC's PostgreSQL driver): linked from the test
# environment (the same Python minor version as the kernel environment), so no index is
# needed; the kernel environment itself has pandas, pyarrow and ADBC's driver manager.
TEST_SITE_PACKAGES = Path(sa.__file__).resolve().parents[1]
DRIVER_PACKAGES = (
    "sqlalchemy",
    "MySQLdb",
    "psycopg2",
    "psycopg2_binary.libs",
    "adbc_driver_postgresql",
)


@pytest.fixture(scope="module")
async def client_package(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The client package installed with pip, and its database extras beside it: the
    ``PYTHONPATH`` of a plain kernel in database mode."""
    package = await install_client_package(tmp_path_factory.mktemp("client-package"))
    extras = tmp_path_factory.mktemp("database-extras")
    for name in DRIVER_PACKAGES:
        (extras / name).symlink_to(TEST_SITE_PACKAGES / name)
    return [package, extras]


async def rerun_elsewhere(
    notebook: nbformat.NotebookNode, env: dict[str, str], python: str, workdir: Path
) -> tuple[nbformat.NotebookNode, pd.DataFrame]:
    """Run a copy of ``notebook`` top to bottom with nbclient in a plain ipykernel; the
    executed copy and its final result (``_`` after the last cell, read back as Parquet by
    one cell appended to the copy, which also prints whom ``conn`` queries)."""
    executed = copy.deepcopy(notebook)
    for cell in executed.cells:  # nothing the export held can pass for the re-run's own
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    final = workdir / "final.parquet"
    executed.cells.append(
        nbformat.v4.new_code_cell(f"_.to_parquet({str(final)!r})\nprint(repr(conn))")
    )
    manager = AsyncKernelManager(
        kernel_name=KERNEL_NAME, kernel_spec_manager=plain_kernel_specs(python, workdir)
    )
    manager.connection_file = str(workdir / "connection.json")
    runner = NotebookClient(
        executed,
        km=manager,
        timeout=120,
        startup_timeout=120,
        resources={"metadata": {"path": str(workdir)}},
    )
    await runner.async_execute(cleanup_kc=True, env=env)  # raises on a failing cell
    return executed, pd.read_parquet(final)


async def test_a_session_exports_a_notebook_that_reruns_on_the_database(
    target: SakilaDataExec, client_package: list[Path], tmp_path: Path
) -> None:
    session = "sakila-" + secrets.token_hex(4)
    async with target.client(timeout=120) as http:
        answers = []
        for step in STEPS:
            response = await http.post(f"/sessions/{session}/execute", json=step)
            assert response.status_code == 200, f"{step['code'][:40]!r}: {response.text}"
            answers.append(response.json())
        assert answers[1]["result_name"] == "categories"
        assert answers[1]["metadata"]["row_count"] == 1000
        final = answers[-1]
        session_answer = Answer.of(final["data"]["columns"], final["data"]["rows"])
        cached = await http.get(f"/cache/{final['cache_key']}", params={"format": "parquet"})
        assert cached.status_code == 200, cached.text
        session_frame = pd.read_parquet(io.BytesIO(cached.content))
        exported = await http.get(f"/sessions/{session}/notebook")
        assert exported.status_code == 200, exported.text
        assert (await http.delete(f"/sessions/{session}")).status_code in (200, 204)

    # the session's answer is right: rentals per category as the database counts them
    direct = target.owner_answer(SUMMARY_CHECK)
    assert session_answer.columns == ["category", "rentals", "customers", "avg_days", "revenue"]
    assert {r["category"]: r["rentals"] for r in session_answer.records()} == dict(direct.rows)
    [[rentals]] = target.owner_answer(
        "SELECT COUNT(*) FROM rental WHERE customer_id <= :c", {"c": 100}
    ).rows
    assert answers[0]["data"]["rows"] == [[rentals]]

    reader = target.sakila.reader_url()
    assert reader.password and reader.password not in exported.text
    notebook = nbformat.reads(exported.text, as_version=nbformat.NO_CONVERT)
    nbformat.validate(notebook)
    env = clean_env(
        PYTHONPATH=":".join(str(p) for p in client_package),
        IPYTHONDIR=str(tmp_path / "ipython"),
        DATAEXEC_DATABASE_URL=reader.render_as_string(hide_password=False),
    )
    python = str(target.server.settings.kernel_env / "bin" / "python")
    executed, rerun = await rerun_elsewhere(notebook, env, python, tmp_path)
    steps = [c for c in executed.cells[:-1] if "execution_count" in c.metadata.get("dataexec", {})]
    assert [c.source.splitlines()[0] for c in steps[1:3]] == ["%%sql categories", "%%sql films"]
    assert len(steps) == len(STEPS)
    [printed] = [o["text"] for o in executed.cells[-1].outputs if o["output_type"] == "stream"]
    assert f"the database at {target.sakila.dialect}://{reader.username}@" in printed
    assert any(o["output_type"] == "execute_result" for o in steps[-1].outputs)
    pd.testing.assert_frame_equal(
        rerun, session_frame, check_dtype=False, check_exact=False, rtol=1e-9
    )
    assert Answer.of(list(rerun.columns), rerun.itertuples(index=False)) == session_answer
