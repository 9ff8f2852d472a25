"""Run DataExec's benchmarks and print median and p90 of each figure against its target.

    python bench/run.py [--only NAME] [--repeat N] [--sandbox NAME] [--json PATH]

Each benchmark runs once per sandbox (bubblewrap, zygote, docker), each against a fresh
`dataexec serve` process with the pools it needs; then, when `pandas` ran, the replaced
system's `docker run` per request is measured for the speedup. See bench/README.md.
Exits 1 when a figure misses its target, 2 on bad arguments or a missing prerequisite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import burst
import cache
import databases
import latency
import memory
import sql
import starts
from harness import BenchServer, Figure

SANDBOXES = ("bubblewrap", "zygote", "docker")
DOCKER_IMAGE = os.environ.get("DATAEXEC_DOCKER_IMAGE", "dataexec-kernel:latest")


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: the pools its server runs, its default sample count, how to run it.

    ``alone`` instead of ``run``: a benchmark that starts its own servers (pointed at
    databases it starts), called with the sandbox, the work dir and the sample count.
    """

    name: str
    help: str
    pools: str
    repeat: int
    run: Callable[[BenchServer, int], list[Figure]] | None
    alone: Callable[[str, Path, int], list[Figure]] | None = None


BENCHMARKS = {
    b.name: b
    for b in (
        Benchmark(
            "memory",
            "memory of an idle warm kernel, from its cgroup",
            memory.POOLS,
            memory.READS,
            memory.bench_memory,
        ),
        Benchmark(
            "create",
            "POST /sessions: pool hit (N) vs cold kernel start (N/2)",
            latency.POOLS,
            30,
            lambda server, n: latency.bench_create(server, n, max(1, n // 2)),
        ),
        Benchmark("execute", "execute `1+1` over HTTP", latency.POOLS, 200, latency.bench_execute),
        Benchmark(
            "pandas",
            "a trivial pandas cell over HTTP, and `docker run` per request (15)",
            latency.POOLS,
            100,
            latency.bench_pandas,
        ),
        Benchmark(
            "chart",
            "a session's first chart in a kernel fresh from the pool",
            latency.POOLS,
            10,
            latency.bench_first_chart,
        ),
        Benchmark(
            "burst", "pool refill after 10 concurrent creates", burst.POOLS, 3, burst.bench_burst
        ),
        Benchmark(
            "starts",
            "the machine's cpu for one kernel start (a sessionless request and its refill)",
            starts.POOLS,
            15,
            starts.bench_start_cpu,
        ),
        Benchmark(
            "sql",
            "SELECT * FROM flights into a DataFrame: sql() vs read_sql vs ADBC; /schema",
            sql.POOLS,
            10,
            sql.bench_sql,
        ),
        Benchmark(
            "cache",
            "save(flights) and load(key) vs `docker run`; a 5-step analysis vs `docker run` "
            "per step; spill vs pq.write_table in process",
            cache.POOLS,
            10,
            lambda server, n: cache.bench_cache(server, n, DOCKER_IMAGE),
        ),
        Benchmark(
            "databases",
            "SELECT * FROM flights into a kernel frame on MariaDB vs read_sql over mysqlclient; "
            "on PostgreSQL with TLS (require) vs without (disable)",
            databases.POOLS,
            10,
            None,
            databases.bench_databases,
        ),
    )
}
DOCKER_RUN_REPEAT = 15


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    names = ", ".join(f"{b.name} ({b.help})" for b in BENCHMARKS.values())
    parser.add_argument(
        "--only", action="append", metavar="NAME", help=f"run only these (repeatable): {names}"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="samples per series instead of each benchmark's default "
        "(memory 10, create 30, execute 200, pandas 100 and docker run 15, burst 3, starts 15, "
        "databases 10)",
    )
    parser.add_argument(
        "--sandbox", action="append", choices=SANDBOXES, help="only this sandbox (repeatable)"
    )
    parser.add_argument("--json", metavar="PATH", help="write every figure and sample here")
    args = parser.parse_args(argv)
    only = [n for item in args.only or [] for n in item.split(",") if n]
    unknown = [n for n in only if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    args.only = only or list(BENCHMARKS)
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def docker_ready(image: str) -> str | None:
    """None when an engine answers and has the kernel image, else why not."""
    try:
        import docker

        docker.from_env(version="auto", timeout=10).images.get(image)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def load() -> float:
    return round(os.getloadavg()[0], 2)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "",
    )
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _with_speedups(figures: list[Figure], baseline: Figure) -> list[Figure]:
    return [baseline, *latency.speedups(figures, baseline)]


def _once(
    title: str, name: str, measure: Callable[[], list[Figure]], figures: list[Figure]
) -> dict[str, Any]:
    """A benchmark that runs once per run, outside any server; its log entry."""
    print(f"{title} ...", end=" ", flush=True)
    started, load_before = time.monotonic(), load()
    figures += measure()
    run = {
        "benchmark": name,
        "sandbox": "-",
        "seconds": round(time.monotonic() - started, 1),
        "load_before": load_before,
        "load_after": load(),
    }
    print(f"{run['seconds']} s, load {load_before} -> {run['load_after']}")
    return run


def run_all(args: argparse.Namespace, workdir: Path) -> tuple[list[Figure], list[dict[str, Any]]]:
    """Every selected benchmark in every available sandbox; figures and a log of the runs."""
    figures: list[Figure] = []
    runs: list[dict[str, Any]] = []
    for sandbox in args.sandbox:
        for name in args.only:
            benchmark = BENCHMARKS[name]
            n = args.repeat or benchmark.repeat
            print(f"{name} [{sandbox}] n={n} ...", end=" ", flush=True)
            started, load_before = time.monotonic(), load()
            if benchmark.alone is not None:
                figures += benchmark.alone(sandbox, workdir, n)
            else:
                assert benchmark.run is not None
                with BenchServer(sandbox, benchmark.pools, workdir, name) as server:
                    try:
                        figures += benchmark.run(server, n)
                    except BaseException:
                        print(f"\nlast lines of the server's log:\n{server.log_tail()}")
                        raise
            run = {
                "benchmark": name,
                "sandbox": sandbox,
                "seconds": round(time.monotonic() - started, 1),
                "load_before": load_before,
                "load_after": load(),
            }
            runs.append(run)
            print(f"{run['seconds']} s, load {load_before} -> {run['load_after']}")
    if "pandas" in args.only:
        n = args.repeat or DOCKER_RUN_REPEAT
        runs.append(
            _once(
                f"pandas [docker run per request] n={n}",
                "pandas (docker run)",
                lambda: _with_speedups(figures, latency.bench_docker_run(DOCKER_IMAGE, n)),
                figures,
            )
        )
    if "cache" in args.only:
        n = args.repeat or BENCHMARKS["cache"].repeat
        runs.append(
            _once(
                f"cache [in-process spill vs write_table] n={n}",
                "cache (in-process spill)",
                lambda: cache.bench_spill(n, workdir),
                figures,
            )
        )
    return figures, runs


def fmt(value: float, unit: str) -> str:
    digits = {"ms": 1, "s": 2, "MiB": 1}.get(unit, 2)
    return f"{value:,.{digits}f} {unit}"


def table(figures: list[Figure]) -> str:
    """The figures as a Markdown table (pastes into bench/README.md as it is)."""
    lines = [
        "| benchmark | sandbox | what | median | p90 | n | target (median) | result |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for f in figures:
        target = f"{f.target.op} {fmt(f.target.value, f.unit)}" if f.target else "report"
        result = {True: "pass", False: "**FAIL**", None: ""}[f.passed]
        p90 = fmt(f.p90, f.unit) if len(f.samples) > 1 else ""
        lines.append(
            f"| {f.benchmark} | {f.sandbox} | {f.what} | {fmt(f.median, f.unit)} | {p90} "
            f"| {len(f.samples)} | {target} | {result} |"
        )
    return "\n".join(lines)


def burst_details(figures: list[Figure]) -> str:
    """Each burst's create latencies, in the order the creates were answered."""
    lines = []
    for f in figures:
        for i, run in enumerate(f.details.get("bursts", []), 1):
            latencies = ", ".join(f"{x:,.0f}" for x in run["latencies_ms"])
            lines.append(
                f"burst {i} [{f.sandbox}]: creates answered after {latencies} ms; "
                f"all have kernels {run['all_have_kernels_ms'] / 1000:.2f} s, idle back at "
                f"min_idle {run['idle_back_ms'] / 1000:.2f} s, "
                f"{run['kernels_started']} kernels started"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("run as root: the bubblewrap sandbox needs a root server", file=sys.stderr)
        return 2
    args.sandbox = args.sandbox or list(SANDBOXES)
    docker_problem = docker_ready(DOCKER_IMAGE)
    needs_docker = "docker" in args.sandbox or {"pandas", "cache"} & set(args.only)
    if docker_problem and needs_docker:
        print(
            f"no Docker engine with {DOCKER_IMAGE} ({docker_problem}); run "
            "scripts/docker-engine and `dataexec build-image`, or pass --sandbox bubblewrap "
            "and leave out pandas and cache",
            file=sys.stderr,
        )
        return 2
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    info = machine()
    print(f"machine: {info}")
    with tempfile.TemporaryDirectory(prefix="dataexec-bench-") as workdir:
        figures, runs = run_all(args, Path(workdir))
    info["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(table(figures))
    details = burst_details(figures)
    if details:
        print()
        print(details)
    print(f"\nload (1, 5, 15 min): at start {info['load_at_start']}, at end {info['load_at_end']}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "started": started,
                    "machine": info,
                    "runs": runs,
                    "figures": [f.as_json() for f in figures],
                },
                indent=2,
            )
        )
        print(f"results written to {args.json}")
    return 1 if any(f.passed is False for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
