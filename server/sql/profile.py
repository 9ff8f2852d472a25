"""Column profiles of one table, as ``GET /schema/{table}/profile`` answers them.

``profile_table(engine, name)`` keeps the replaced system's shape (``table_name``,
``columns[].name``, ``null_count``, ``top_values``, ``distinct_examples``, ``histogram``)
and adds ``source``, ``row_count`` and per-type extras. Keys follow the column's type:

    integer    null_count, distinct_count, min, max, mean, histogram, top_values
    number     null_count, distinct_count, min, max, mean, histogram
    date/time  null_count, distinct_count, min, max, histogram (ISO 8601 strings)
    text       null_count, distinct_count, top_values, distinct_examples
    boolean    null_count, true_count, false_count
    other      null_count, distinct_examples (as strings)

Histograms have ten equal-width buckets (``[bucket_start, bucket_end)``, the last one
closed); an integer column gets whole-number buckets with an inclusive ``bucket_end``, one
per value when its range is small (months, hours). Integer ``top_values`` list only
repeated values.

Where the numbers come from (``source``), cheapest first on PostgreSQL:

- ``full``: the table has at most ``sample_rows`` rows; everything is exact.
- ``statistics``: ``pg_stats`` of a recent ANALYZE (fewer than 10% of the rows changed
  since; ``analyzed_at`` says when), scaled by ``pg_class.reltuples``. No table scan;
  counts, histograms and means are estimates.
- ``sample``: ``TABLESAMPLE SYSTEM`` (``REPEATABLE``, so answers are stable) bounded to
  about ``sample_rows`` rows; counts are scaled to ``row_count``, an estimate.

Views, foreign tables and other dialects read at most ``sample_rows`` rows with ``LIMIT``
(``sample_method: "LIMIT"``): the first rows, not a random sample; when more rows exist,
``row_count`` is null and every count is within the ``sample_rows`` rows read.

Every column carries ``type`` (as /schema gives it); ``distinct_count`` is exact only for
``full``, else an estimate (pg_stats' ``n_distinct``, or the Haas-Stokes estimator ANALYZE
uses, on a sample). Rows read on PostgreSQL (psycopg2) leave as ``COPY ... TO STDOUT`` CSV,
timestamps and dates as epoch numbers, parsed by Arrow: no Python object per value (100,000
flights rows: ~0.3 s instead of ~1.1 s); anything that path cannot parse is read as rows.

On PostgreSQL, text and other values are read as their first ``VALUE_CHARS`` characters
(``left(value::text, n)``, in the database): a table of huge values costs the server no more
than one of short ones, and counts and top values are those of the prefixes (they differ
from the whole values' only for values longer than that sharing their first characters).

The table name is matched exactly against the catalog (``readable_relations``: what
``/schema`` lists); anything else, an injection attempt included, is ``NOT_FOUND``. SQL is
built from SQLAlchemy table objects, so identifiers are quoted by SQLAlchemy.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import sqlalchemy as sa

from server.errors import NotFound
from server.sql.errors import DriverErrors
from server.sql.histogram import Axis
from server.sql.introspect import Relation, readable_relations, type_string

TOP_VALUES = 10
EXAMPLES = 10
MAX_TEXT = 200
VALUE_CHARS = 256  # characters of a text (or other) value read on PostgreSQL
STALE_FRACTION = 0.1

_PG_TABLE_STATE = sa.text(
    """
    SELECT c.reltuples, pg_relation_size(c.oid) AS bytes, c.relkind,
           s.n_mod_since_analyze,
           greatest(s.last_analyze, s.last_autoanalyze) AS analyzed_at
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_catalog.pg_stat_all_tables s ON s.relid = c.oid
    WHERE n.nspname = :schema AND c.relname = :name
    """
)

_PG_STATS = sa.text(
    """
    SELECT attname, null_frac, n_distinct,
           array_to_json(most_common_vals) AS mcv, most_common_freqs AS mcf,
           array_to_json(histogram_bounds) AS bounds
    FROM pg_catalog.pg_stats
    WHERE schemaname = :schema AND tablename = :name AND inherited = :inherited
    """
)


def profile_table(
    engine: sa.Engine, table_name: str, *, sample_rows: int = 100_000
) -> dict[str, Any]:
    """The profile of one table or view named as ``/schema`` names it; NotFound if unknown."""
    sample_rows = max(1, int(sample_rows))
    with DriverErrors(engine.url).connect(engine, f"profiling {table_name!r}") as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        inspector = sa.inspect(conn)
        relation = _resolve(conn, inspector, table_name)
        reflected = inspector.get_columns(relation.name, schema=relation.schema)
        columns = [
            _Column(
                c["name"],
                type_string(c["type"], conn.dialect),
                _kind(c["type"]),
                bool(getattr(c["type"], "timezone", False)),
            )
            for c in reflected
        ]
        table = sa.table(
            relation.name, *[sa.column(c.name) for c in columns], schema=relation.schema
        )
        if postgres:
            body = _profile_postgres(conn, relation, table, columns, sample_rows)
        else:
            body = _read_rows(conn, table, columns, sample_rows, relation.row_estimate)
        conn.rollback()
    return {
        "table_name": relation.qualified,
        "schema": relation.schema,
        "kind": relation.kind,
        **body,
    }


class _Column:
    __slots__ = ("name", "type", "kind", "aware")

    def __init__(self, name: str, type_: str, kind: str, aware: bool = False) -> None:
        self.name, self.type, self.kind, self.aware = name, type_, kind, aware


def _kind(type_: Any) -> str:
    if isinstance(type_, sa.Boolean):
        return "boolean"
    if isinstance(type_, sa.Integer):
        return "integer"
    if isinstance(type_, sa.Numeric | sa.Float):
        return "number"
    if isinstance(type_, sa.DateTime):
        return "timestamp"
    if isinstance(type_, sa.Date):
        return "date"
    if isinstance(type_, sa.String | sa.Uuid):
        return "text"
    return "other"


def _resolve(conn: sa.Connection, inspector: Any, table_name: str) -> Relation:
    matches = [r for r in readable_relations(conn, inspector) if r.qualified == table_name]
    if not matches:
        raise NotFound(f"no table or view named {table_name!r} (names as GET /schema lists them)")
    default = inspector.default_schema_name
    matches.sort(key=lambda r: r.schema != default)  # "a.b" in the default schema first
    return matches[0]


# ---------------------------------------------------------------------- PostgreSQL


def _profile_postgres(
    conn: sa.Connection,
    relation: Relation,
    table: sa.TableClause,
    columns: list[_Column],
    sample_rows: int,
) -> dict[str, Any]:
    state = conn.execute(_PG_TABLE_STATE, {"schema": relation.schema, "name": relation.name}).one()
    if state.reltuples is not None and state.reltuples >= 0 and state.relkind != "v":
        estimate: int | None = int(state.reltuples)
    elif relation.samplable and state.relkind != "p" and state.bytes == 0:
        estimate = 0
    else:
        estimate = _planner_rows(conn, table)
    if estimate is not None and estimate <= sample_rows:
        body = _read_rows(conn, table, columns, sample_rows, row_estimate=estimate)
        if body["source"] == "full" or not relation.samplable:
            return body
        estimate = max(_planner_rows(conn, table) or 0, sample_rows + 1)
    if relation.samplable and estimate is not None:
        fresh = (
            state.reltuples is not None
            and state.reltuples >= 0
            and (state.n_mod_since_analyze or 0) <= STALE_FRACTION * max(state.reltuples, 1)
        )
        if fresh:
            stats = _pg_stats(conn, relation, state.relkind == "p")
            if all(c.name in stats for c in columns):
                return _from_statistics(columns, stats, int(state.reltuples), state.analyzed_at)
        return _tablesample(conn, table, columns, sample_rows, estimate)
    return _read_rows(conn, table, columns, sample_rows, row_estimate=estimate)


def _planner_rows(conn: sa.Connection, table: sa.TableClause) -> int | None:
    """The planner's row estimate for the whole relation (EXPLAIN, nothing is read)."""
    query: sa.Select[Any] = sa.select(sa.literal_column("1")).select_from(table)
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    plan: Any = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}").scalar()
    if isinstance(plan, str):
        plan = json.loads(plan)
    try:
        return int(plan[0]["Plan"]["Plan Rows"])
    except (TypeError, KeyError, IndexError, ValueError):
        return None


