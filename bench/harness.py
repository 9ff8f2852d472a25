"""What every benchmark shares: a real `dataexec serve` process, figures and their statistics.

``BenchServer`` runs the server as an operator does (``python -m server serve --config``) in
a process of its own, with its own state dir, runtime dir and cgroup parent, on 127.0.0.1
and a free port; it parses the printed URL, and SIGTERMs the server at the end. Benchmarks
talk to it over HTTP only, and look at the host (kernel dirs, cgroups, containers) to know
when the pools are quiet and to read memory.

A ``Figure`` is one measured quantity: its samples, median and p90, and a target that the
median is compared with.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from server.kernels.cgroups import CGROUP_ROOT, V1_CONTROLLERS, cgroup_version

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
QUIET_TIMEOUT_S = 180.0
POLL_S = 0.02
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class Target:
    """A bound on a figure's median: ``<= value`` or ``>= value``."""

    op: str
    value: float

    def met(self, measured: float) -> bool:
        return measured <= self.value if self.op == "<=" else measured >= self.value


@dataclass
class Figure:
    """One measured quantity (in ``unit``) of one benchmark in one sandbox."""

    benchmark: str
    what: str
    sandbox: str
    unit: str
    samples: list[float]
    target: Target | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        if len(self.samples) < 2:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=10, method="inclusive")[8]

    @property
    def passed(self) -> bool | None:
        """Whether the median meets the target; None when the figure is report-only."""
        return None if self.target is None else self.target.met(self.median)

    def as_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "what": self.what,
            "sandbox": self.sandbox,
            "unit": self.unit,
            "n": len(self.samples),
            "median": self.median,
            "p90": self.p90,
            "min": min(self.samples),
            "max": max(self.samples),
            "target": None
            if self.target is None
            else {"op": self.target.op, "value": self.target.value, "applies_to": "median"},
            "passed": self.passed,
            "samples": self.samples,
            "details": self.details,
        }


def ms_since(start: float) -> float:
    """Milliseconds of wall time since ``start`` (a ``time.perf_counter()`` value)."""
    return (time.perf_counter() - start) * 1000


def cpu_times() -> tuple[int, int]:
    """The machine's (busy, total) cpu time so far, in clock ticks (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = QUIET_TIMEOUT_S) -> None:
    """Poll ``predicate`` until it holds; raise TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_S)


class BenchServer:
    """A `dataexec serve` process in one sandbox with the given pools; see the module doc."""

    def __init__(self, sandbox: str, pools_toml: str, workdir: Path, label: str) -> None:
        self.sandbox = sandbox
        tag = secrets.token_hex(3)
        self.root = Path(tempfile.mkdtemp(prefix=f"{label}-{sandbox}-", dir=workdir))
        self.config_file = self.root / "dataexec.toml"
        self.config_file.write_text(pools_toml)
        self.log_file = self.root / "server.log"
        self.runtime_dir = Path(f"/run/dxb-{tag}")
        self.cgroup_parent = f"dataexec-bench-{tag}"
        self.token = "bench-" + secrets.token_hex(16)
        self.operator_token = "bench-operator-" + secrets.token_hex(16)  # for /health
        self.url = ""
        self.process: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._drain: threading.Thread | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATAEXEC_", "AGENT_"))}
        env.update(
            DATAEXEC_STATE_DIR=str(self.root / "state"),
            DATAEXEC_RUNTIME_DIR=str(self.runtime_dir),
            DATAEXEC_CGROUP_PARENT=self.cgroup_parent,
            DATAEXEC_HOST="127.0.0.1",
            DATAEXEC_PORT="0",
            DATAEXEC_TOKEN=self.token,
            DATAEXEC_OPERATOR_TOKEN=self.operator_token,
            DATAEXEC_SANDBOX=self.sandbox,
        )
        for name in ("DATAEXEC_KERNEL_ENV", "DATAEXEC_DOCKER_IMAGE"):
            if name in os.environ:
                env[name] = os.environ[name]
        return env

    def __enter__(self) -> BenchServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and wait until it prints its URL."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--config", str(self.config_file)],
            env=self.env(),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._drain = threading.Thread(target=self._read_output, daemon=True)
        self._drain.start()
        if not self._ready.wait(START_TIMEOUT_S) or not self.url:
            self.stop()
            raise RuntimeError(f"the server did not start:\n{self.log_tail()}")

    def _read_output(self) -> None:
        """Copy the server's output to its log file; note the URL it prints."""
        assert self.process is not None and self.process.stdout is not None
        with self.log_file.open("w") as log:
            for line in self.process.stdout:
                log.write(line)
                log.flush()
                if not self.url and " listening on http://" in line:
                    self.url = line.split(" listening on ")[1].split()[0]
                    self._ready.set()
        self._ready.set()  # the server exited: whoever waits must not wait on

    def log_tail(self) -> str:
        lines = self.log_file.read_text().splitlines() if self.log_file.exists() else []
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def stop(self) -> None:
        """SIGTERM the server, wait for it, and remove what this run made on the host."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"server {self.process.pid} ignored SIGTERM; killing it", file=sys.stderr)
                self.process.kill()
                self.process.wait()
        if self._drain is not None:
            self._drain.join(5)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        self._remove_cgroup_parent()

    def _remove_cgroup_parent(self) -> None:
        version = cgroup_version()
        if version is None:
            return
        controllers = [""] if version == 2 else list(V1_CONTROLLERS)
        for controller in controllers:
            directory = CGROUP_ROOT / controller / self.cgroup_parent
            try:
                directory.rmdir()
            except OSError:
                pass

    # --- talking to it ------------------------------------------------------------------

    def client(self, timeout: float = 120.0) -> httpx.Client:
        """A keep-alive HTTP client with this server's token."""
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=timeout,
        )

    def pools(self, client: httpx.Client) -> dict[str, dict[str, int]]:
        """Live pool counts from ``GET /health`` (the operator's view: a tenant's is minimal)."""
        response = client.get("/health", headers={"Authorization": f"Bearer {self.operator_token}"})
        response.raise_for_status()
        pools: dict[str, dict[str, int]] = response.json()["pools"]
        return pools

    def kernel_dirs(self) -> list[Path]:
        """One directory per kernel that exists on the host (starting, idle, in use, dying)."""
        kernels = self.runtime_dir / "k"
        return sorted(kernels.iterdir()) if kernels.is_dir() else []

    def is_quiet(self, client: httpx.Client) -> bool:
        """Every pool at min_idle with nothing starting, and no kernel still being destroyed."""
        pools = self.pools(client)
        settled = all(
            p["starting"] == 0 and p["waiting"] == 0 and p["idle"] >= p["min_idle"]
            for p in pools.values()
        )
        alive = sum(p["idle"] + p["in_use"] for p in pools.values())
        return settled and len(self.kernel_dirs()) == alive

    def wait_quiet(self, client: httpx.Client, settle_s: float = 0.0) -> None:
        """Wait until ``is_quiet``, then ``settle_s`` more (kernels finish their warm-up work)."""
        wait_until(lambda: self.is_quiet(client), "the pools to refill and dead kernels to go")
        if settle_s:
            time.sleep(settle_s)
