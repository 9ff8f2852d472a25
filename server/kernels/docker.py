"""The Docker sandbox: one locked-down container per kernel, driven with docker-py.

Each kernel runs in its own container of the kernel image (Dockerfile.kernel): network
mode ``none``, read-only root file system, a size-capped tmpfs on /tmp and /dev/shm capped
alike, every capability dropped, no-new-privileges, the engine's default seccomp profile
and on top of it DataExec's own filter (``seccomp.py``, installed inside the container
before the kernel starts, so the same calls are refused as under bubblewrap, and under
gVisor too, which does not apply the engine's profile), pids/memory/cpu limits, and tini as
PID 1. The kernel's directory is bind-mounted in (``srv`` read-only, ``rw`` writable, where
the ZMQ ipc sockets live) next to the dataexec_kernel package; nothing else of the host is
visible, and the kernel's environment is only ``LaunchSpec.kernel_env``.

A pool's ``docker_runtime`` picks the OCI runtime of its containers: the engine's default
(runc), or ``runsc`` (gVisor), which the engine must know (``scripts/docker-engine``
registers it); ``check`` refuses to start otherwise.

docker-py is blocking, so every call runs on this sandbox's thread pool and is awaited;
docker-py and requests exceptions are translated into our errors in one place,
``engine.map_docker_errors``. Containers carry labels (kernel id, pool, runtime dir), which is how
``reap_orphans`` finds the kernels an earlier run of a server with the same runtime dir
left behind.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.types import LogConfig
from docker.utils import version_lt

from server.config import Settings
from server.errors import SandboxUnavailable
from server.kernels import seccomp
from server.kernels.engine import docker_client, map_docker_errors
from server.kernels.sandbox import (
    LIB_MOUNT,
    RW_MOUNT,
    SRV_MOUNT,
    LaunchSpec,
    Sandbox,
    SandboxedKernel,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

KERNEL_PYTHON = "/opt/venv/bin/python"
LABEL_KERNEL = "dataexec.kernel"
LABEL_POOL = "dataexec.pool"
LABEL_RUNTIME_DIR = "dataexec.runtime_dir"
# A short CFS period: with the default 100 ms period a 0.5 cpu quota stalls a cell for up to
# 50 ms each period, which shows as latency on interactive cells, not only as a cap.
CPU_PERIOD_US = 10_000
CPU_QUOTA_MIN_US = 1_000  # the smallest quota the engine accepts
# A removed container's exit status, as the engine reports one killed with SIGKILL.
KILLED_EXIT_CODE = 137
# Output written straight to the kernel's fd 1/2 (C libraries, subprocesses) lands in the
# container log on the host's disk; cap it so a kernel cannot fill that disk.
LOG_CONFIG = LogConfig(type=LogConfig.types.JSON, config={"max-size": "1m", "max-file": "1"})
CONTAINER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")
SECCOMP_FILE = "seccomp.bpf"  # in the kernel dir's srv part
ENGINE_TIMEOUT_S = 60
PROBE_TIMEOUT_S = 5
WORKERS = 8


def cpu_period_and_quota(cpus: float) -> tuple[int, int]:
    """The CFS period and quota (µs) for a cpu limit: the short period unless the quota would
    fall below the engine's minimum, then a period just long enough to keep the ratio."""
    period = CPU_PERIOD_US
    if cpus * period < CPU_QUOTA_MIN_US:
        period = math.ceil(CPU_QUOTA_MIN_US / cpus)
    return period, max(CPU_QUOTA_MIN_US, round(period * cpus))


def _is_gone(exc: docker.errors.APIError) -> bool:
    """404 (no such container) or 409 (removal already under way): the container is going."""
    return exc.status_code in (404, 409)


