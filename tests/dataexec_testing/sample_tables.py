"""The small ``analytics`` database both external servers get, owned by ``analytics_owner``.

The same rows in both dialects (``ROWS``), so a test can compare answers across them:

=====================  ==============================================================
``customers``          id PK, name text, email text NULL (commented), signed_up date,
                       vip boolean / tinyint(1), referrals integer with NULLs; 5 rows;
                       a table comment
``products``           id PK, name, price numeric(10,2), discontinued boolean NULL; 4 rows
``Orders``             (PostgreSQL: in schema ``sales``; MariaDB: in ``analytics``) order_id PK,
                       customer_id FK -> customers, product_id FK -> products (NULL once),
                       quantity integer NULL, amount numeric(10,2), ordered_at timestamptz /
                       datetime (UTC), shipped_on date NULL, paid boolean, note text NULL;
                       8 rows; a table comment
``vip_customers``      view (public / analytics): id, name of the VIP customers (2 rows)
``order_totals``       view (sales / analytics): customer, orders, total per customer (4 rows)
=====================  ==============================================================
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

UTC = dt.UTC

ROWS: dict[str, list[tuple[Any, ...]]] = {
    "customers": [
        (1, "Ada Lovelace", "ada@example.com", dt.date(2024, 1, 15), True, 3),
        (2, "Brian Kernighan", None, dt.date(2024, 2, 1), False, None),
        (3, "Grace Hopper", "grace@example.com", dt.date(2024, 3, 9), True, 0),
        (4, "Ken Thompson", "ken@example.com", dt.date(2024, 3, 30), False, None),
        (5, "Barbara Liskov", "barbara@example.com", dt.date(2024, 5, 2), False, 7),
    ],
    "products": [
        (1, "Notebook", Decimal("4.50"), False),
        (2, "Fountain pen", Decimal("129.99"), False),
        (3, "Ink, blue", Decimal("12.00"), None),
        (4, "Slide rule", Decimal("1234567.89"), True),
    ],
    "Orders": [
        (101, 1, 1, 10, Decimal("45.00"), dt.datetime(2024, 6, 1, 9, 30, tzinfo=UTC),
         dt.date(2024, 6, 2), True, None),
        (102, 1, 2, 1, Decimal("129.99"), dt.datetime(2024, 6, 3, 14, 5, 7, tzinfo=UTC),
         None, False, "gift wrap"),
        (103, 2, 3, None, Decimal("12.00"), dt.datetime(2024, 6, 3, 23, 59, 59, tzinfo=UTC),
         dt.date(2024, 6, 5), True, "quantity lost"),
        (104, 3, 2, 2, Decimal("259.98"), dt.datetime(2024, 7, 14, 8, 0, tzinfo=UTC),
         dt.date(2024, 7, 15), True, None),
        (105, 3, None, 1, Decimal("0.99"), dt.datetime(2024, 7, 20, 12, 0, tzinfo=UTC),
         None, False, "product unknown"),
        (106, 4, 4, 1, Decimal("1234567.89"), dt.datetime(2024, 8, 1, 0, 0, tzinfo=UTC),
         dt.date(2024, 8, 10), True, "Ünïcødé ✓"),
        (107, 1, 3, 3, Decimal("36.00"), dt.datetime(2024, 8, 2, 16, 45, tzinfo=UTC),
         dt.date(2024, 8, 3), True, None),
        (108, 2, 1, 4, Decimal("18.00"), dt.datetime(2024, 9, 9, 9, 9, 9, tzinfo=UTC),
         None, False, "it's quoted"),
    ],
}  # fmt: skip

POSTGRES_DDL = """
CREATE TABLE public.customers (
    id integer PRIMARY KEY,
    name text NOT NULL,
    email text,
    signed_up date NOT NULL,
    vip boolean NOT NULL DEFAULT false,
    referrals integer
);
COMMENT ON TABLE public.customers IS 'People who buy things';
COMMENT ON COLUMN public.customers.email IS 'Contact address; may be missing';
CREATE TABLE public.products (
    id integer PRIMARY KEY,
    name text NOT NULL,
    price numeric(10,2) NOT NULL,
    discontinued boolean
);
CREATE SCHEMA sales;
CREATE TABLE sales."Orders" (
    order_id integer PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES public.customers (id),
    product_id integer REFERENCES public.products (id),
    quantity integer,
    amount numeric(10,2) NOT NULL,
    ordered_at timestamptz NOT NULL,
    shipped_on date,
    paid boolean NOT NULL,
    note text
);
COMMENT ON TABLE sales."Orders" IS 'One row per order';
CREATE VIEW public.vip_customers AS SELECT id, name FROM public.customers WHERE vip;
CREATE VIEW sales.order_totals AS
    SELECT c.name AS customer, count(*) AS orders, sum(o.amount) AS total
    FROM sales."Orders" o JOIN public.customers c ON c.id = o.customer_id
    GROUP BY c.name;
"""

POSTGRES_TABLES = {
    "customers": "public.customers",
    "products": "public.products",
    "Orders": 'sales."Orders"',
}

MARIADB_DDL = """
CREATE TABLE customers (
    id INT PRIMARY KEY,
    name VARCHAR(100) NOT NULL,
    email TEXT NULL COMMENT 'Contact address; may be missing',
    signed_up DATE NOT NULL,
    vip TINYINT(1) NOT NULL DEFAULT 0,
    referrals INT NULL
) ENGINE=InnoDB COMMENT='People who buy things';
CREATE TABLE products (
    id INT PRIMARY KEY,
    name VARCHAR(100) NOT NULL,
    price DECIMAL(10,2) NOT NULL,
    discontinued TINYINT(1) NULL
) ENGINE=InnoDB;
CREATE TABLE `Orders` (
    order_id INT PRIMARY KEY,
    customer_id INT NOT NULL,
    product_id INT NULL,
    quantity INT NULL,
    amount DECIMAL(10,2) NOT NULL,
    ordered_at DATETIME NOT NULL,
    shipped_on DATE NULL,
    paid TINYINT(1) NOT NULL,
    note TEXT NULL,
    CONSTRAINT fk_orders_customer FOREIGN KEY (customer_id) REFERENCES customers (id),
    CONSTRAINT fk_orders_product FOREIGN KEY (product_id) REFERENCES products (id)
) ENGINE=InnoDB COMMENT='One row per order';
CREATE VIEW vip_customers AS SELECT id, name FROM customers WHERE vip = 1;
CREATE VIEW order_totals AS
    SELECT c.name AS customer, count(*) AS orders, sum(o.amount) AS total
    FROM `Orders` o JOIN customers c ON c.id = o.customer_id
    GROUP BY c.name;
"""


def mariadb_literal(value: Any) -> str:
    """A value as a MariaDB SQL literal (booleans as 1/0, datetimes as naive UTC)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return "'" + value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + "'"
    if isinstance(value, dt.date):
        return "'" + value.isoformat() + "'"
    text = str(value).replace("\\", "\\\\").replace("'", "''")
    return f"'{text}'"


def mariadb_inserts() -> str:
    """INSERT statements for ``ROWS`` in MariaDB's syntax."""
    statements = []
    for table, rows in ROWS.items():
        values = ",\n  ".join("(" + ", ".join(map(mariadb_literal, row)) + ")" for row in rows)
        statements.append(f"INSERT INTO `{table}` VALUES\n  {values};")
    return "\n".join(statements)
