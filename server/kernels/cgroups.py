"""A cgroup of its own for each bubblewrap kernel: memory, pids and cpu limits, OOM evidence.

Supports both cgroup v1 (one hierarchy per controller, as on this kind of host) and v2 (one
unified tree). The launcher writes the kernel's pid into ``procs_files`` before it drops
privileges and execs bubblewrap, so no instruction of the kernel runs outside its limits.

CPU is limited with a short period (10 ms) rather than the default 100 ms: a quota at the
default period stalls interactive cells for tens of milliseconds.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from server.errors import SandboxUnavailable

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 10_000
V1_CONTROLLERS = ("memory", "pids", "cpu")


def cgroup_version(root: Path = CGROUP_ROOT) -> int | None:
    """2 for a unified hierarchy, 1 for per-controller hierarchies, None when neither is usable."""
    if (root / "cgroup.controllers").exists():
        return 2
    if all((root / c).is_dir() for c in V1_CONTROLLERS):
        return 1
    return None


def check_writable(parent: str, root: Path = CGROUP_ROOT) -> None:
    """Raise SandboxUnavailable unless kernels can get cgroups of their own under ``parent``."""
    version = cgroup_version(root)
    if version is None:
        raise SandboxUnavailable("no cgroup v1 memory/pids/cpu hierarchies or cgroup v2 tree found")
    probe = KernelCgroup(parent=parent, name=f"probe-{os.getpid()}", version=version, root=root)
    try:
        probe.create(memory_bytes=64 * 1024 * 1024, pids=16, cpus=1.0)
    except OSError as exc:
        raise SandboxUnavailable(
            f"cannot create cgroups under {parent!r} ({exc.strerror}); bubblewrap kernels need a "
            "writable cgroup for their memory and process limits"
        ) from exc
    finally:
        probe.remove()


@dataclass
class KernelCgroup:
    """One kernel's cgroup (a directory per v1 controller, or one v2 directory)."""

    parent: str
    name: str
    version: int
    root: Path = CGROUP_ROOT

    def _dirs(self) -> list[Path]:
        if self.version == 2:
            return [self.root / self.parent / self.name]
        return [self.root / c / self.parent / self.name for c in V1_CONTROLLERS]

    def _file(self, controller: str, name: str) -> Path:
        if self.version == 2:
            return self.root / self.parent / self.name / name
        return self.root / controller / self.parent / self.name / name

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self._dirs()]

    def create(self, memory_bytes: int, pids: int, cpus: float) -> None:
        """Make the cgroup and set its limits (swap included in the memory limit)."""
        if self.version == 2:
            parent = self.root / self.parent
            parent.mkdir(exist_ok=True)
            (parent / "cgroup.subtree_control").write_text("+memory +pids +cpu")
        for directory in self._dirs():
            directory.mkdir(parents=True, exist_ok=True)
        quota = max(1000, int(CPU_PERIOD_US * cpus))
        if self.version == 2:
            self._file("memory", "memory.max").write_text(str(memory_bytes))
            swap = self._file("memory", "memory.swap.max")
            if swap.exists():
                swap.write_text("0")
            self._file("pids", "pids.max").write_text(str(pids))
            self._file("cpu", "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
            return
        self._file("memory", "memory.limit_in_bytes").write_text(str(memory_bytes))
        memsw = self._file("memory", "memory.memsw.limit_in_bytes")
        if memsw.exists():
            memsw.write_text(str(memory_bytes))
        self._file("pids", "pids.max").write_text(str(pids))
        self._file("cpu", "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        self._file("cpu", "cpu.cfs_quota_us").write_text(str(quota))

    def _read(self, controller: str, name: str) -> str | None:
        try:
            return self._file(controller, name).read_text()
        except OSError:
            return None

    def oom_kills(self) -> int:
        """How many processes the memory limit has killed."""
        text = self._read("memory", "memory.events" if self.version == 2 else "memory.oom_control")
        for line in (text or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def memory_bytes(self) -> int | None:
        text = self._read(
            "memory", "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        )
        return int(text) if text else None

    def pids(self) -> list[int]:
        text = self._read("pids", "cgroup.procs")
        return [int(p) for p in (text or "").split()]

    def kill_all(self, timeout: float = 2.0) -> None:
        """SIGKILL every process in the cgroup and wait (bounded) until it is empty."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids or time.monotonic() > deadline:
                return
            if self.version == 2 and self._file("pids", "cgroup.kill").exists():
                self._file("pids", "cgroup.kill").write_text("1")
            else:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.01)

    def remove(self, timeout: float = 10.0) -> None:
        """Kill what is left and remove the cgroup directories.

        A fork bomb's processes can take seconds to leave a cgroup on a loaded host, and a
        directory with processes in it cannot go (EBUSY): killed again until ``timeout``,
        then left (with a warning) for ``orphan_cgroups`` at the next start, rather than
        failing the request that discarded the kernel.
        """
        deadline = time.monotonic() + timeout
        for directory in self._dirs():
            while True:
                self.kill_all()
                try:
                    directory.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if time.monotonic() < deadline:
                        time.sleep(0.05)
                        continue
                    log.warning("cgroup %s left behind: %s", directory, exc)
                break


def orphan_cgroups(parent: str, root: Path = CGROUP_ROOT) -> list[KernelCgroup]:
    """Kernel cgroups left under ``parent`` by an earlier run."""
    version = cgroup_version(root)
    if version is None:
        return []
    base = root / parent if version == 2 else root / "memory" / parent
    if not base.is_dir():
        return []
    return [
        KernelCgroup(parent=parent, name=d.name, version=version, root=root)
        for d in base.iterdir()
        if d.is_dir()
    ]