class DockerKernel(SandboxedKernel):
    """One kernel container; its methods are called by the pool and the session."""

    def __init__(self, sandbox: DockerSandbox, kernel_id: str, container_id: str) -> None:
        self.kernel_id = kernel_id
        self.container_id = container_id
        self._sandbox = sandbox
        self._removed = False
        # The last state seen, kept because a removed container can no longer be asked.
        self._exit_code: int | None = None
        self._oom_killed = False

    def __repr__(self) -> str:
        return f"<DockerKernel {self.kernel_id} container={self.container_id[:12]}>"

    def _inspect_state(self, api: docker.APIClient) -> dict[str, Any] | None:
        """The container's State, remembered; None once it is gone."""
        try:
            state: dict[str, Any] = api.inspect_container(self.container_id)["State"]
        except docker.errors.NotFound:
            return None
        self._oom_killed = bool(state.get("OOMKilled"))
        if state.get("Status") in ("exited", "dead"):
            self._exit_code = int(state.get("ExitCode", KILLED_EXIT_CODE))
        return state

    async def poll(self) -> int | None:
        """None while the container runs, its exit code once it stopped or was removed."""
        if self._removed:
            return self._exit_code if self._exit_code is not None else KILLED_EXIT_CODE
        state = await self._sandbox.call("inspect a kernel container", self._inspect_state)
        if state is None:
            return self._exit_code if self._exit_code is not None else KILLED_EXIT_CODE
        return self._exit_code

    async def kill(self) -> None:
        """Remove the container with force (its processes die with it). Idempotent."""
        if self._removed:
            return

        def remove(api: docker.APIClient) -> None:
            # Ask once more first: after removal nobody can tell why the kernel died.
            if self._inspect_state(api) is not None:
                try:
                    api.remove_container(self.container_id, force=True, v=True)
                except docker.errors.APIError as exc:
                    if not _is_gone(exc):
                        raise

        await self._sandbox.call("remove a kernel container", remove)
        self._removed = True

    async def oom_killed(self) -> bool:
        """Whether the engine saw the container's memory cgroup kill a process."""
        if not self._removed:
            await self._sandbox.call("inspect a kernel container", self._inspect_state)
        return self._oom_killed

    async def memory_bytes(self) -> int | None:
        """The container's cgroup memory usage (page cache included), or None when unknown."""
        if self._removed:
            return None

        def stats(api: docker.APIClient) -> int | None:
            try:
                # one_shot: without it the engine waits a second for a second cpu sample;
                # engines before API 1.41 do not know it.
                one_shot = None if version_lt(api.api_version, "1.41") else True
                data = api.stats(self.container_id, stream=False, one_shot=one_shot)
            except docker.errors.NotFound:
                return None
            usage = (data.get("memory_stats") or {}).get("usage")
            return int(usage) if usage is not None else None

        return await self._sandbox.call("read a kernel container's memory use", stats)


