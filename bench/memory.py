"""Memory of one idle warm kernel, read from its cgroup, in either sandbox.

The server runs one pool that keeps one warm kernel. A few seconds after it is ready the
benchmark reads that kernel's memory cgroup several times; then a session takes it, the pool
starts the next kernel, and the benchmark reads that one (idle, warm) the same way.

Why two: page cache is charged to the cgroup that first reads a page. The first kernel to
read the kernel environment's libraries (pandas, pyarrow, numpy; for Docker, the image's
layers) after they were written or evicted is charged for those pages, although every
later kernel shares them; a rebuilt image or environment makes that first charge large. The
next kernel, started while the first still holds those pages, shows what each further
kernel costs; the target applies to its usage. The first kernel's figure is reported beside
it: it swings with the state of the page cache (from about 80 to over 250 MiB here), while
its anonymous memory is the same as the next kernel's.

- ``usage``: the cgroup's own counter (v1 ``memory.usage_in_bytes``, v2 ``memory.current``);
  for Docker also the engine's stats API (``memory_stats.usage``, the same counter).
- ``rss + cache``: the page counts of ``memory.stat`` (v1 ``rss + cache``, v2
  ``anon + file``): user memory only.
- ``kernel memory``: what the kernel allocated on the cgroup's behalf (v1
  ``memory.kmem.usage_in_bytes``, v2 ``kernel`` in ``memory.stat``): slab objects (dentries,
  inodes, sockets), page tables, kernel stacks. The usage counter charges it, memory.stat's
  page counts do not, which is most of the gap between the two.
- Docker only, ``usage - inactive_file``: what ``docker stats`` shows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness import BenchServer, Figure, Target
from latency import create_session, delete_session

from server.kernels.cgroups import CGROUP_ROOT, cgroup_version
from server.kernels.docker import LABEL_KERNEL, LABEL_RUNTIME_DIR

POOLS = """
[pools.default]
min_idle = 1
max_kernels = 2
"""
MiB = 1024 * 1024
SETTLE_S = 3.0
READS = 10
READ_INTERVAL_S = 0.2
MEMORY_TARGET = Target("<=", 150.0)
STAT_KEYS = (
    "rss",
    "cache",
    "shmem",
    "mapped_file",
    "anon",
    "file",
    "kernel",
    "kernel_stack",
    "pagetables",
    "slab",
    "sock",
    "active_anon",
    "inactive_anon",
    "active_file",
    "inactive_file",
)


def read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def memory_stat(directory: Path) -> dict[str, int]:
    stat = {}
    for line in (directory / "memory.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        stat[key] = int(value)
    return stat


def read_cgroup(directory: Path) -> dict[str, Any]:
    """Usage, user pages and kernel memory of one memory cgroup (v1 or v2), in bytes."""
    stat = memory_stat(directory)
    if (directory / "memory.current").exists():  # cgroup v2
        usage = read_int(directory / "memory.current")
        anon, user = stat["anon"], stat["anon"] + stat["file"]
        kernel = stat.get("kernel", 0)
    else:
        usage = read_int(directory / "memory.usage_in_bytes")
        anon, user = stat["rss"], stat["rss"] + stat["cache"]
        kmem = directory / "memory.kmem.usage_in_bytes"
        kernel = read_int(kmem) if kmem.exists() else usage - user
    return {
        "usage": usage,
        "rss_cache": user,
        "rss": anon,
        "kernel": kernel,
        "stat": {k: stat[k] for k in STAT_KEYS if k in stat},
    }


def memory_cgroup_of(pid: int) -> Path:
    """The memory cgroup directory a process belongs to (v1 or v2)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if cgroup_version() == 2 and controllers == "":
            return CGROUP_ROOT / path.lstrip("/")
        if "memory" in controllers.split(","):
            return CGROUP_ROOT / "memory" / path.lstrip("/")
    raise RuntimeError(f"process {pid} has no memory cgroup")


