"""Sakila, a public sample database no one here wrote, in both external servers.

This module owns where the Sakila files are (``sakila_files``: ``.cache/sample-databases/
sakila/``, fetched by ``scripts/sample-databases`` from Debian's ``percona-toolkit`` source
package: Sakila 0.8, BSD), loading them (``load_mariadb``, ``load_postgres``), what a loaded
copy must hold (``COUNTS``, ``TABLES``, ``VIEWS``, ``FOREIGN_KEYS``) and ``Sakila``, the
handle tests get (URLs and ``DB_*`` of the reader on database ``sakila``).

- MariaDB: database ``sakila`` as its own ``sakila-schema.sql`` and ``sakila-data.sql`` make
  it (the ``mariadb`` command line, as root: the files use ``DELIMITER``): 16 tables,
  7 views, 22 foreign keys, triggers, procedures and functions.
- PostgreSQL: database ``sakila`` owned by ``analytics_owner``, copied from the MariaDB one
  by ``pgloader`` (as that owner): schema ``sakila`` with the 16 tables, keys, foreign keys,
  indexes, enum types (``film_rating``...), ``SET`` columns as enum arrays, and the
  database's ``search_path`` set to ``public, sakila`` (pgloader's own choices, left as
  they are). Views do not come across, so ``POSTGRES_VIEWS`` holds all 7 of Sakila's views
  translated minimally from its own definitions (``GROUP_CONCAT`` -> ``string_agg``,
  ``CONCAT`` -> ``||``, which is NULL on a NULL as MySQL's CONCAT is, ``IF`` -> ``CASE``,
  the ``GROUP BY`` columns PostgreSQL requires; names lower case, as pgloader makes the
  tables': ``ID`` -> ``id``, ``SID`` -> ``sid``). They answer the same rows as MariaDB's.
- The reader gets SELECT the doc's way: on MariaDB ``role_sql.database_grants``, on
  PostgreSQL the doc's ``DATABASE`` line and its schema lines for ``sakila``.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dataexec_testing.external_mariadb import ExternalMariaDB
from dataexec_testing.external_pg import ExternalPostgres

REPO = Path(__file__).resolve().parents[2]
SAKILA_DIR = REPO / ".cache" / "sample-databases" / "sakila"
FETCH_SCRIPT = REPO / "scripts" / "sample-databases"
SCHEMA_FILE, DATA_FILE = "sakila-schema.sql", "sakila-data.sql"
DATABASE = "sakila"
SCHEMA = "sakila"  # PostgreSQL: pgloader names the schema after the MySQL database

TABLES = 16
VIEWS = 7
FOREIGN_KEYS = 22
COUNTS = {"actor": 200, "film": 1000, "rental": 16044, "payment": 16049}
VIEW_NAMES = (
    "actor_info",
    "customer_list",
    "film_list",
    "nicer_but_slower_film_list",
    "sales_by_film_category",
    "sales_by_store",
    "staff_list",
)

_FILM_JOINS = """
FROM category LEFT JOIN film_category ON category.category_id = film_category.category_id
    LEFT JOIN film ON film_category.film_id = film.film_id
    JOIN film_actor ON film.film_id = film_actor.film_id
    JOIN actor ON film_actor.actor_id = actor.actor_id
GROUP BY film.film_id, category.name"""
_ACTOR_FILMS = """(SELECT string_agg(f.title, ', ' ORDER BY f.title)
        FROM sakila.film f
        JOIN sakila.film_category fc ON f.film_id = fc.film_id
        JOIN sakila.film_actor fa ON f.film_id = fa.film_id
        WHERE fc.category_id = c.category_id AND fa.actor_id = a.actor_id)"""

POSTGRES_VIEWS = f"""
SET search_path = sakila;
CREATE VIEW customer_list AS
SELECT cu.customer_id AS id, cu.first_name || ' ' || cu.last_name AS name,
    a.address AS address, a.postal_code AS "zip code", a.phone AS phone, city.city AS city,
    country.country AS country, CASE WHEN cu.active THEN 'active' ELSE '' END AS notes,
    cu.store_id AS sid
FROM customer AS cu JOIN address AS a ON cu.address_id = a.address_id
    JOIN city ON a.city_id = city.city_id
    JOIN country ON city.country_id = country.country_id;
