"""A query's result on its way out of the database: Arrow record batches, never held whole.

``QueryStream`` is the hand-over between the thread that reads the database and the
consumer on the event loop: the schema first (``ready``), then batches through a small
bounded queue, so the database is read no faster than the consumer takes the result.
``ClosingReader`` is what a dialect returns from ``read``: batches plus the cursor and
connection they come from, released together. ``RowBatches`` turns DB-API rows into batches
for drivers that have no Arrow reader of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from server.errors import ExecutionError

CHUNK_ROWS = 65_536
QUEUE_BATCHES = 4  # batches buffered between the database thread and the consumer
END = object()


class QueryStream:
    """A running query: ``await ready()`` for its schema, then iterate its batches.

    ``cancel`` stops it at any point, in the database too; the thread reading it ends.
    """

    def __init__(self) -> None:
        self.batches: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_BATCHES)
        self.head: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.stop = threading.Event()
        self.done = False
        self._lock = threading.Lock()
        self._cancel_query: Callable[[], None] | None = None

    def cancel_with(self, cancel: Callable[[], None] | None) -> None:
        """Set (or, with None, forget) how to cancel the query in the database.

        Forgotten before the connection goes back to the pool, so that a late cancel can
        never hit another query on the same connection.
        """
        with self._lock:
            self._cancel_query = cancel

    async def ready(self) -> pa.Schema:
        """The result's schema, once the database has started answering."""
        head = await asyncio.to_thread(self.head.get)
        if isinstance(head, BaseException):
            self.done = True
            raise head
        return head

    async def __aiter__(self) -> AsyncIterator[pa.RecordBatch]:
        try:
            while True:
                item = await asyncio.to_thread(self.batches.get)
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

    def cancel(self) -> None:
        """Stop the query in the database and the thread reading it. Idempotent."""
        self.done = True
        self.stop.set()
        with self._lock:
            if self._cancel_query is not None:
                with contextlib.suppress(Exception):
                    self._cancel_query()
        # Unblock a producer waiting on a full queue.
        with contextlib.suppress(queue.Empty):
            while True:
                self.batches.get_nowait()


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
    """DB-API rows, fetched ``CHUNK_ROWS`` at a time, as record batches of one schema.

    ``types`` fixes a column's Arrow type up front (from the driver's description) where it
    can; the rest are inferred from the values. The schema is settled by the first rows in
    which every inferred column has a value: rows before that wait (at most
    ``max_held_bytes``), so an all-NULL first chunk does not make a column ``null`` for good.
    A later chunk that does not fit the schema fails the query with the column's name rather
    than changing type mid-stream.
    """

    def __init__(
        self,
        fetch: Callable[[int], Sequence[Sequence[Any]]],
        names: list[str],
        types: Sequence[pa.DataType | None],
        convert: Sequence[Callable[[Any], Any] | None] = (),
        max_held_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.fetch = fetch
        self.names = names
        self.types = list(types)
        self.convert = list(convert) or [None] * len(names)
        self.max_held_bytes = max_held_bytes
        self.held: list[pa.RecordBatch] = []
        self.schema = self._settle()

    def _settle(self) -> pa.Schema:
        held_bytes = 0
        while True:
            rows = self.fetch(CHUNK_ROWS)
            if rows:
                batch = self._batch(rows, self.types)
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
        while rows := self.fetch(CHUNK_ROWS):
            yield self._batch(rows, self.types)


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
