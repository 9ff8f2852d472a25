"""What one kernel start costs the machine's cpu (report only, no target).

Sessionless ``POST /execute``, one at a time: each takes a fresh kernel from the pool and
discards it, and the pool starts one in its place. A sample is the machine's busy cpu (all
cores, from ``/proc/stat``) from the request until the pool is quiet again plus ``SETTLE_S``
(the new kernel's chart warm-up): the request, the old kernel's removal and its
replacement's start, which is most of it. Beside it, the cpu the kernel process itself had
used (``getrusage`` in the cell: its start, the warm-up cell and, if it ran, the chart
warm-up), finer than the machine's ticks. Pools size their idle kernels to demand, so only
samples in which the pool started exactly one kernel count. The pool is polled every
``POLL_S`` (not the harness's 20 ms): each poll is a request that costs cpu too. Run it on a
machine with nothing else busy: whatever else runs is counted.
"""

from __future__ import annotations

import os
import time

from harness import QUIET_TIMEOUT_S, BenchServer, Figure, cpu_times

POOLS = """
[pools.default]
min_idle = 1
max_kernels = 4
"""
# The kernel process's own cpu so far (user + system), in ms.
OWN_CPU = (
    "import resource\n"
    "r = resource.getrusage(resource.RUSAGE_SELF)\n"
    "print(round((r.ru_utime + r.ru_stime) * 1000, 1))"
)
SETTLE_S = 0.5
POLL_S = 0.1
MS_PER_TICK = 1000 / os.sysconf("SC_CLK_TCK")


def bench_start_cpu(server: BenchServer, n: int) -> list[Figure]:
    """``n`` samples of the machine's cpu for a sessionless request and its kernel's refill."""
    samples: list[float] = []
    own: list[float] = []
    with server.client() as client:
        server.wait_quiet(client, settle_s=SETTLE_S)
        for _ in range(3 * n):
            if len(samples) == n:
                break
            started = server.pools(client)["default"]["started_total"]
            busy_before, _ = cpu_times()
            answer = client.post("/execute", json={"code": OWN_CPU})
            answer.raise_for_status()
            deadline = time.monotonic() + QUIET_TIMEOUT_S
            while not server.is_quiet(client):
                if time.monotonic() > deadline:
                    raise TimeoutError("the pool did not refill")
                time.sleep(POLL_S)
            time.sleep(SETTLE_S)
            busy_after, _ = cpu_times()
            if server.pools(client)["default"]["started_total"] - started == 1:
                samples.append((busy_after - busy_before) * MS_PER_TICK)
                own.append(float(answer.json()["outputs"][0]["text"]))
    what = "machine cpu per sessionless request and its kernel's replacement"
    return [
        Figure("starts", what, server.sandbox, "ms", samples),
        Figure(
            "starts", "  the kernel process's own cpu at its first cell", server.sandbox, "ms", own
        ),
    ]