CREATE VIEW film_list AS
SELECT film.film_id AS fid, film.title AS title, film.description AS description,
    category.name AS category, film.rental_rate AS price, film.length AS length,
    film.rating AS rating, string_agg(actor.first_name || ' ' || actor.last_name, ', ') AS actors
{_FILM_JOINS};
CREATE VIEW nicer_but_slower_film_list AS
SELECT film.film_id AS fid, film.title AS title, film.description AS description,
    category.name AS category, film.rental_rate AS price, film.length AS length,
    film.rating AS rating,
    string_agg(upper(substr(actor.first_name, 1, 1))
        || lower(substr(actor.first_name, 2, length(actor.first_name))) || ' '
        || upper(substr(actor.last_name, 1, 1))
        || lower(substr(actor.last_name, 2, length(actor.last_name))), ', ') AS actors
{_FILM_JOINS};
CREATE VIEW staff_list AS
SELECT s.staff_id AS id, s.first_name || ' ' || s.last_name AS name, a.address AS address,
    a.postal_code AS "zip code", a.phone AS phone, city.city AS city,
    country.country AS country, s.store_id AS sid
FROM staff AS s JOIN address AS a ON s.address_id = a.address_id
    JOIN city ON a.city_id = city.city_id
    JOIN country ON city.country_id = country.country_id;
CREATE VIEW sales_by_store AS
SELECT c.city || ',' || cy.country AS store, m.first_name || ' ' || m.last_name AS manager,
    SUM(p.amount) AS total_sales
FROM payment AS p
    JOIN rental AS r ON p.rental_id = r.rental_id
    JOIN inventory AS i ON r.inventory_id = i.inventory_id
    JOIN store AS s ON i.store_id = s.store_id
    JOIN address AS a ON s.address_id = a.address_id
    JOIN city AS c ON a.city_id = c.city_id
    JOIN country AS cy ON c.country_id = cy.country_id
    JOIN staff AS m ON s.manager_staff_id = m.staff_id
GROUP BY s.store_id, c.city, cy.country, m.first_name, m.last_name
ORDER BY cy.country, c.city;
CREATE VIEW sales_by_film_category AS
SELECT c.name AS category, SUM(p.amount) AS total_sales
FROM payment AS p
    JOIN rental AS r ON p.rental_id = r.rental_id
    JOIN inventory AS i ON r.inventory_id = i.inventory_id
    JOIN film AS f ON i.film_id = f.film_id
    JOIN film_category AS fc ON f.film_id = fc.film_id
    JOIN category AS c ON fc.category_id = c.category_id
GROUP BY c.name
ORDER BY total_sales DESC;
-- MariaDB's is SQL SECURITY INVOKER; GROUP_CONCAT(DISTINCT ... ORDER BY c.name): the
-- argument starts with c.name, so ordering by the argument is the same order
CREATE VIEW actor_info WITH (security_invoker = true) AS
SELECT a.actor_id, a.first_name, a.last_name,
    string_agg(DISTINCT c.name || ': ' || {_ACTOR_FILMS}, '; '
        ORDER BY c.name || ': ' || {_ACTOR_FILMS}) AS film_info
FROM sakila.actor a
    LEFT JOIN sakila.film_actor fa ON a.actor_id = fa.actor_id
    LEFT JOIN sakila.film_category fc ON fa.film_id = fc.film_id
    LEFT JOIN sakila.category c ON fc.category_id = c.category_id
GROUP BY a.actor_id, a.first_name, a.last_name;
"""


@dataclass
class Sakila:
    """Sakila loaded into one server: ``dialect`` is ``mysql`` or ``postgresql``; the URLs
    and ``DB_*`` are the server's own, on database ``sakila`` (kwargs as the server's
    ``url``: ``ssl_mode`` on MariaDB, ``sslmode`` on PostgreSQL)."""

    dialect: str
    server: ExternalMariaDB | ExternalPostgres
    database: str
    schema: str  # where the tables are: MariaDB's database, PostgreSQL's schema
    load_s: float

    def reader_url(self, **kwargs: Any) -> sa.URL:
        """The doc's SELECT-only reader on ``sakila``."""
        return self.server.reader_url(database=self.database, **kwargs)

    def owner_url(self, **kwargs: Any) -> sa.URL:
        """Who made the tables: MariaDB's root, PostgreSQL's ``analytics_owner``."""
        if isinstance(self.server, ExternalMariaDB):
            return self.server.admin_url(database=self.database, **kwargs)
        return self.server.owner_url(database=self.database, **kwargs)

    def reader_env(self, ssl_mode: str | None = None) -> dict[str, str]:
        """The reader as the replaced system's ``DB_*``, with ``DB_NAME=sakila``."""
        return {**self.server.reader_env(ssl_mode), "DB_NAME": self.database}