def _pg_stats(conn: sa.Connection, relation: Relation, inherited: bool) -> dict[str, Any]:
    params = {"schema": relation.schema, "name": relation.name, "inherited": inherited}
    return {row.attname: row for row in conn.execute(_PG_STATS, params)}


def _tablesample(
    conn: sa.Connection,
    table: sa.TableClause,
    columns: list[_Column],
    sample_rows: int,
    estimate: int,
) -> dict[str, Any]:
    percent = min(100.0, 100.0 * sample_rows / max(estimate, 1))
    sampled = table.tablesample(sa.func.system(percent), name="sample", seed=sa.literal(0))
    count, arrays = _read(conn, columns, sampled, 2 * sample_rows)
    scale = estimate / count if count else 0.0
    return {
        "source": "sample",
        "sample_method": "TABLESAMPLE SYSTEM",
        "sample_rows": count,
        "row_count": estimate,
        "row_count_exact": False,
        "columns": _profile_columns(columns, arrays, scale, exact=False),
    }


# ------------------------------------------------------------------ any dialect


def _read_rows(
    conn: sa.Connection,
    table: sa.TableClause,
    columns: list[_Column],
    sample_rows: int,
    row_estimate: int | None,
) -> dict[str, Any]:
    """Read up to ``sample_rows`` rows: the whole table when it is that small."""
    count, arrays = _read(conn, columns, table, sample_rows + 1)
    if count <= sample_rows:
        return {
            "source": "full",
            "row_count": count,
            "row_count_exact": True,
            "columns": _profile_columns(columns, arrays, 1.0, exact=True),
        }
    arrays = [a.slice(0, sample_rows) for a in arrays]
    return {
        "source": "sample",
        "sample_method": "LIMIT",
        "sample_rows": sample_rows,
        "row_count": None,
        "row_count_exact": False,
        "columns": _profile_columns(columns, arrays, 1.0, exact=False),
        "row_estimate": row_estimate,
    }


