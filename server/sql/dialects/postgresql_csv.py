"""PostgreSQL results as ``COPY ... TO STDOUT (FORMAT csv)``, parsed by pyarrow as they come.

The fast path for the common column types. PostgreSQL writes CSV as fast as its binary
COPY, and pyarrow parses it in the server's process while the rest arrives: measured on
flights in one process (``QueryDatabase.table``, alternated, three runs), 1.14-1.20x the
binary COPY's own time against ADBC's 1.26-1.49x, and 360-380 ms of the server's cpu
against ADBC's 600-670 ms (bench/README.md).

``csv_types`` says whether a result can take this path: every column's type is one of
``ARROW_TYPES`` (integers, floats, booleans, text, dates and timestamps), whose CSV text
pyarrow reads back to exactly the value ADBC would give. Anything else (numeric, intervals,
arrays, json, ...) stays on ADBC, whose conversions ``arrow_types`` owns. ``faster_than_adbc``
says whether it should: CSV is cheaper for integers, booleans and text, dearer for floats
with decimals and timestamps (PostgreSQL's text for them), so a result of mostly those (a
weather table: 1.29x ADBC's time through CSV) stays on ADBC.

The COPY runs in a thread of its own, which writes into a pipe; the query's thread cuts
what arrives into chunks of whole rows (``row_ends``) and parses each one, as a single
block of pyarrow's (which refuses a row straddling two), while the next one arrives. The
settings that fix the text (ISO dates, exact floats: shortest since PostgreSQL 12, 17
digits before; UTF-8) are set for the session in the same message as the describe, and
undone by the pool's ``DISCARD ALL``; the query runs under the session's own TimeZone and
date order, as on ADBC. The connection runs in autocommit, each statement a read-only
transaction of its own (``default_transaction_read_only``): three round trips (describe,
COPY, reset) where a transaction took six. PostgreSQL writes NULL as an empty field and an
empty string as ``""``, which the reader tells apart. A value pyarrow cannot read (a date
of ``infinity`` or BC, which ADBC refuses too) fails the query as ``ResultTypeError``
naming its column. A COPY that failed (the row cap, the timeout, a cancel) fails the query
with the database's own error after the rows before it, never as a short result.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, wait
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv

from server.errors import ExecutionError
from server.sql.errors import ROW_TOO_LARGE
from server.sql.streaming import ClosingReader, QueryStream

# PostgreSQL type oids whose CSV text pyarrow reads back exactly.
ARROW_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(),
    20: pa.int64(),
    21: pa.int16(),
    23: pa.int32(),
    700: pa.float32(),
    701: pa.float64(),
    19: pa.string(),  # name
    25: pa.string(),  # text
    1042: pa.string(),  # char(n), padded as ADBC gives it
    1043: pa.string(),  # varchar
    1082: pa.date32(),
    1114: pa.timestamp("us"),
    1184: pa.timestamp("us", tz="UTC"),
}
VARIABLE_WIDTH = {25, 1042, 1043}  # of those, the types whose values may be large
# What a value of each type costs through CSV against ADBC, in ns (less than 0: CSV is
# cheaper), and a row besides, fitted on one and eight columns of each type over flights'
# 336,776 rows (bench/README.md). Floats count as with decimals: integral ones cost -43.
CSV_COST_NS: dict[int, int] = {
    **{oid: -19 for oid in (20, 21, 23)},  # integers
    **{oid: -29 for oid in (19, 25, 1042, 1043)},  # text
    16: -15,  # boolean
    1082: -4,  # date
    700: 35,  # floats
    701: 35,
    1114: 38,  # timestamp
    1184: 99,  # timestamptz
}
CSV_ROW_COST_NS = 20
TIMESTAMPTZ = 1184
# The text the reader expects (ISO dates, exact floats, UTF-8). Only DateStyle's output
# part is set: the query reads dates as the session's order says (MDY, DMY), as on ADBC.
SESSION = "SET DateStyle = 'ISO'; SET extra_float_digits = 3; SET client_encoding = 'UTF8'"
CHUNK_BYTES = 1 << 20  # CSV parsed per chunk; small enough to overlap with the COPY
ROW_END_TRIES = 16  # newlines tried as a chunk's end, from the last one back
_COLUMN = re.compile(r"In CSV column #(\d+): (.*)", re.S)
FEW_ROWS = 10_000
# The outermost query's LIMIT: nothing after it but an OFFSET and a semicolon.
_LIMIT = re.compile(r"\blimit\s+(\d+)(?:\s+offset\s+\d+)?\s*;?\s*\Z", re.I)


def copy_query(query: str, description: Any, cap: int) -> str:
    """``query`` as the COPY reads it: its columns by position, a timestamp with a time zone
    as the UTC time (as ADBC gives it; the query itself runs in the session's TimeZone), and
    every row whose variable-width values hold more than ``cap`` bytes refused by
    PostgreSQL, as ``ROW_TOO_LARGE`` says.

    The cap is cheaper than the whole-row ``pg_column_size`` of ``PostgreSQL.bounded``
    (measured on flights: 15-30 ms against 65-75 ms added to a 335 ms COPY), which builds
    each row as a composite value; the fixed-width columns, at most 8 bytes each, are left out.
    """
    columns = [f"c{i}" for i in range(len(description))]
    outputs = ", ".join(
        f"{name} AT TIME ZONE 'UTC'" if column.type_code == TIMESTAMPTZ else name
        for name, column in zip(columns, description, strict=True)
    )
    named = f"AS dataexec_row({', '.join(columns)})"
    sizes = " + ".join(
        f"coalesce(pg_column_size({name}), 0)"
        for name, column in zip(columns, description, strict=True)
        if column.type_code in VARIABLE_WIDTH
    )
    if not sizes:
        return f"SELECT {outputs} FROM (\n{query}\n) {named}"
    # OFFSET 0 keeps the condition on the query's rows: PostgreSQL would otherwise push it
    # below a GROUP BY or DISTINCT on those columns, onto every row scanned (4-6 ms more for
    # a GROUP BY of flights' 336,776 rows into 16).
    rows = f"SELECT * FROM (\n{query}\n) AS dataexec_query OFFSET 0"
    # The CASE's cast runs only for a row over the cap (not folded: it is not constant).
    return (
        f"SELECT {outputs} FROM ({rows}) {named} WHERE CASE WHEN {sizes} > {cap} "
        f"THEN ('{ROW_TOO_LARGE} ' || ({sizes}))::int = 0 ELSE true END"
    )


def csv_types(description: Any) -> list[pa.DataType] | None:
    """The Arrow type of each column of a psycopg2 ``cursor.description``, or None when one
    column's type has no exact CSV path (or there are no columns)."""
    types = [ARROW_TYPES.get(column.type_code) for column in description or ()]
    if not types or any(t is None for t in types):
        return None
    return [t for t in types if t is not None]


def few_rows(query: str) -> bool:
    """Whether ``query`` ends in a ``LIMIT`` of at most ``FEW_ROWS``: a result so small that
    asking for its columns first (a round trip and a reset) costs more than CSV can gain."""
    limit = _LIMIT.search(query)
    return limit is not None and int(limit.group(1)) <= FEW_ROWS


def faster_than_adbc(description: Any) -> bool:
    """Whether a result of these columns (all with a CSV path) is read faster as CSV."""
    cost = CSV_ROW_COST_NS + sum(CSV_COST_NS[column.type_code] for column in description)
    return cost < 0


def row_ends(source: Callable[[], bytes]) -> Iterator[bytes]:
    """The CSV text that ``source`` gives (b"" at its end) in chunks of whole rows, of about
    ``CHUNK_BYTES`` or more. A row ends at a newline outside quotes: where the quotes since
    the chunk began are even (PostgreSQL doubles a quote inside a quoted value).

    Only the last ``ROW_END_TRIES`` newlines of what arrived are tried, each by counting
    quotes in C: text of many quoted newlines or quotes (a value made to be slow) costs no
    more than any other, its chunk just grows until a row ends in the last ones.
    """
    pending = bytearray()
    scanned, odd = 0, False  # pending[:scanned] was looked at; odd: its quotes are
    while data := source():
        pending += data
        if len(pending) - scanned < CHUNK_BYTES:
            continue
        cut, end = 0, len(pending)
        odd_at = odd ^ (pending.count(b'"', scanned) % 2 == 1)  # quotes odd before ``end``
        odd = odd_at
        for _ in range(ROW_END_TRIES):
            newline = pending.rfind(b"\n", scanned, end)
            if newline < 0:
                break
            odd_at ^= pending.count(b'"', newline, end) % 2 == 1
            if not odd_at:
                cut = newline + 1
                break
            end = newline
        scanned = len(pending)
        if cut:
            yield bytes(pending[:cut])
            del pending[:cut]
            scanned -= cut
    if pending:
        yield bytes(pending)


class CsvCopy:
    """One ``COPY (query) TO STDOUT (FORMAT csv)`` on ``cursor``, written into a pipe by a
    thread of ``copies``; ``reader`` parses the other end into record batches."""

    def __init__(self, cursor: Any, query: str, copies: Executor) -> None:
        self.cursor = cursor
        self.error: BaseException | None = None
        self.finished = False  # the reader saw the end of the COPY
        self.source, write_fd = os.pipe()
        with contextlib.suppress(OSError):  # fewer, larger reads where Linux allows it
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, CHUNK_BYTES)
        # psycopg2 writes each row on its own: a buffered file takes them in C.
        sink = os.fdopen(write_fd, "wb", buffering=CHUNK_BYTES)
        statement = f"COPY ({query}) TO STDOUT (FORMAT csv)"
        try:
            self.done = copies.submit(self._copy, statement, sink)
        except BaseException:  # the executor is shut down: the server is stopping
            sink.close()
            self.close()
            raise

    def _copy(self, statement: str, sink: Any) -> None:
        try:
            self.cursor.copy_expert(statement, sink)
        except BaseException as exc:  # raised in the reader's thread
            self.error = exc  # set before the pipe closes: the reader finds it at the end
        finally:
            with contextlib.suppress(OSError):  # the reader is gone
                sink.close()

    def abandon(self, cancel: Callable[[], None]) -> None:
        """Stop the COPY: in the database, and its thread (perhaps blocked on a full pipe,
        which closing the reading end breaks)."""
        if not self.done.done():
            with contextlib.suppress(Exception):
                cancel()
        self.close()
        wait([self.done])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.source)

    def reader(self, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        """The result's batches, of ``schema``."""
        names = schema.names
        # Columns go by position: a result may repeat a name (two ``?column?``).
        keys = [f"c{i}" for i in range(len(names))]
        # A timestamp with a time zone comes as its UTC time, without an offset (copy_query).
        read_as = [pa.timestamp(t.unit) if pa.types.is_timestamp(t) else t for t in schema.types]
        parse = pcsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False)
        convert = pcsv.ConvertOptions(
            column_types=dict(zip(keys, read_as, strict=True)),
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
            timestamp_parsers=[pcsv.ISO8601],
        )
        for chunk in row_ends(lambda: os.read(self.source, CHUNK_BYTES)):
            # One block per chunk: pyarrow refuses a row that straddles two.
            options = pcsv.ReadOptions(column_names=keys, block_size=len(chunk) + 1)
            try:
                table = pcsv.read_csv(
                    pa.py_buffer(chunk),
                    read_options=options,
                    parse_options=parse,
                    convert_options=convert,
                )
            except pa.ArrowInvalid as exc:  # the text ended short, or a value is unreadable
                raise self.error if self.error is not None else _unreadable(exc, names) from None
            for batch in table.to_batches():
                columns = [
                    c.cast(t) if c.type != t else c
                    for c, t in zip(batch.columns, schema.types, strict=True)
                ]
                yield pa.RecordBatch.from_arrays(columns, schema=schema)
        wait([self.done])
        self.finished = True
        if self.error is not None:  # the COPY failed (the row cap, the timeout, a cancel)
            raise self.error


