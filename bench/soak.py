"""A soak: eight clients doing a platform's mixed work against one server for minutes.

Run as ``sudo .venv/bin/python bench/soak.py --sandbox docker --minutes 10 [--json PATH]``
(report only, no target). One `dataexec serve` process (``harness.BenchServer``), two
pools: ``default`` (min_idle 4, max_kernels 16) and ``short`` (timeout_s 2, for the
timeouts). Each client loops over weighted kinds of work until the time is up:

- ``session``: create a session, then 3-8 steps (SQL into a frame, pandas filter, groupby,
  now and then a cell that raises), a notebook download, and the session's end;
- ``chart``: a session whose first cell draws a chart (``first_chart``), then its end;
- ``python``: sessionless Python (a fresh kernel, discarded after);
- ``sql``: sessionless SQL (in the server);
- ``on_data``: execute-on-data on literal rows;
- ``download``: a cache key of an earlier answer as CSV;
- ``timeout``: a cell over the ``short`` pool's 2 s timeout (``TIMEOUT`` expected).

By default the clients never pause (a closed loop: on two cores it keeps the cpu busy
whatever the server does, and every latency includes that queue). ``--think-s S`` has each
client pause before each request of its own, for a random time averaging S seconds (an
exponential distribution), as a platform does while its model writes the next step: that
sets the load offered, and the latencies say what a request meets below saturation.

It reports requests per second, the share of the machine's cpu that was busy, p50/p99 per
kind (and its three slowest requests, with when in the soak each came), errors by type
(those expected beside the rest), the server's RSS and open fds at start, peak and end,
what ``/metrics`` counted (per pool), and the kernel dirs and containers left once the
server stopped (there should be none).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
from harness import BenchServer, cpu_times, ms_since

POOLS = """
[pools.default]
min_idle = 4
max_kernels = 16

