"""Running the embedded PostgreSQL below the server and the kernels on the CPU.

Tenants' queries run in PostgreSQL's backends; below the server and the kernels, one
tenant's heavy query cannot take the CPU from another tenant's steps. A nice value alone
does not do that on hosts that group processes by session (``sched_autogroup``, on by
default in most distributions' kernels): the postmaster and *every backend and parallel
worker* call ``setsid()``, so each one is a group of its own that competes evenly with the
server's group and each kernel's, whatever its nice. Measured on the adversarial suite's
``bomb/sql-cross-join`` (one query, two parallel workers): the victim's ``1+1`` took 2-3x
its baseline with nice 10 alone.

So the postmaster and its children go into a CPU cgroup of their own with the weight of
nice 10 (children inherit it; a process in a cgroup other than the root is outside
autogroup scheduling). Where cgroups are not writable (an unprivileged container, where
autogroups do not apply either), the nice value is what remains.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

NICE = 10
# The CFS weight of nice 10 is 110 against nice 0's 1024; cgroup v2 weights are out of 100.
V1_SHARES = 110
V2_WEIGHT = 11
CGROUP_ROOT = Path("/sys/fs/cgroup")


def lower_priority(pid: int, group: str) -> Path | None:
    """Run ``pid`` and its children at nice ``NICE``, in the CPU cgroup ``group`` when one
    can be made; the cgroup's directory, or None where only the nice value applies."""
    family = [pid, *_children(pid)]
    for member in family:
        with contextlib.suppress(OSError):  # not ours to change (an adopted cluster)
            os.setpriority(os.PRIO_PROCESS, member, NICE)
    directory = _make_group(group)
    if directory is None:
        return None
    try:
        for member in family:
            (directory / "cgroup.procs").write_text(f"{member}\n")
    except OSError as exc:
        log.info("embedded PostgreSQL stays in its cgroup (%s): only its nice value applies", exc)
        return None
    return directory


def remove_group(group: str) -> None:
    """Remove the cgroup ``lower_priority`` made, once its processes have gone."""
    directory = _group_dir(group)
    if directory is not None:
        with contextlib.suppress(OSError):
            directory.rmdir()


def _make_group(group: str) -> Path | None:
    directory = _group_dir(group)
    if directory is None:
        return None
    v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
    try:
        if v2:
            with contextlib.suppress(OSError):  # already on, or ours to ask for
                (directory.parent / "cgroup.subtree_control").write_text("+cpu\n")
        directory.mkdir(exist_ok=True)
        if v2:
            (directory / "cpu.weight").write_text(f"{V2_WEIGHT}\n")
        else:
            (directory / "cpu.shares").write_text(f"{V1_SHARES}\n")
    except OSError as exc:
        log.info("no CPU cgroup for the embedded PostgreSQL (%s): only its nice value applies", exc)
        return None
    return directory


def _group_dir(group: str) -> Path | None:
    """Where ``group`` lives: beside the server's own cgroup in the hierarchy with the CPU
    controller (v2's unified one, or v1's ``cpu``); None when there is none."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        hierarchy, own = CGROUP_ROOT, _own_cgroup("")
    elif (CGROUP_ROOT / "cpu" / "cpu.shares").exists():
        hierarchy, own = CGROUP_ROOT / "cpu", _own_cgroup("cpu")
    else:
        return None
    if own is None:
        return None
    return hierarchy / own.lstrip("/") / group


def _own_cgroup(controller: str) -> str | None:
    """This process's cgroup path in the hierarchy of ``controller`` ("" for v2's)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(",") or controllers == controller:
                return path
    return None


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]