def _read(
    conn: sa.Connection, columns: list[_Column], source: sa.FromClause, limit: int
) -> tuple[int, list[pa.Array]]:
    """Up to ``limit`` rows of ``source`` as one Arrow array per column."""
    postgres = conn.dialect.name == "postgresql"
    if postgres and conn.dialect.driver == "psycopg2":
        arrays = _read_by_copy(conn, columns, source, limit)
        if arrays is not None:
            return (len(arrays[0]) if arrays else 0), arrays
    exprs = [
        _bounded(c, source_column) if postgres else source_column
        for c, source_column in zip(columns, source.c, strict=True)
    ]
    result = conn.execute(sa.select(*exprs).select_from(source).limit(limit))
    cursor = getattr(result, "cursor", None)  # plain tuples: the columns are untyped
    rows: Sequence[Any] = cursor.fetchall() if cursor is not None else result.tuples().all()
    result.close()
    by_column = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
    return len(rows), [_arrow(values) for values in by_column]


_COPY_TYPES = {
    "integer": pa.int64(),
    "number": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.int64(),  # days since 1970-01-01, computed by PostgreSQL
    "timestamp": pa.float64(),  # seconds since the epoch, computed by PostgreSQL
}


def _read_by_copy(
    conn: sa.Connection, columns: list[_Column], source: sa.FromClause, limit: int
) -> list[pa.Array] | None:
    """PostgreSQL: COPY the rows out as CSV and parse them with Arrow (no Python objects).

    None when that fails (an odd value, say): the caller then reads rows the plain way.
    """
    import psycopg2

    exprs: list[Any] = []
    for column, source_column in zip(columns, source.c, strict=True):
        if column.kind == "timestamp":
            exprs.append(sa.extract("epoch", source_column))
        elif column.kind == "date":
            exprs.append(source_column - sa.cast(sa.literal("1970-01-01"), sa.Date))
        else:
            exprs.append(_bounded(column, source_column))
    query = sa.select(*exprs).select_from(source).limit(limit)
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    names = [f"c{i}" for i in range(len(columns))]
    options = pacsv.ConvertOptions(
        column_types={
            name: _COPY_TYPES.get(column.kind, pa.string())
            for name, column in zip(names, columns, strict=True)
        },
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
        true_values=["t"],
        false_values=["f"],
    )
    buffer = io.BytesIO()
    savepoint = conn.begin_nested()
    try:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.copy_expert(f"COPY ({compiled}) TO STDOUT WITH (FORMAT csv)", buffer)
        cursor.close()
        savepoint.commit()
    except psycopg2.Error:
        savepoint.rollback()
        return None
    if not columns:
        return []
    buffer.seek(0)
    try:
        table = pacsv.read_csv(
            buffer,
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=options,
        )
    except pa.ArrowException:
        return None
    return [table.column(name).combine_chunks() for name in names]