def _unreadable(exc: Exception, names: list[str]) -> ExecutionError:
    text = str(exc)
    where = _COLUMN.match(text)
    if where is not None and int(where.group(1)) < len(names):
        text = f"column {names[int(where.group(1))]!r}: {where.group(2)}"
    return ExecutionError(
        f"the query result cannot be read: {text}; CAST the column in the query (to text, "
        "for values such as infinity or dates BC)",
        ename="ResultTypeError",
        evalue=text,
        traceback=[],
    )


def read(
    raw: Any,
    query: str,
    stream: QueryStream,
    max_row_bytes: int,
    copies: Executor,
    faster: Callable[[Any], bool] = faster_than_adbc,
) -> ClosingReader | None:
    """``query``'s batches through CSV COPY on ``raw`` (a pooled psycopg2 connection, whose
    reset on return forgets the session's settings), or None (``raw`` given back) when a
    column's type has no CSV path or the columns are read ``faster`` by ADBC. A row over
    ``max_row_bytes`` fails the query in the database (``copy_query``); the COPY runs in a
    thread of ``copies``.

    Closing the reader releases ``raw``: back to the pool after a clean COPY, else
    discarded (left mid-COPY, or a cancel request may still reach it).
    """
    cancelled = threading.Event()

    def cancel() -> None:
        cancelled.set()
        raw.cancel()

    stream.cancel_with(cancel)
    try:
        raw.dbapi_connection.autocommit = True
        with contextlib.closing(raw.cursor()) as cursor:
            # the settings, and the result's columns with no row read: one round trip
            cursor.execute(f"{SESSION};\nSELECT * FROM (\n{query}\n) AS dataexec_row LIMIT 0")
            description = cursor.description or ()
        types = csv_types(description)
    except BaseException:
        stream.cancel_with(None)
        raw.invalidate() if cancelled.is_set() else raw.close()
        raise
    if types is None or not faster(description):
        stream.cancel_with(None)
        raw.close()
        return None
    names = [column.name for column in description]
    try:
        copy = CsvCopy(raw.cursor(), copy_query(query, description, max_row_bytes), copies)
    except BaseException:
        stream.cancel_with(None)
        raw.close()
        raise
    stack = contextlib.ExitStack()

    @stack.push
    def _release(kind: Any, error: Any, tb: Any) -> None:
        stream.cancel_with(None)
        if copy.finished and copy.error is None and error is None and not cancelled.is_set():
            copy.close()
            raw.close()
            return
        copy.abandon(cancel)
        raw.invalidate()

    schema = pa.schema(list(zip(names, types, strict=True)))
    return ClosingReader(schema, copy.reader(schema), stack)
