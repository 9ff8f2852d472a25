"""The arena of the adversarial suite: a server with an attacker and a victim tenant.

``open_arena`` starts ``dataexec serve`` as an operator would (its own process, so that its
memory is its own), with the attacker in a small pool of its own and both tenants sharing
``default``. The victim keeps a session with a frame in its kernel and a cache key;
``Arena.pinging`` runs the victim's ``1+1`` steps back to back while an attack runs, and
``Arena.nothing_lost`` checks after each case that the server is healthy and within its
memory bound, the victim's session, frame, key and steps are intact, and the database's
rows are unchanged. ``Arena.leftovers`` lists what a stopped server left on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from dataexec_testing.serve import ServeProcess, kernel_leftovers, serve_env, start_serve
from dataexec_testing.servers import leftover_pids

ATTACKER = "attacker-token-" + secrets.token_hex(8)
VICTIM = "victim-token-" + secrets.token_hex(8)
FLOODER = "flooder-token-" + secrets.token_hex(8)
OPERATOR = "operator-token-" + secrets.token_hex(8)
TOKENS = {"attacker": ATTACKER, "victim": VICTIM, "flooder": FLOODER, "operator": OPERATOR}

POOLS = ("default", "hostile", "victim", "flood")  # the pools CONFIG declares

# The server's resident memory may not pass this during any attack (it idles near 300 MiB).
MEMORY_BOUND = 1536 * 2**20
# The victim's pinger: ``1+1`` steps back to back until its stdin closes (and at least
# MIN_PINGS of them), one line "<ms> <status>" each.
PINGER = """
import sys, threading, time, httpx
url, token, path, least = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
done = 0
auth = {"Authorization": "Bearer " + token}
with httpx.Client(base_url=url, headers=auth, timeout=120, verify=False) as victim:
    while not stop.is_set() or done < least:
        started = time.perf_counter()
        status = victim.post(path, json={"code": "1 + 1"}).status_code
        print(f"{(time.perf_counter() - started) * 1000:.3f} {status}", flush=True)
        done += 1
"""
# The fewest victim steps a case is measured by: of 20 the p95 is the slowest, one stall.
# Sized in time as much as in steps: 40 steps of about 9 ms each were a window that a
# stall of the machine as long as two steps rarely moved the p95 of; at 4-6 ms a step the
# same window is 80 (with 40, cases passed or failed by the luck of such stalls).
MIN_PINGS = 80

CONFIG = f"""
operator_token = "{OPERATOR}"
capacity_wait_s = 2.0
interrupt_grace_s = 1.0
output_limit_bytes = 2097152
session_queue_size = 4

[pools.default]
min_idle = 1
max_kernels = 4

[pools.hostile]
min_idle = 2
max_kernels = 4
cpus = 0.5
memory_mb = 512
pids = 128
timeout_s = 6
tmp_mb = 64

[pools.victim]
min_idle = 0
max_kernels = 1

[tenants.attacker]
tokens = ["{ATTACKER}"]
pools = ["hostile", "default"]
default_pool = "hostile"
max_concurrent_executions = 8

[tenants.victim]
tokens = ["{VICTIM}"]
pools = ["default", "victim"]

[pools.flood]
min_idle = 0
max_kernels = 1

[tenants.flooder]
tokens = ["{FLOODER}"]
pools = ["flood"]
default_pool = "flood"
requests_per_minute = 60
"""

VICTIM_FRAME = "victim_df = pd.DataFrame({'x': range(1000)}); victim_df"
VICTIM_SUM = sum(range(1000))
CHECKSUM = """
SELECT (SELECT count(*) FROM flights) AS flights,
       (SELECT string_agg(carrier || name, ',' ORDER BY carrier) FROM airlines) AS airlines,
       (SELECT string_agg(table_name, ',' ORDER BY table_name)
          FROM information_schema.tables WHERE table_schema = 'public') AS tables
"""


@dataclass
class Pings:
    """The victim's steps during an attack: statuses and latencies (ms)."""

    statuses: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)