def sakila_files() -> tuple[Path, Path]:
    """The schema and data files; fetched with ``scripts/sample-databases`` if missing."""
    files = (SAKILA_DIR / SCHEMA_FILE, SAKILA_DIR / DATA_FILE)
    if not all(path.exists() for path in files):
        result = subprocess.run(
            [str(FETCH_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
        )
        if result.returncode or not all(path.exists() for path in files):
            raise RuntimeError(
                f"Sakila's files are not in {SAKILA_DIR} and {FETCH_SCRIPT.name} could not "
                f"fetch them:\n{result.stdout}{result.stderr}"
            )
    return files


def load_mariadb(db: ExternalMariaDB) -> Sakila:
    """Sakila's own files into database ``sakila`` (as root), then the reader's GRANT."""
    t0 = time.perf_counter()
    for path in sakila_files():
        db.mariadb_cli(stdin=path)
    tables = [
        row[0]
        for row in db.admin(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = %s AND table_type = 'BASE TABLE'",
            (DATABASE,),
        )
    ]
    # statistics now, so that row estimates are right from the first /schema
    db.admin("ANALYZE TABLE " + ", ".join(f"`{DATABASE}`.`{t}`" for t in tables))
    db.open_to_reader(DATABASE)
    return Sakila("mysql", db, DATABASE, DATABASE, time.perf_counter() - t0)


def load_postgres(pg: ExternalPostgres, source: ExternalMariaDB, scratch: Path) -> Sakila:
    """Copy ``source``'s ``sakila`` (loaded by ``load_mariadb``) with pgloader into a new
    database ``sakila`` owned by ``analytics_owner``; add the views; open it to the reader.
    ``scratch``: pgloader's own files (its logs)."""
    t0 = time.perf_counter()
    pg.admin(f"CREATE DATABASE {DATABASE} OWNER {pg.owner.user}", database="postgres")
    # pgloader's MySQL client speaks no TLS: root over plain TCP (the server allows both);
    # PostgreSQL with TLS, unverified (pgloader has no option for a root certificate)
    mysql = source.admin_url(database=DATABASE).set(drivername="mysql", query={})
    postgres = pg.owner_url(database=DATABASE).set(drivername="postgresql")
    result = subprocess.run(
        ["pgloader", "--no-ssl-cert-verification", "--root-dir", str(scratch),
         mysql.render_as_string(hide_password=False),
         postgres.render_as_string(hide_password=False)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if result.returncode:
        raise RuntimeError(f"pgloader failed ({result.returncode}):\n{result.stdout[-3000:]}")
    with pg.connect(pg.owner, database=DATABASE) as conn, conn.cursor() as cur:
        cur.execute(POSTGRES_VIEWS)
        cur.execute("ANALYZE")  # pgloader leaves the statistics empty
        conn.commit()
    found = pg.admin(
        "SELECT count(*) FILTER (WHERE table_type = 'BASE TABLE'),"
        " count(*) FILTER (WHERE table_type = 'VIEW'),"
        " (SELECT count(*) FROM information_schema.table_constraints"
        "   WHERE table_schema = %(s)s AND constraint_type = 'FOREIGN KEY')"
        " FROM information_schema.tables WHERE table_schema = %(s)s",
        {"s": SCHEMA},
        database=DATABASE,
    )[0]
    if tuple(found) != (TABLES, VIEWS, FOREIGN_KEYS):
        raise RuntimeError(
            f"pgloader made {found} (tables, views, foreign keys), not "
            f"{(TABLES, VIEWS, FOREIGN_KEYS)}:\n{result.stdout[-3000:]}"
        )
    pg.open_to_reader(DATABASE, (SCHEMA,))
    return Sakila("postgresql", pg, DATABASE, SCHEMA, time.perf_counter() - t0)
