"""A query's result on its way out of the database: Arrow record batches, never held whole.

``QueryStream`` is the hand-over between the thread that reads the database and the
consumer on the event loop: the schema first (``ready``), then batches, at most
``QUEUE_BATCHES`` of them waiting, so the database is read no faster than the consumer takes
the result. The producer hands over with ``call_soon_threadsafe`` and the consumer awaits on
the loop: no thread of the loop's executor sits blocked per running query, however many run.
``ClosingReader`` is what a dialect returns from ``read``: batches plus the cursor and
connection they come from, released together. ``RowBatches`` turns DB-API rows into batches
for drivers that have no Arrow reader of their own, fetching few rows at first so that rows
of huge values are never fetched by the thousand. ``check_rows`` refuses a batch holding
one row over the byte cap (``sql_max_row_bytes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from server.errors import ExecutionError, OutputTooLarge
from server.sql.errors import QueryCancelled

CHUNK_ROWS = 65_536  # most rows of one batch
FIRST_FETCH_ROWS = 16  # rows fetched before their size is known
BATCH_BYTES = 16 * 1024 * 1024  # what a batch of DB-API rows aims at
QUEUE_BATCHES = 4  # batches buffered between the database thread and the consumer
END = object()


class QueryStream:
    """A running query: ``await ready()`` for its schema, then iterate its batches.

    Made on the event loop by the consumer; ``put_head``, ``put`` and ``ended`` are the
    producer thread's. ``cancel`` stops the query at any point, in the database too; the
    thread reading it ends, and ``await closed()`` returns once it has released the
    query's connection.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._head: asyncio.Future[Any] = self._loop.create_future()
        self._items: asyncio.Queue[Any] = asyncio.Queue()
        self._room = threading.Semaphore(QUEUE_BATCHES)  # the producer's side of the bound
        self._ended = asyncio.Event()
        self.stop = threading.Event()
        self.done = False
        self._lock = threading.Lock()
        self._cancel_query: Callable[[], None] | None = None

    # --- the producer's side (the thread reading the database) ---------------------------

    def _on_loop(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self._loop.call_soon_threadsafe(callback, *args)

    def put_head(self, head: Any) -> None:
        """The result's schema, or the exception that ended the query before it."""
        self._on_loop(_settle, self._head, head)

    def put(self, item: Any) -> None:
        """A batch, ``END`` or an exception for the consumer; blocks while it is behind."""
        self._room.acquire()
        if not self.stop.is_set():
            self._on_loop(self._items.put_nowait, item)

    def ended(self) -> None:
        """The producer is gone: the query's cursor and connection are released."""
        self._on_loop(self._ended.set)

    def cancel_with(self, cancel: Callable[[], None] | None) -> None:
        """Set (or, with None, forget) how to cancel the query in the database.

        Forgotten before the connection goes back to the pool, so that a late cancel can
        never hit another query on the same connection.
        """
        with self._lock:
            self._cancel_query = cancel

    # --- the consumer's side (the event loop) --------------------------------------------

    async def ready(self) -> pa.Schema:
        """The result's schema, once the database has started answering."""
        head = await asyncio.shield(self._head)
        if isinstance(head, BaseException):
            self.done = True
            raise head
        return head

    async def __aiter__(self) -> AsyncIterator[pa.RecordBatch]:
        try:
            while True:
                item = await self._items.get()
                self._room.release()
                if item is END:
                    self.done = True
                    return
                if isinstance(item, BaseException):
                    self.done = True
                    raise item
                yield item
        finally:
            if not self.done:
                self.cancel()

    async def closed(self) -> None:
        """Wait until the producer thread has let go of the query's connection."""
        await self._ended.wait()

    def cancel(self) -> None:
        """Stop the query in the database and the thread reading it. Idempotent.

        A consumer waiting for the next batch gets ``QueryCancelled``: the producer hands
        over nothing once stopped, and its schema may have come long before.
        """
        if not self.done:
            self._items.put_nowait(QueryCancelled())
        self.done = True
        self.stop.set()
        with self._lock:
            if self._cancel_query is not None:
                with contextlib.suppress(Exception):
                    self._cancel_query()
        # Unblock a producer waiting for room; what it hands over now is dropped.
        for _ in range(QUEUE_BATCHES + 1):
            self._room.release()


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def check_rows(batch: pa.RecordBatch, cap: int) -> None:
    """``OutputTooLarge`` when one row of ``batch`` holds more than ``cap`` bytes."""
    if batch.nbytes <= cap:
        return  # no row is larger than the whole batch
    rows = np.zeros(batch.num_rows, np.int64)
    largest: tuple[int, str] = (0, "")
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        sizes = value_sizes(column)
        if sizes is None or not len(sizes):
            continue
        rows += sizes
        largest = max(largest, (int(sizes.max()), str(name)))
    if len(rows) and int(rows.max()) > cap:
        raise OutputTooLarge(
            f"a row of the result is {int(rows.max()):,} bytes (its largest value, in column "
            f"{largest[1]!r}, {largest[0]:,}), over the {cap:,} bytes one row may hold "
            "(sql_max_row_bytes); select a part of the large values (left(), substr()) or "
            "their length instead"
        )


def value_sizes(array: pa.Array) -> np.ndarray[Any, Any] | None:
    """The bytes each value of ``array`` holds (None for a type not measured here)."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        sizes = value_sizes(array.dictionary)
        if sizes is None:
            return None
        indices = array.indices.fill_null(0).to_numpy(zero_copy_only=False)
        return sizes[indices] if len(sizes) else np.zeros(len(array), np.int64)
    if (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_string_view(kind)
        or pa.types.is_binary_view(kind)
    ):
        return pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        inner = value_sizes(array.flatten())
        if inner is None:
            return None
        parents = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
        return np.bincount(parents, weights=inner, minlength=len(array)).astype(np.int64)
    if pa.types.is_struct(kind):
        total = np.zeros(len(array), np.int64)
        for i in range(kind.num_fields):
            part = value_sizes(array.field(i))
            if part is None:
                return None
            total += part
        return total
    try:
        width = kind.bit_width // 8
    except ValueError:  # no fixed width: not measured
        return None
    return np.full(len(array), width, np.int64)


class ClosingReader:
    """Batches of one query that own its cursor and connection; ``close`` releases them."""

    def __init__(
        self,
        schema: pa.Schema,
        batches: Iterable[pa.RecordBatch],
        stack: contextlib.ExitStack,
        close_first: Callable[[], None] | None = None,
    ) -> None:
        self.schema = schema
        self.batches = batches
        self.stack = stack
        self.close_first = close_first

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return iter(self.batches)

    def close(self, error: BaseException | None) -> None:
        """Release the statement, cursor and connection (pooled again only after success)."""
        # A driver's reader holds the statement open: it goes before cursor and connection.
        if self.close_first is not None:
            with contextlib.suppress(Exception):
                self.close_first()
        if error is None:
            self.stack.close()
        else:
            self.stack.__exit__(type(error), error, error.__traceback__)


class RowBatches:
    """DB-API rows, fetched a few at a time, as record batches of one schema.

    The first fetch takes ``FIRST_FETCH_ROWS`` rows; each later one as many as make about
    ``BATCH_BYTES`` at the size rows had so far (at most ``CHUNK_ROWS``), so rows of huge
    values are fetched a few at a time and a row over ``max_row_bytes`` fails the query
    before more of them arrive. ``types`` fixes a column's Arrow type up front (from the
    driver's description) where it can; the rest are inferred from the values. The schema
    is settled by the first rows in which every inferred column has a value: rows before
    that wait (at most ``max_held_bytes``), so an all-NULL first chunk does not make a
    column ``null`` for good. A later chunk that does not fit the schema fails the query
    with the column's name rather than changing type mid-stream.
    """

    def __init__(
        self,
        fetch: Callable[[int], Sequence[Sequence[Any]]],
        names: list[str],
        types: Sequence[pa.DataType | None],
        convert: Sequence[Callable[[Any], Any] | None] = (),
        max_held_bytes: int = 64 * 1024 * 1024,
        max_row_bytes: int | None = None,
    ) -> None:
        self.fetch = fetch
        self.names = names
        self.types = list(types)
        self.convert = list(convert) or [None] * len(names)
        self.max_held_bytes = max_held_bytes
        self.max_row_bytes = max_row_bytes
        self.rows_per_fetch = FIRST_FETCH_ROWS
        self.held: list[pa.RecordBatch] = []
        self.schema = self._settle()

    def _next_rows(self) -> Sequence[Sequence[Any]]:
        return self.fetch(self.rows_per_fetch)

    def _measured(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` checked against the row cap; the next fetch sized by its rows."""
        if self.max_row_bytes is not None:
            check_rows(batch, self.max_row_bytes)
        per_row = max(1, batch.nbytes // max(1, batch.num_rows))
        self.rows_per_fetch = max(1, min(CHUNK_ROWS, BATCH_BYTES // per_row))
        return batch

    def _settle(self) -> pa.Schema:
        held_bytes = 0
        while True:
            rows = self._next_rows()
            if rows:
                batch = self._measured(self._batch(rows, self.types))
                self.held.append(batch)
                held_bytes += batch.nbytes
                for i, field in enumerate(batch.schema):
                    if self.types[i] is None and not pa.types.is_null(field.type):
                        self.types[i] = _widened(field.type)
            unsettled = [i for i, t in enumerate(self.types) if t is None]
            if not rows or not unsettled or held_bytes > self.max_held_bytes:
                types = [pa.null() if t is None else t for t in self.types]
                self.types = types
                schema = pa.schema(list(zip(self.names, types, strict=True)))
                self.held = [self._fit(batch, schema) for batch in self.held]
                self.done = not rows
                return schema

    def _batch(self, rows: Sequence[Sequence[Any]], types: Sequence[pa.DataType | None]) -> Any:
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in self.names]
        arrays = []
        for name, values, type_, convert in zip(
            self.names, columns, types, self.convert, strict=True
        ):
            if convert is not None:
                values = tuple(None if v is None else convert(v) for v in values)
            try:
                arrays.append(pa.array(values, type=type_))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as exc:
                raise _mismatch(name, type_, exc) from None
        return pa.RecordBatch.from_arrays(arrays, names=self.names)

    def _fit(self, batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
        if batch.schema.equals(schema):
            return batch
        arrays = []
        for name, column, field in zip(self.names, batch.columns, schema, strict=True):
            try:
                arrays.append(column.cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise _mismatch(name, field.type, exc) from None
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        yield from self.held
        self.held = []
        if self.done:
            return
        while rows := self._next_rows():
            yield self._measured(self._batch(rows, self.types))


def _widened(type_: pa.DataType) -> pa.DataType:
    """An inferred type wide enough for later chunks: decimals keep their scale only."""
    if pa.types.is_decimal(type_) and type_.precision <= 38:
        return pa.decimal128(38, type_.scale)
    return type_


def _mismatch(name: str, type_: pa.DataType | None, exc: Exception) -> ExecutionError:
    shown = "the type of its first rows" if type_ is None else str(type_)
    message = f"column {name!r} holds a value that does not fit {shown}: {exc}"
    return ExecutionError(
        f"the query result cannot be read: {message}; CAST the column in the query",
        ename="ResultTypeError",
        evalue=message,
        traceback=[],
    )