@dataclass
class Arena:
    serve: ServeProcess
    sandbox: str
    admin: sa.Engine
    victim_session: str = ""
    victim_key: str = ""
    checksum: tuple[Any, ...] = ()
    peak_rss: int = 0

    def client(self, who: str = "attacker", timeout: float = 60.0) -> httpx.AsyncClient:
        # verify=False: the arena speaks plain HTTP, and httpx loads the CA bundle for every
        # client otherwise (~40 ms of this process's event loop each, in a flood of them).
        return httpx.AsyncClient(
            base_url=self.serve.url, headers=self.auth_headers(who), timeout=timeout, verify=False
        )

    def auth_headers(self, who: str) -> dict[str, str]:
        if who in TOKENS:
            return {"Authorization": f"Bearer {TOKENS[who]}"}
        return {} if who == "none" else {"Authorization": who}

    @property
    def port(self) -> int:
        return int(self.serve.url.rsplit(":", 1)[1])

    def rss(self) -> int:
        status = Path(f"/proc/{self.serve.process.pid}/status").read_text()
        rss = int(status.split("VmRSS:")[1].split()[0]) * 1024
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def placeholders(self) -> dict[str, Any]:
        return {
            "victim_key": self.victim_key,
            "victim_session": self.victim_session,
            "server_port": self.port,
            "state_dir": self.serve.env["DATAEXEC_STATE_DIR"],
            "attacker_token": ATTACKER,
        }

    def database_checksum(self) -> tuple[Any, ...]:
        with self.admin.connect() as connection:
            return tuple(connection.execute(sa.text(CHECKSUM)).one())

    async def prepare_victim(self) -> None:
        self.victim_session = "victim-" + secrets.token_hex(4)
        async with self.client("victim") as victim:
            answer = await victim.post(
                f"/sessions/{self.victim_session}/execute", json={"code": VICTIM_FRAME}
            )
            assert answer.status_code == 200, answer.text
            self.victim_key = answer.json()["cache_key"]
        self.checksum = await asyncio.to_thread(self.database_checksum)

    @contextlib.asynccontextmanager
    async def pinging(self) -> AsyncIterator[Pings]:
        """The victim's ``1+1`` steps, back to back, for as long as the block runs.

        From a process of its own, so that the attack's client work in this process
        (building and sending a 17 MB body, reading answers: the GIL) is not counted as the
        victim's latency; for at least ``MIN_PINGS`` steps, so that a short attack still
        gives a p95. The server's memory is sampled beside it.
        """
        pings = Pings()
        victim = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PINGER, self.serve.url, TOKENS["victim"],
            f"/sessions/{self.victim_session}/execute", str(MIN_PINGS),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert victim.stdin is not None and victim.stdout is not None
        stdout = victim.stdout

        async def read() -> None:
            while line := await stdout.readline():
                ms, status = line.split()
                pings.latencies_ms.append(float(ms))
                pings.statuses.append(int(status))

        async def sample_memory() -> None:
            while True:
                self.rss()
                await asyncio.sleep(0.02)

        reader, sampler = asyncio.ensure_future(read()), asyncio.ensure_future(sample_memory())
        try:
            yield pings
        finally:
            victim.stdin.close()  # the pinger's signal to stop (after MIN_PINGS steps)
            await asyncio.wait_for(reader, 180)
            await victim.wait()
            sampler.cancel()

    async def nothing_lost(self, pings: Pings) -> None:
        """After a case: healthy, within memory, the victim whole, the database unchanged."""
        assert pings.statuses and set(pings.statuses) == {200}, pings.statuses
        assert self.rss() < MEMORY_BOUND, f"server RSS {self.rss() >> 20} MiB"
        async with self.client("operator") as operator:
            health = await operator.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "ok", health.text
        async with self.client("victim") as victim:
            answer = await victim.post(
                f"/sessions/{self.victim_session}/execute",
                json={"code": "int(victim_df['x'].sum())"},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["data"]["rows"][0][0] == VICTIM_SUM
            assert answer.json()["kernel_replaced"] is False
            meta = await victim.get(f"/cache/{self.victim_key}/meta")
            assert meta.status_code == 200, meta.text
        assert await asyncio.to_thread(self.database_checksum) == self.checksum

    def leftovers(self) -> list[str]:
        """Processes, kernel dirs, cgroups and containers a stopped server left behind."""
        runtime_dir = Path(self.serve.env["DATAEXEC_RUNTIME_DIR"])
        found = [f"pid {pid}" for pid in leftover_pids(runtime_dir)]
        found += kernel_leftovers(self.serve.env)
        if self.sandbox.startswith("docker"):
            import docker

            engine = docker.from_env(version="auto")
            label = {"label": f"dataexec.runtime_dir={runtime_dir}"}
            found += [c.name for c in engine.containers.list(all=True, filters=label)]
        return found


def sandbox_env(sandbox: str) -> dict[str, str]:
    """The environment that picks ``sandbox`` ("docker-runsc": the docker sandbox with
    gVisor's runtime in every pool)."""
    name, _, runtime = sandbox.partition("-")
    env = {"DATAEXEC_SANDBOX": name}
    if runtime:
        for pool in POOLS:
            env[f"DATAEXEC_POOLS__{pool.upper()}__DOCKER_RUNTIME"] = runtime
    return env


@contextlib.asynccontextmanager
async def open_arena(
    tmp_path: Path, sandbox: str, database_url: str, admin: sa.Engine
) -> AsyncIterator[Arena]:
    config = tmp_path / "arena.toml"
    config.write_text(CONFIG)
    env = serve_env(tmp_path)
    env.pop("DATAEXEC_POOLS__DEFAULT__MIN_IDLE")
    env.update(DATAEXEC_CONFIG=str(config), DATAEXEC_DATABASE_URL=database_url)
    env.update(sandbox_env(sandbox))
    arena = Arena(await start_serve(env), sandbox, admin)
    try:
        await arena.prepare_victim()
        yield arena
    finally:
        await arena.serve.stop()