def _bounded(column: _Column, source_column: Any) -> Any:
    """PostgreSQL: a text or other value as its first ``VALUE_CHARS`` characters."""
    if column.kind in ("text", "other"):
        return sa.func.left(sa.cast(source_column, sa.Text), VALUE_CHARS).label(column.name)
    return source_column


def _profile_columns(
    columns: list[_Column], arrays: list[pa.Array], scale: float, *, exact: bool
) -> list[dict[str, Any]]:
    return [
        _profile_values(column, array, scale, exact=exact)
        for column, array in zip(columns, arrays, strict=True)
    ]


def _profile_values(
    column: _Column, arrow: pa.Array, scale: float, *, exact: bool
) -> dict[str, Any]:
    present = arrow.drop_null()
    out: dict[str, Any] = {
        "name": column.name,
        "type": column.type,
        "null_count": round(arrow.null_count * scale),
    }
    kind = column.kind
    if kind in ("integer", "number", "date", "timestamp"):
        axis = Axis.for_kind(kind, present.slice(0, 50).to_pylist(), column.aware)
        array = axis.array(present)
        unique, counts = np.unique(array, return_counts=True)
        singletons = int(np.count_nonzero(counts == 1))
        out["distinct_count"] = _distinct(len(unique), singletons, len(array), exact, scale)
        if len(array):
            lo, hi = array.min().item(), array.max().item()
            out["min"], out["max"] = axis.render(lo), axis.render(hi)
            if kind in ("integer", "number"):
                out["mean"] = float(array.mean())
            out["histogram"] = axis.histogram(lo, hi, unique, counts * scale, [])
        else:
            out.update(min=None, max=None, histogram=[])
            if kind in ("integer", "number"):
                out["mean"] = None
        if kind == "integer":
            order = np.argsort(-counts, kind="stable")[:TOP_VALUES]
            out["top_values"] = [
                {"value": int(unique[i]), "count": round(float(counts[i]) * scale)}
                for i in order
                if counts[i] > 1
            ]
    elif kind == "boolean":
        if pa.types.is_boolean(present.type):
            truthy = int(pc.sum(present).as_py() or 0)
        else:
            truthy = sum(1 for v in present.to_pylist() if v)
        out["true_count"] = round(truthy * scale)
        out["false_count"] = round((len(present) - truthy) * scale)
    elif kind == "text":
        if not pa.types.is_string(present.type) and not pa.types.is_large_string(present.type):
            present = pa.array([_text(v) for v in present.to_pylist()], type=pa.string())
        tally = pc.value_counts(present)
        distinct_values = tally.field("values")
        counts = tally.field("counts").to_numpy(zero_copy_only=False)
        singletons = int(np.count_nonzero(counts == 1))
        out["distinct_count"] = _distinct(len(counts), singletons, len(present), exact, scale)
        order = np.argsort(-counts, kind="stable")[:TOP_VALUES]
        out["top_values"] = [
            {"value": _text(distinct_values[int(i)].as_py()), "count": round(counts[i] * scale)}
            for i in order
        ]
        ranked = pc.array_sort_indices(distinct_values).to_numpy(zero_copy_only=False)
        out["distinct_examples"] = [
            _text(distinct_values[int(i)].as_py()) for i in _spread(list(ranked))
        ]
    else:
        out["distinct_examples"] = _spread(sorted({_text(v) for v in present.to_pylist()}))
    return out


def _arrow(values: Sequence[Any]) -> pa.Array:
    """A column of Python values as Arrow; values of mixed types become strings."""
    try:
        return pa.array(values)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return pa.array([None if v is None else _text(v) for v in values], type=pa.string())