[pools.short]
min_idle = 1
max_kernels = 4
timeout_s = 2
"""
CLIENTS = 8
# kind -> weight in each client's choice
KINDS = {
    "session": 5,
    "chart": 1,
    "python": 2,
    "sql": 3,
    "on_data": 2,
    "download": 2,
    "timeout": 1,
}
CHART = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
STEPS = [
    "f = sql('SELECT origin, dest, carrier, dep_delay, arr_delay FROM flights "
    "WHERE month = {month}')",
    "late = f[f.dep_delay > 60]",
    "late.groupby('carrier').arr_delay.mean().reset_index()",
    "f.groupby(['origin', 'dest']).size().sort_values().tail(10).reset_index()",
    "raise ValueError('a step that fails on purpose')",
    "f.describe()",
]
EXPECTED_ERRORS = {"EXECUTION_ERROR", "TIMEOUT"}


class Soak:
    """What the clients measured, shared between their threads."""

    def __init__(self, server: BenchServer, seconds: float, think_s: float) -> None:
        self.server = server
        self.deadline = time.monotonic() + seconds
        self.think_s = think_s
        self.lock = threading.Lock()
        self.began = time.monotonic()
        self.latency: dict[str, list[float]] = defaultdict(list)
        # (latency, seconds into the soak) of each request, per kind: when the slowest came
        self.timeline: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.keys: list[str] = []

    def record(self, kind: str, started: float, response: httpx.Response) -> dict[str, Any]:
        latency = ms_since(started)
        body: dict[str, Any] = {}
        if response.headers.get("content-type", "").startswith("application/json"):
            body = response.json()
        with self.lock:
            self.latency[kind].append(latency)
            self.timeline[kind].append((latency, round(time.monotonic() - self.began, 1)))
            if response.status_code >= 400:
                self.errors[str(body.get("detail", {}).get("type", response.status_code))] += 1
            elif body.get("cache_key"):
                self.keys.append(body["cache_key"])
                del self.keys[:-200]
        return body

    def client_loop(self, seed: int) -> None:
        rng = random.Random(seed)
        kinds, weights = zip(*KINDS.items(), strict=True)
        with self.server.client(timeout=300) as http:
            while time.monotonic() < self.deadline:
                self.think(rng)
                kind = rng.choices(kinds, weights)[0]
                try:
                    getattr(self, kind)(http, rng)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.errors[f"transport: {type(exc).__name__}"] += 1

    def think(self, rng: random.Random) -> None:
        if self.think_s > 0:
            time.sleep(rng.expovariate(1 / self.think_s))

    def create(self, http: httpx.Client, body: dict[str, Any]) -> str | None:
        """A new session's id (its create timed), or None when refused."""
        started = time.perf_counter()
        created = self.record("session_create", started, http.post("/sessions", json=body))
        return created.get("session_id")

    def session(self, http: httpx.Client, rng: random.Random) -> None:
        session = self.create(http, {})
        if not session:
            return
        steps = [STEPS[0].format(month=rng.randint(1, 12))]
        steps += rng.choices(STEPS[1:], k=rng.randint(2, 7))
        for code in steps:
            self.think(rng)
            started = time.perf_counter()
            answer = http.post(f"/sessions/{session}/execute", json={"code": code})
            self.record("session_step", started, answer)
        started = time.perf_counter()
        self.record("notebook", started, http.get(f"/sessions/{session}/notebook"))
        started = time.perf_counter()
        self.record("session_end", started, http.delete(f"/sessions/{session}"))

    def chart(self, http: httpx.Client, rng: random.Random) -> None:
        session = self.create(http, {})
        if not session:
            return
        started = time.perf_counter()
        answer = http.post(f"/sessions/{session}/execute", json={"code": CHART})
        body = self.record("first_chart", started, answer)
        if answer.status_code == 200 and not any(
            "image/png" in output.get("data", {}) for output in body.get("outputs", [])
        ):
            with self.lock:
                self.errors["chart without image/png"] += 1
        http.delete(f"/sessions/{session}")

    def python(self, http: httpx.Client, rng: random.Random) -> None:
        code = f"pd.DataFrame({{'x': range({rng.randint(10, 10_000)})}}).x.sum()"
        started = time.perf_counter()
        self.record("python", started, http.post("/execute", json={"code": code}))

    def sql(self, http: httpx.Client, rng: random.Random) -> None:
        code = (
            "SELECT carrier, count(*) AS n, avg(dep_delay) AS delay FROM flights "
            f"WHERE month = {rng.randint(1, 12)} GROUP BY carrier"
        )
        started = time.perf_counter()
        body = {"language": "sql", "code": code}
        self.record("sql", started, http.post("/execute", json=body))

    def on_data(self, http: httpx.Client, rng: random.Random) -> None:
        rows = [{"a": i, "b": rng.random()} for i in range(rng.randint(1, 200))]
        body = {"code": "result_df = input_data['t'].describe()", "input_data": {"t": rows}}
        started = time.perf_counter()
        self.record("on_data", started, http.post("/execute-on-data", json=body))

    def download(self, http: httpx.Client, rng: random.Random) -> None:
        with self.lock:
            key = rng.choice(self.keys) if self.keys else None
        if key is None:
            return
        started = time.perf_counter()
        self.record("download", started, http.get(f"/cache/{key}", params={"format": "csv"}))

    def timeout(self, http: httpx.Client, rng: random.Random) -> None:
        session = self.create(http, {"pool": "short"})
        if not session:
            return
        started = time.perf_counter()
        body = {"code": "import time; time.sleep(30)"}
        self.record("timeout", started, http.post(f"/sessions/{session}/execute", json=body))
        http.delete(f"/sessions/{session}")


