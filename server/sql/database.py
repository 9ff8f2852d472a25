"""The analysed database: read-only queries streamed as Arrow record batches.

``QueryDatabase`` is the one door to the database DataExec analyses: ``start`` runs a
query (already guarded, see ``server.sql.guard``) in a thread of its own and hands its
batches over a ``QueryStream``; ``table`` collects them; ``schema`` and ``profile`` answer
``/schema``. What differs between databases (drivers, session settings, TLS, cancel, the
Arrow path) is the ``Dialect``'s, in ``server.sql.dialects``. ``gate`` (a ``QueryGate``,
``server.sql.admission``) is whose turn it is: callers hold one of its slots around a query.

A result may not exceed ``sql_max_result_bytes`` as Arrow, nor any row of it
``sql_max_row_bytes``: the producer counts and checks each batch as it arrives, before it
is handed on, and stops with ``OutputTooLarge``, so nothing holds a whole oversized result
(PostgreSQL refuses such a row itself, before sending it: see ``dialects.postgresql``).
Driver errors are translated by ``server.sql.errors``; connection failures name the host and
database, never the password.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from sqlalchemy.engine import make_url

from server.config import Settings
from server.errors import OutputTooLarge
from server.sql.admission import QueryGate
from server.sql.dialects import dialect_for
from server.sql.errors import QueryCancelled
from server.sql.introspect import describe_schema
from server.sql.profile import profile_table
from server.sql.streaming import END, ClosingReader, QueryStream, check_rows
from server.telemetry.metrics import Metrics


class QueryDatabase:
    """The database DataExec analyses, seen through the SELECT-only role."""

    def __init__(self, settings: Settings, url: str, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.url = make_url(url)
        self.backend = self.url.get_backend_name()  # SQLAlchemy's name, for the guard
        self.dialect = dialect_for(settings, self.url)
        self.engine = self.dialect.engine
        self.errors = self.dialect.errors
        self.gate = QueryGate(
            settings.db_pool_size,
            settings.max_queries_per_tenant,
            settings.max_queries_per_kernel,
            settings.sql_queue_wait_s,
        )

    # --- queries -----------------------------------------------------------------------

    def start(self, query: str, params: Mapping[str, Any] | None = None) -> QueryStream:
        """Start ``query`` (already guarded) in a thread of its own; return its stream.

        Called on the event loop, inside a slot of ``gate``.
        """
        stream = QueryStream()

        def produce() -> None:
            started = False
            began, status = time.perf_counter(), "ok"
            try:
                with self.errors.translated():
                    reader = self.dialect.read(query, params, stream)
                    try:
                        if stream.stop.is_set():
                            raise QueryCancelled()
                        stream.put_head(reader.schema)
                        started = True
                        self._pump(reader, stream)
                    except BaseException as exc:
                        reader.close(exc)
                        raise
                    reader.close(None)
                    stream.put(END)
            except BaseException as exc:  # handed to the consumer, who raises it
                status = (
                    "cancelled"
                    if isinstance(exc, QueryCancelled)
                    else str(getattr(exc, "type", "INTERNAL"))
                )
                if not started:
                    stream.put_head(exc)
                elif not stream.stop.is_set():
                    stream.put(exc)
            finally:
                stream.ended()
                self.metrics.query(status, time.perf_counter() - began)

        threading.Thread(target=produce, name="query", daemon=True).start()
        return stream

    def _pump(self, reader: ClosingReader, stream: QueryStream) -> None:
        """Move batches from the database to the consumer, within the byte caps."""
        cap = self.settings.sql_max_result_bytes
        used = 0
        for batch in reader:
            if stream.stop.is_set():
                raise QueryCancelled()
            check_rows(batch, self.settings.sql_max_row_bytes)
            used += batch.nbytes
            self.metrics.result_bytes(batch.nbytes)
            if used > cap:
                raise OutputTooLarge(
                    f"the query result exceeds {cap} bytes "
                    "(sql_max_result_bytes); add a LIMIT or aggregate"
                )
            stream.put(batch)

    async def table(self, query: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        """The whole result as one Arrow table (bounded by sql_max_result_bytes)."""
        stream = self.start(query, params)
        try:
            schema = await stream.ready()
            return pa.Table.from_batches([b async for b in stream], schema=schema)
        finally:
            stream.cancel()
            await stream.closed()

    async def schema(self, tenant: str) -> dict[str, Any]:
        """The ``GET /schema`` answer (see ``introspect``), in a slot of ``tenant``'s."""
        async with self.gate.slot(tenant):
            return await asyncio.to_thread(describe_schema, self.engine)

    async def profile(self, tenant: str, table: str) -> dict[str, Any]:
        """The ``GET /schema/{table}/profile`` answer (see ``profile``), in a slot of
        ``tenant``'s: a profile reads the table, and a flood of them must wait its turn."""
        async with self.gate.slot(tenant):
            return await asyncio.to_thread(profile_table, self.engine, table)

    def describe(self) -> dict[str, Any]:
        """Which path serves this database and what it guarantees (for ``GET /health``)."""
        return {
            "dialect": self.backend,
            "driver": self.url.get_driver_name(),
            "path": self.dialect.title,
            "tls": self.dialect.tls_in_use(),
            "guarantees": self.dialect.guarantees.as_dict(),
        }

    def close(self) -> None:
        self.dialect.close()


__all__ = ["QueryDatabase", "QueryStream"]
