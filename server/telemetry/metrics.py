"""Every Prometheus metric of one server, declared here and nowhere else.

A ``Metrics`` owns a ``CollectorRegistry`` of its own (one per ``Runtime``: two servers in
one process, as in the tests, never share counts, and nothing needs resetting). The rooms
that do the work get it from the runtime and call its small methods where things happen:
a request answered (``request``), a step run (``execution``), a kernel replaced
(``replacement``), a query streamed (``query``, ``result_bytes``), a cache write or
eviction, broker traffic.

What is a level rather than an event (kernels by state, pool waiters, session queues,
queries waiting, cache bytes and keys per tenant), and the counts the pools keep
themselves (starts, warm hits, cold starts), are not tracked twice: the runtime takes a
``State`` snapshot at scrape time and ``render`` reports it, so a gauge can never drift
from the pools it describes.

Label values are bounded: routes are the route patterns (``/sessions/{session_id}``),
never raw paths; tenants and pools are the configured ones; reasons and statuses are
the error types and kernel-loss reasons of the code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST  # what generate_latest writes

# Seconds: from a 1 ms SQL answer to a cell that runs into the 100 s default timeout.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
KERNEL_STATES = ("idle", "starting", "in_use")


@dataclass
class State:
    """What the gauges show, taken by the runtime at scrape time."""

    pools: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # name -> stats()
    sessions: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (tenant, state) -> n
    queued: Mapping[str, int] = field(default_factory=dict)  # tenant -> requests waiting
    cache: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # tenant -> (keys, bytes)
    throwaway_running: int = 0
    queries: Mapping[str, int] = field(default_factory=dict)  # running, waiting -> n


class _StateCollector(Collector):
    """Reports the last ``State`` handed to ``Metrics.render``."""

    def __init__(self) -> None:
        self.state = State()

    def collect(self) -> Iterator[Metric]:
        state = self.state
        kernels = GaugeMetricFamily(
            "dataexec_kernels", "Kernels of each pool by state.", labels=["pool", "state"]
        )
        limit = GaugeMetricFamily(
            "dataexec_pool_max_kernels", "max_kernels of each pool.", labels=["pool"]
        )
        waiters = GaugeMetricFamily(
            "dataexec_pool_waiters", "Requests waiting for a kernel of the pool.", labels=["pool"]
        )
        starts = CounterMetricFamily(
            "dataexec_kernel_starts", "Kernels started by each pool.", labels=["pool"]
        )
        failures = CounterMetricFamily(
            "dataexec_kernel_start_failures", "Kernel starts that failed.", labels=["pool"]
        )
        hits = CounterMetricFamily(
            "dataexec_pool_hits", "Kernels handed out warm (one was idle).", labels=["pool"]
        )
        cold = CounterMetricFamily(
            "dataexec_pool_cold_starts",
            "Kernels a request had to wait for while one started (none was idle).",
            labels=["pool"],
        )
        for name, stats in state.pools.items():
            for kernel_state in KERNEL_STATES:
                kernels.add_metric([name, kernel_state], stats[kernel_state])
            limit.add_metric([name], stats["max_kernels"])
            waiters.add_metric([name], stats["waiting"])
            starts.add_metric([name], stats["started_total"])
            failures.add_metric([name], stats["start_failures"])
            hits.add_metric([name], stats["hits"])
            cold.add_metric([name], stats["cold_starts"])
        sessions = GaugeMetricFamily(
            "dataexec_sessions",
            "Sessions in the server's memory by tenant and state (idle, busy, no_kernel).",
            labels=["tenant", "state"],
        )
        for (tenant, session_state), count in sorted(state.sessions.items()):
            sessions.add_metric([tenant, session_state], count)
        queued = GaugeMetricFamily(
            "dataexec_session_queue_depth",
            "Requests waiting behind a running one in a session, by tenant.",
            labels=["tenant"],
        )
        for tenant, count in sorted(state.queued.items()):
            queued.add_metric([tenant], count)
        throwaway = GaugeMetricFamily(
            "dataexec_throwaway_executions",
            "Session-less Python executions running in throwaway kernels.",
            value=state.throwaway_running,
        )
        keys = GaugeMetricFamily(
            "dataexec_cache_keys", "Ready cache keys of each tenant.", labels=["tenant"]
        )
        size = GaugeMetricFamily(
            "dataexec_cache_bytes",
            "Parquet bytes each tenant keeps in the cache.",
            labels=["tenant"],
        )
        for tenant, (count, stored) in sorted(state.cache.items()):
            keys.add_metric([tenant], count)
            size.add_metric([tenant], stored)
        queries = GaugeMetricFamily(
            "dataexec_db_queries",
            "Queries to the analysed database running, and waiting for their turn.",
            labels=["state"],
        )
        for query_state, count in sorted(state.queries.items()):
            queries.add_metric([query_state], count)
        yield from (kernels, limit, waiters, starts, failures, hits, cold)
        yield from (sessions, queued, throwaway, queries, keys, size)


class Metrics:
    """The metrics of one server; see the module docstring."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "dataexec_http_requests",
            "HTTP requests answered, by route pattern, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "dataexec_http_request_duration_seconds",
            "Time to answer an HTTP request, by route pattern.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.executions = Counter(
            "dataexec_executions",
            "Executions (steps) by language, pool and status (ok or the error type).",
            ["language", "pool", "status"],
            registry=registry,
        )
        self.execution_seconds = Histogram(
            "dataexec_execution_duration_seconds",
            "Wall time of an execution once its turn came (kernel taken, frames restored and "
            "the cell run; queueing excluded), by language and pool (server: SQL without a "
            "session).",
            ["language", "pool"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.replacements = Counter(
            "dataexec_kernel_replacements",
            "Sessions given a fresh kernel after losing theirs, by pool and reason.",
            ["pool", "reason"],
            registry=registry,
        )
        self.query_seconds = Histogram(
            "dataexec_db_query_duration_seconds",
            "Time of a query in the analysed database, from start to its last batch, by "
            "status (ok, or the error type).",
            ["status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.query_bytes = Counter(
            "dataexec_db_result_bytes",
            "Bytes (as Arrow) of query results read from the analysed database.",
            registry=registry,
        )
        self.cache_written = Counter(
            "dataexec_cache_written_bytes",
            "Parquet bytes written to the cache, by tenant.",
            ["tenant"],
            registry=registry,
        )
        self.cache_evictions = Counter(
            "dataexec_cache_evictions",
            "Cache keys removed, by tenant and reason (quota, ttl, deleted).",
            ["tenant", "reason"],
            registry=registry,
        )
        self.broker_bytes = Counter(
            "dataexec_broker_bytes",
            "Bytes through the kernels' broker sockets, by operation (sql, load, put) and "
            "direction (to_kernel, from_kernel; to_kernel_mapped, from_kernel_mapped: handed over "
            "as files to map).",
            ["op", "direction"],
            registry=registry,
        )
        self._state = _StateCollector()
        registry.register(self._state)

    # --- events, called where they happen -------------------------------------------------

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def execution(self, language: str, pool: str, status: str, seconds: float) -> None:
        self.executions.labels(language, pool, status).inc()
        self.execution_seconds.labels(language, pool).observe(seconds)

    def replacement(self, pool: str, reason: str) -> None:
        self.replacements.labels(pool, reason).inc()

    def query(self, status: str, seconds: float) -> None:
        """A query ended (called from the query's own thread; the client is thread-safe)."""
        self.query_seconds.labels(status).observe(seconds)

    def result_bytes(self, size: int) -> None:
        self.query_bytes.inc(size)

    def cache_write(self, tenant: str, size: int) -> None:
        self.cache_written.labels(tenant).inc(size)

    def cache_eviction(self, tenant: str, reason: str) -> None:
        self.cache_evictions.labels(tenant, reason).inc()

    def broker(self, op: str, direction: str, size: int) -> None:
        self.broker_bytes.labels(op, direction).inc(size)

    # --- the scrape ----------------------------------------------------------------------

    def render(self, state: State) -> bytes:
        """The Prometheus text exposition of every metric, the gauges as ``state`` says."""
        self._state.state = state
        return generate_latest(self.registry)