def process_figures(pid: int) -> dict[str, int]:
    """The server's resident memory (KiB) and open file descriptors now."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return {"rss_kib": rss, "fds": len(list(Path(f"/proc/{pid}/fd").iterdir()))}


def scrape_metrics(server: BenchServer, http: httpx.Client) -> dict[str, float]:
    """Each metric family's total from ``GET /metrics`` (operator token), per pool where it
    has one, or {} without the token."""
    from prometheus_client.parser import text_string_to_metric_families

    answer = http.get("/metrics", headers={"Authorization": f"Bearer {server.operator_token}"})
    if answer.status_code != 200:
        return {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name.endswith(("_total", "_count")) or (
                family.type == "gauge" and not sample.name.endswith("_created")
            ):
                pool = sample.labels.get("pool")
                name = f"{sample.name}{{pool={pool}}}" if pool else sample.name
                totals[name] = totals.get(name, 0.0) + sample.value
    return totals


def leftovers(server: BenchServer) -> dict[str, int]:
    """Kernel dirs and containers of this server still on the host."""
    found = {"kernel_dirs": len(server.kernel_dirs()), "containers": 0}
    if server.sandbox == "docker":
        import docker

        engine = docker.from_env(version="auto")
        label = f"dataexec.runtime_dir={server.runtime_dir}"
        found["containers"] = len(engine.containers.list(all=True, filters={"label": label}))
    return found


def percentile(samples: list[float], q: float) -> float:
    if len(samples) < 2:
        return samples[0] if samples else float("nan")
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


def run(sandbox: str, minutes: float, think_s: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="dataexec-soak-"))
    server = BenchServer(sandbox, POOLS, workdir, "soak")
    with server:
        assert server.process is not None
        pid = server.process.pid
        with server.client() as http:
            server.wait_quiet(http, settle_s=1.0)
            start = process_figures(pid)
            soak = Soak(server, minutes * 60, think_s)
            peak = dict(start)
            threads = [
                threading.Thread(target=soak.client_loop, args=(seed,)) for seed in range(CLIENTS)
            ]
            began, cpu_began = time.monotonic(), cpu_times()
            for thread in threads:
                thread.start()
            while any(t.is_alive() for t in threads):
                time.sleep(1.0)
                now = process_figures(pid)
                peak = {k: max(peak[k], now[k]) for k in peak}
            elapsed = time.monotonic() - began
            busy, total = (end - start for start, end in zip(cpu_began, cpu_times(), strict=True))
            server.wait_quiet(http, settle_s=1.0)
            end = process_figures(pid)
            metrics = scrape_metrics(server, http)
    left = leftovers(server)
    requests = sum(map(len, soak.latency.values()))
    return {
        "sandbox": sandbox,
        "clients": CLIENTS,
        "think_s": think_s,
        "seconds": round(elapsed, 1),
        "requests": requests,
        "requests_per_s": round(requests / elapsed, 2),
        "machine_cpu_busy": round(busy / total, 3),
        "kinds": {
            kind: {
                "n": len(samples),
                "p50_ms": round(percentile(samples, 50), 1),
                "p99_ms": round(percentile(samples, 99), 1),
                "slowest_ms_at_s": [
                    (round(ms, 1), at) for ms, at in sorted(soak.timeline[kind])[-3:][::-1]
                ],
            }
            for kind, samples in sorted(soak.latency.items())
        },
        "errors_expected": {k: v for k, v in soak.errors.items() if k in EXPECTED_ERRORS},
        "errors_other": {k: v for k, v in soak.errors.items() if k not in EXPECTED_ERRORS},
        "server": {"start": start, "peak": peak, "end": end},
        "metrics": metrics,
        "left_after_stop": left,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sandbox", default="docker", choices=["docker", "bubblewrap", "zygote"])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--think-s", type=float, default=0.0, help="each client's mean pause before a request"
    )
    parser.add_argument("--json", metavar="PATH", help="write the report here too")
    args = parser.parse_args(argv)
    report = run(args.sandbox, args.minutes, args.think_s)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    clean = not report["errors_other"] and not any(report["left_after_stop"].values())
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