class DockerSandbox(Sandbox):
    """Starts kernels as containers of the kernel image on a Docker engine."""

    name = "docker"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.image = settings.docker_image
        self._executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="docker")
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()

    @classmethod
    def available(cls, settings: Settings) -> bool:
        """Whether an engine answers, has the kernel image and knows every runtime the pools
        name (what ``sandbox = "auto"`` asks).

        Blocking, with a short timeout: called once at start, before the event loop serves.
        """
        try:
            client = docker_client(settings, PROBE_TIMEOUT_S)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return False
        try:
            client.api.inspect_image(settings.docker_image)
            return not missing_runtimes(settings, client.api)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return False
        finally:
            client.close()

    def _api(self) -> docker.APIClient:
        """The low-level client, made on first use (making it talks to the engine)."""
        with self._client_lock:
            if self._client is None:
                self._client = docker_client(self.settings, ENGINE_TIMEOUT_S)
            return self._client.api

    async def call(self, action: str, fn: Callable[[docker.APIClient], T]) -> T:
        """Run ``fn(api)`` on the sandbox's threads, its errors translated as doing ``action``."""

        def run() -> T:
            with map_docker_errors(action, self.image):
                return fn(self._api())

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def check(self) -> None:
        """Raise SandboxUnavailable unless the engine answers, has the kernel image and knows
        every runtime the pools name; and unless this machine has a seccomp table."""
        self.seccomp_filter  # noqa: B018 - raises here, at start, on an unknown arch

        def probe(api: docker.APIClient) -> dict[str, str]:
            api.ping()
            api.inspect_image(self.image)
            return missing_runtimes(self.settings, api)

        missing = await self.call("look up the kernel image", probe)
        if missing:
            named = ", ".join(
                f"pools.{pool}.docker_runtime = {rt!r}" for pool, rt in missing.items()
            )
            raise SandboxUnavailable(
                f"the Docker engine does not know the runtime of {named}: register it "
                "(scripts/docker-engine does for runsc, see docs/security.md) or change it"
            )

    @functools.cached_property
    def seccomp_filter(self) -> bytes:
        """The BPF program installed in every kernel container (SandboxUnavailable on an
        unknown arch)."""
        return seccomp.program()

    def runtime_of(self, pool: str) -> str:
        """The OCI runtime of ``pool``'s containers; "" for the engine's default."""
        settings = self.settings.pools.get(pool)
        return settings.docker_runtime if settings is not None else ""

    def _create_args(self, spec: LaunchSpec) -> dict[str, Any]:
        settings, limits = self.settings, spec.limits
        uid = settings.kernel_uid
        period, quota = cpu_period_and_quota(limits.cpus)
        api = self._api()
        host_config = api.create_host_config(
            binds={
                str(spec.kernel_dir / "srv"): {"bind": SRV_MOUNT, "mode": "ro"},
                str(spec.kernel_dir / "rw"): {"bind": RW_MOUNT, "mode": "rw"},
                str(spec.lib_dir): {"bind": LIB_MOUNT, "mode": "ro"},
            },
            tmpfs={"/tmp": f"size={limits.tmp_bytes},mode=1777,nosuid,nodev"},
            shm_size=limits.tmp_bytes,
            network_mode="none",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=limits.pids,
            mem_limit=limits.memory_bytes,
            memswap_limit=limits.memory_bytes,
            cpu_period=period,
            cpu_quota=quota,
            runtime=self.runtime_of(spec.pool) or None,
            init=True,
            auto_remove=False,
            log_config=LOG_CONFIG,
        )
        name = f"dataexec-{spec.kernel_id}"
        return dict(
            image=self.image,
            command=seccomp.loader_argv(
                KERNEL_PYTHON, f"{SRV_MOUNT}/{SECCOMP_FILE}", spec.kernel_argv(KERNEL_PYTHON)
            ),
            user=f"{uid}:{uid}",
            environment=spec.kernel_env(),
            working_dir="/tmp",
            labels={
                LABEL_KERNEL: spec.kernel_id,
                LABEL_POOL: spec.pool,
                LABEL_RUNTIME_DIR: str(settings.runtime_dir),
            },
            name=name if CONTAINER_NAME.match(name) else None,
            host_config=host_config,
        )

    async def launch(self, spec: LaunchSpec) -> DockerKernel:
        """Create and start the kernel's container; return once it runs."""

        def start(api: docker.APIClient) -> str:
            filter_file = spec.kernel_dir / "srv" / SECCOMP_FILE
            filter_file.write_bytes(self.seccomp_filter)
            filter_file.chmod(0o644)
            container_id: str = api.create_container(**self._create_args(spec))["Id"]
            try:
                api.start(container_id)
            except BaseException:
                # A container that never ran is no orphan worth keeping for the next start.
                with suppress_gone():
                    api.remove_container(container_id, force=True)
                raise
            return container_id

        container_id = await self.call(f"start a kernel container from {self.image}", start)
        log.debug("kernel %s started in container %s", spec.kernel_id, container_id[:12])
        return DockerKernel(self, spec.kernel_id, container_id)

    async def reap_orphans(self) -> int:
        """Remove every container labelled with this server's runtime dir; return how many."""
        label = f"{LABEL_RUNTIME_DIR}={self.settings.runtime_dir}"

        def reap(api: docker.APIClient) -> int:
            found = api.containers(all=True, filters={"label": label})
            for container in found:
                with suppress_gone():
                    api.remove_container(container["Id"], force=True, v=True)
            return len(found)

        count = await self.call("remove orphaned kernel containers", reap)
        if count:
            log.info("removed %d kernel container(s) an earlier run left behind", count)
        return count

    async def close(self) -> None:
        """Close the engine connection and the thread pool."""
        client, self._client = self._client, None
        if client is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, client.close)
        self._executor.shutdown(wait=False)


def missing_runtimes(settings: Settings, api: docker.APIClient) -> dict[str, str]:
    """The pools whose ``docker_runtime`` the engine does not know, with that runtime."""
    wanted = {name: pool.docker_runtime for name, pool in settings.pools.items()}
    wanted = {name: runtime for name, runtime in wanted.items() if runtime}
    if not wanted:
        return {}
    known = set(api.info().get("Runtimes") or {})
    return {name: runtime for name, runtime in wanted.items() if runtime not in known}


@contextmanager
def suppress_gone() -> Iterator[None]:
    """Ignore 404/409 from a removal: the container is gone or going, which is what we want."""
    try:
        yield
    except docker.errors.APIError as exc:
        if not _is_gone(exc):
            raise