def bubblewrap_cgroup(server: BenchServer, kernel_dir: Path) -> Path:
    """The kernel's own cgroup: named by its kernel id, under the server's cgroup parent."""
    base = CGROUP_ROOT / server.cgroup_parent
    if cgroup_version() == 1:
        base = CGROUP_ROOT / "memory" / server.cgroup_parent
    [directory] = [d for d in base.iterdir() if d.is_dir() and d.name.startswith(kernel_dir.name)]
    return directory


def docker_container(api: Any, server: BenchServer, kernel_dir: Path) -> tuple[str, Path]:
    """The kernel's container (labelled with its kernel id) and that container's cgroup."""
    containers = api.containers(filters={"label": f"{LABEL_RUNTIME_DIR}={server.runtime_dir}"})
    [container] = [
        c for c in containers if c["Labels"].get(LABEL_KERNEL, "").startswith(kernel_dir.name)
    ]
    pid = api.inspect_container(container["Id"])["State"]["Pid"]
    return container["Id"], memory_cgroup_of(pid)


def docker_stats(api: Any, container_id: str) -> dict[str, int]:
    """The engine's memory stats, and the figure `docker stats` derives from them."""
    memory = api.stats(container_id, stream=False, one_shot=True)["memory_stats"]
    usage, stats = int(memory["usage"]), memory.get("stats", {})
    # As the docker CLI computes MEM USAGE: cgroup v1 total_inactive_file, v2 inactive_file.
    inactive = stats.get("total_inactive_file", stats.get("inactive_file", 0))
    return {"usage": usage, "docker_stats": usage - inactive if inactive < usage else usage}


def read_kernel(server: BenchServer, kernel_dir: Path, reads: int) -> list[dict[str, Any]]:
    """``reads`` readings of one kernel's memory cgroup (and, for Docker, the engine's stats)."""
    api: Any = None
    container_id = ""
    if server.sandbox == "docker":
        import docker

        api = docker.from_env(version="auto").api
        container_id, cgroup = docker_container(api, server, kernel_dir)
    else:
        cgroup = bubblewrap_cgroup(server, kernel_dir)
    rows = []
    for _ in range(reads):
        row = {"cgroup": str(cgroup), **read_cgroup(cgroup)}
        if api is not None:
            row.update({f"engine_{k}": v for k, v in docker_stats(api, container_id).items()})
        rows.append(row)
        time.sleep(READ_INTERVAL_S)
    return rows


def bench_memory(server: BenchServer, reads: int = READS) -> list[Figure]:
    """Read the server's first warm kernel, then the next one while the first still lives."""
    with server.client() as client:
        server.wait_quiet(client, settle_s=SETTLE_S)
        [first_dir] = server.kernel_dirs()
        first = read_kernel(server, first_dir, reads)
        _, session_id = create_session(client, "default")  # takes the first; the pool refills
        server.wait_quiet(client, settle_s=SETTLE_S)
        [next_dir] = [d for d in server.kernel_dirs() if d != first_dir]
        following = read_kernel(server, next_dir, reads)
        delete_session(client, session_id)

    docker = server.sandbox == "docker"
    usage_name = "container stats usage" if docker else "cgroup usage"
    if not docker and cgroup_version() == 1:
        usage_name = "memory.usage_in_bytes"
    series = [
        (usage_name, "engine_usage" if docker else "usage"),
        ("rss + cache (memory.stat)", "rss_cache"),
        ("rss alone (anonymous pages)", "rss"),
        ("kernel memory (kmem)", "kernel"),
    ]
    if docker:
        series.append(("usage - inactive_file (docker stats)", "engine_docker_stats"))
    figures = []
    for kernel, readings in (
        ("first kernel of the server", first),
        ("next idle kernel", following),
    ):
        for i, (what, key) in enumerate(series):
            figures.append(
                Figure(
                    "memory",
                    f"{kernel}: {what}",
                    server.sandbox,
                    "MiB",
                    [row[key] / MiB for row in readings],
                    MEMORY_TARGET if i == 0 and readings is following else None,
                    {"first_read": readings[0]} if i == 0 else {},
                )
            )
    return figures
