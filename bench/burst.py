"""How a pool refills after a burst of session creates (report only, no target).

The pool keeps two warm kernels (``min_idle = 2``) and may run twelve. Ten clients, each on
its own already-open keep-alive connection, send ``POST /sessions`` at the same moment. The
benchmark records each create's latency, the time until all ten sessions have kernels (the
last 201), and, polling ``GET /health``, the time until the pool is back at ``min_idle``
idle kernels with nothing starting. Then it deletes the ten sessions and waits until the
pool is quiet again before the next burst.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
from harness import POLL_S, QUIET_TIMEOUT_S, BenchServer, Figure
from latency import create_session, delete_session

POOLS = """
[pools.default]
min_idle = 2
max_kernels = 12
"""
BURST = 10
SETTLE_S = 1.0


def one_burst(server: BenchServer) -> dict[str, Any]:
    """One burst of ``BURST`` concurrent creates; times in ms from the burst's start."""
    clients = [server.client() for _ in range(BURST)]
    monitor = server.client()
    try:
        for client in clients:
            client.get("/health").raise_for_status()  # open every connection before the burst
        server.wait_quiet(monitor, settle_s=SETTLE_S)
        before = server.pools(monitor)["default"]
        answers: list[dict[str, Any]] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(BURST + 1)

        def create(client: httpx.Client) -> None:
            barrier.wait()
            try:
                sent = time.perf_counter()
                latency, session_id = create_session(client, "default")
                answers.append(
                    {
                        "sent_ms": (sent - t0) * 1000,
                        "latency_ms": latency,
                        "done_ms": (sent - t0) * 1000 + latency,
                        "id": session_id,
                    }
                )
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=create, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        t0 = time.perf_counter()
        barrier.wait()
        timeline, idle_back_ms = watch_refill(server, monitor, threads, t0)
        for thread in threads:
            thread.join()
        if errors:
            raise RuntimeError(f"{len(errors)} creates of the burst failed") from errors[0]
        after = server.pools(monitor)["default"]
        for answer in answers:
            delete_session(monitor, answer["id"])
        server.wait_quiet(monitor)
    finally:
        for client in [*clients, monitor]:
            client.close()
    answers.sort(key=lambda a: a["done_ms"])
    return {
        "all_have_kernels_ms": answers[-1]["done_ms"],
        "idle_back_ms": idle_back_ms,
        "latencies_ms": [round(a["latency_ms"], 1) for a in answers],
        "kernels_started": after["started_total"] - before["started_total"],
        "pool_changes": timeline,
    }


def watch_refill(
    server: BenchServer, monitor: httpx.Client, threads: list[threading.Thread], t0: float
) -> tuple[list[dict[str, Any]], float]:
    """Poll the pool until every create answered and idle is back at min_idle.

    Returns the pool's counts each time they changed, and when idle was back (ms from t0).
    """
    timeline: list[dict[str, Any]] = []
    deadline = time.monotonic() + QUIET_TIMEOUT_S
    while time.monotonic() < deadline:
        pool = server.pools(monitor)["default"]
        now = (time.perf_counter() - t0) * 1000
        counts = {k: pool[k] for k in ("idle", "starting", "in_use", "waiting")}
        if not timeline or {k: timeline[-1][k] for k in counts} != counts:
            timeline.append({"ms": round(now, 1), **counts})
        creates_done = not any(t.is_alive() for t in threads)
        if creates_done and pool["idle"] >= pool["min_idle"] and pool["starting"] == 0:
            return timeline, now
        time.sleep(POLL_S)
    raise TimeoutError("the pool did not refill after the burst")


def bench_burst(server: BenchServer, bursts: int) -> list[Figure]:
    """``bursts`` bursts of ten creates against one pool."""
    runs = [one_burst(server) for _ in range(bursts)]
    sandbox = server.sandbox
    latencies = [latency for run in runs for latency in run["latencies_ms"]]
    details = {"bursts": runs}
    return [
        Figure(
            "burst",
            f"burst of {BURST}: until all have kernels",
            sandbox,
            "s",
            [run["all_have_kernels_ms"] / 1000 for run in runs],
            details=details,
        ),
        Figure("burst", f"burst of {BURST}: latency of each create", sandbox, "ms", latencies),
        Figure(
            "burst",
            f"burst of {BURST}: until idle is back at min_idle",
            sandbox,
            "s",
            [run["idle_back_ms"] / 1000 for run in runs],
        ),
    ]