def _distinct(d: int, singletons: int, n: int, exact: bool, scale: float) -> int:
    """Distinct values: exact for a full read, else the Haas-Stokes estimate ANALYZE uses."""
    if exact or n == 0 or scale <= 1.0:
        return d
    population = n * scale
    estimate = n * d / (n - singletons + singletons * n / population)
    return int(round(min(max(estimate, d), population)))


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _spread(values: Sequence[Any], k: int = EXAMPLES) -> list[Any]:
    """Up to ``k`` values spread evenly over a sorted list (first and last included)."""
    if len(values) <= k:
        return list(values)
    step = (len(values) - 1) / (k - 1)
    return [values[round(i * step)] for i in range(k)]


# ------------------------------------------------------------- pg_stats path


def _from_statistics(
    columns: list[_Column], stats: dict[str, Any], reltuples: int, analyzed_at: Any
) -> dict[str, Any]:
    return {
        "source": "statistics",
        "analyzed_at": analyzed_at.isoformat() if analyzed_at else None,
        "row_count": reltuples,
        "row_count_exact": False,
        "columns": [_column_from_stats(c, stats[c.name], reltuples) for c in columns],
    }


def _column_from_stats(column: _Column, row: Any, rows: int) -> dict[str, Any]:
    null_frac = float(row.null_frac or 0.0)
    mcv = list(_json(row.mcv) or [])
    freqs = [float(f) for f in (row.mcf or [])]
    bounds = list(_json(row.bounds) or [])
    present = rows * (1.0 - null_frac)
    n_distinct = float(row.n_distinct or 0.0)
    distinct = round(n_distinct if n_distinct >= 0 else -n_distinct * rows)
    out: dict[str, Any] = {
        "name": column.name,
        "type": column.type,
        "null_count": round(null_frac * rows),
    }
    kind = column.kind
    common = sorted(zip(mcv, freqs, strict=False), key=lambda p: -p[1])
    if kind in ("integer", "number", "date", "timestamp"):
        axis = Axis.for_kind(kind, [*mcv, *bounds], column.aware)
        points = [(p, f * rows) for v, f in common for p in axis.points([v])]
        edges = axis.points(bounds)
        rest = max(present - sum(m for _, m in points), 0.0)
        pieces = []
        if len(edges) >= 2:
            share = rest / (len(edges) - 1)
            pieces = [(edges[i], edges[i + 1], share) for i in range(len(edges) - 1)]
        everything = [p for p, _ in points] + edges
        out["distinct_count"] = distinct
        if everything:
            lo, hi = min(everything), max(everything)
            out["min"], out["max"] = axis.render(lo), axis.render(hi)
            if kind in ("integer", "number"):
                mass = sum(m for _, m in points) + sum(m for *_, m in pieces)
                total = sum(p * m for p, m in points) + sum((a + b) / 2 * m for a, b, m in pieces)
                out["mean"] = total / mass if mass else None
            out["histogram"] = axis.histogram(
                lo,
                hi,
                np.asarray([p for p, _ in points], dtype=np.float64),
                np.asarray([m for _, m in points], dtype=np.float64),
                pieces,
            )
        else:
            out.update(min=None, max=None, histogram=[])
            if kind in ("integer", "number"):
                out["mean"] = None
        if kind == "integer":
            out["top_values"] = [
                {"value": int(v), "count": round(f * rows)} for v, f in common[:TOP_VALUES]
            ]
    elif kind == "boolean":
        by_value = {bool(v): f * rows for v, f in common}
        true = by_value.get(True)
        false = by_value.get(False)
        if true is None:
            true = max(present - (false or 0.0), 0.0)
        if false is None:
            false = max(present - true, 0.0)
        out["true_count"], out["false_count"] = round(true), round(false)
    elif kind == "text":
        out["distinct_count"] = distinct
        out["top_values"] = [
            {"value": _text(v), "count": round(f * rows)} for v, f in common[:TOP_VALUES]
        ]
        out["distinct_examples"] = _spread(sorted({_text(v) for v in [*bounds, *mcv]}))
    else:
        out["distinct_examples"] = _spread(
            sorted({_text(v if isinstance(v, str) else json.dumps(v)) for v in [*bounds, *mcv]})
        )
    return out


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
