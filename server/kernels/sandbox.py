"""The one small interface every sandbox implements, and what a launch needs.

A ``Sandbox`` starts kernel processes, each confined, from a ``LaunchSpec``: a kernel id,
its kernel directory on the host and its limits. Inside every sandbox the same paths hold:

    /dataexec/srv   the server-owned part of the kernel dir, read-only (connection file)
    /dataexec/rw    the kernel's writable, size-capped part (its ZMQ ipc sockets)
    /dataexec/lib   the dataexec_kernel package, read-only
    /tmp            a size-capped tmpfs

so the kernel command line is the same everywhere. Nothing above ``server/kernels`` knows
which sandbox runs a kernel.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path

from dataexec_kernel import protocol

from server.config import MiB, PoolSettings

SRV_MOUNT = "/dataexec/srv"
RW_MOUNT = "/dataexec/rw"
LIB_MOUNT = "/dataexec/lib"
CONNECTION_FILE = "connection.json"
KERNEL_MODULE = "dataexec_kernel"

# Environment a kernel may see; everything else of the server's environment stays out.
# OPENBLAS_CORETYPE: some CPUs here need it for correct BLAS results.
ENV_ALLOW_LIST = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "LANG", "LC_ALL", "TZ")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one kernel, from its pool's settings."""

    memory_bytes: int
    cpus: float
    pids: int
    tmp_bytes: int
    rw_bytes: int

    @classmethod
    def of_pool(cls, pool: PoolSettings) -> Limits:
        return cls(
            memory_bytes=pool.memory_mb * MiB,
            cpus=pool.cpus,
            pids=pool.pids,
            tmp_bytes=pool.tmp_mb * MiB,
            rw_bytes=pool.rw_mb * MiB,
        )

    @property
    def threads(self) -> int:
        """Thread-pool size that fits the cpu limit (BLAS, Arrow)."""
        return max(1, round(self.cpus))


@dataclass(frozen=True)
class LaunchSpec:
    """What a sandbox needs to start one kernel."""

    kernel_id: str
    kernel_dir: Path
    lib_dir: Path
    limits: Limits
    pool: str
    env: dict[str, str] = field(default_factory=dict)

    def kernel_argv(self, python: str) -> list[str]:
        """The command that runs inside the sandbox."""
        return [python, "-m", KERNEL_MODULE, *self.kernel_args()]

    def kernel_args(self) -> list[str]:
        """The kernel's own arguments (a forked kernel's ``sys.argv[1:]``)."""
        return ["-f", f"{SRV_MOUNT}/{CONNECTION_FILE}"]

    def kernel_env(self) -> dict[str, str]:
        """The kernel's whole environment: the allow-list plus thread sizing."""
        threads = str(self.limits.threads)
        return {
            **self.env,
            "HOME": "/tmp",
            "PYTHONPATH": LIB_MOUNT,
            "PYTHONDONTWRITEBYTECODE": "1",
            # Non-interactive, and a figure drawn in a cell becomes its image/png output.
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "MPLCONFIGDIR": "/tmp/.matplotlib",
            "FONTCONFIG_FILE": f"{LIB_MOUNT}/{KERNEL_MODULE}/fonts.conf",
            "OMP_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "ARROW_NUM_THREADS": threads,
            "PIP_NO_INDEX": "1",
            protocol.BROKER_ENV: f"{SRV_MOUNT}/{protocol.BROKER_SOCKET}",
        }


class SandboxedKernel(abc.ABC):
    """A running kernel process inside a sandbox."""

    kernel_id: str

    @abc.abstractmethod
    async def poll(self) -> int | None:
        """None while the kernel runs, its exit code once gone. Called by the pool and sessions."""

    @abc.abstractmethod
    async def kill(self) -> None:
        """Stop the kernel and everything it started, and release the sandbox. Idempotent."""

    def known_gone(self) -> bool:
        """Whether the kernel is known to have exited, asking nobody (False when unknown)."""
        return False

    @abc.abstractmethod
    async def oom_killed(self) -> bool:
        """Whether the kernel's memory limit killed a process of it. Asked after a death."""

    @abc.abstractmethod
    async def memory_bytes(self) -> int | None:
        """Current memory usage (cgroup), or None when unknown."""


class Sandbox(abc.ABC):
    """Starts confined kernels; one instance per server."""

    name: str
    # Whether its kernels start with charts drawn once already (pyplot, the inline backend,
    # fonts), so that a pool's ``warm_charts`` has nothing left to do in them.
    charts_warm_at_start = False

    @abc.abstractmethod
    async def check(self) -> None:
        """Raise SandboxUnavailable when this sandbox cannot run kernels here. Called at start."""

    @abc.abstractmethod
    async def launch(self, spec: LaunchSpec) -> SandboxedKernel:
        """Start a kernel; return once its process runs (readiness is the client's business)."""

    @abc.abstractmethod
    async def reap_orphans(self) -> int:
        """Remove kernels an earlier run of the server left behind; return how many."""

    async def close(self) -> None:
        """Release what the sandbox holds (clients, executors). Called at shutdown."""
