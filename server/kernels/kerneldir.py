"""Per-kernel directories on the host, and the connection info that points into them.

    <runtime_dir>/lib/dataexec_kernel/   copy of the in-kernel package (read-only in kernels)
    <runtime_dir>/k/<id>/srv/            server-owned: connection file (root, group kernel)
    <runtime_dir>/k/<id>/rw/             the kernel's writable part: a size-capped tmpfs

The kernel binds its ZMQ channels as ``ipc`` sockets in ``rw``; the server connects to the
same files from the host side. ``rw`` is a tmpfs of its own so that a kernel cannot fill the
host's disk through it; it is unmounted before the directory is removed, and removal never
follows symlinks the kernel may have planted.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import SandboxUnavailable
from server.kernels.sandbox import CONNECTION_FILE, KERNEL_MODULE, RW_MOUNT

log = logging.getLogger(__name__)

# Mounted and unmounted with the system calls (a `mount` process per kernel cost a fork of
# the server each time); <sys/mount.h>.
MS_NOSUID, MS_NODEV, MS_NOEXEC, MNT_DETACH = 2, 4, 8, 2
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with its terminating NUL
LONGEST_SOCKET_SUFFIX = "/k/0123456789ab/rw/k-5"


def check_runtime_dir(runtime_dir: Path) -> None:
    """Fail at start when socket paths under the runtime dir would not fit sun_path."""
    longest = len(str(runtime_dir)) + len(LONGEST_SOCKET_SUFFIX)
    if longest > SOCKET_PATH_MAX:
        raise SandboxUnavailable(
            f"runtime_dir {runtime_dir} is too long for unix socket paths "
            f"({longest} > {SOCKET_PATH_MAX} bytes); choose a shorter one"
        )


def install_kernel_lib(runtime_dir: Path) -> Path:
    """Copy the in-kernel package where every sandbox can bind it read-only; return its parent."""
    import importlib.util

    spec = importlib.util.find_spec(KERNEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise SandboxUnavailable(f"the {KERNEL_MODULE} package is not installed with the server")
    source = Path(list(spec.submodule_search_locations)[0])
    lib = runtime_dir / "lib"
    target = lib / KERNEL_MODULE
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path in [lib, *lib.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return lib


@dataclass
class KernelDir:
    """A kernel's directory on the host: made by ``create``, removed by ``remove``."""

    root: Path
    kernel_uid: int
    mounted: bool = False

    @property
    def srv(self) -> Path:
        return self.root / "srv"

    @property
    def rw(self) -> Path:
        return self.root / "rw"

    @classmethod
    def create(cls, runtime_dir: Path, kernel_id: str, kernel_uid: int, rw_bytes: int) -> KernelDir:
        """Make the directory, its capped writable tmpfs and nothing else."""
        kernels = runtime_dir / "k"
        kernels.mkdir(parents=True, exist_ok=True, mode=0o711)
        kdir = cls(root=kernels / kernel_id[:12], kernel_uid=kernel_uid)
        kdir.root.mkdir(mode=0o711)
        kdir.srv.mkdir(mode=0o750)
        kdir.rw.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(kdir.srv, 0, kernel_uid)
            size = max(rw_bytes, 1024 * 1024)
            options = f"size={size},mode=0700,uid={kernel_uid},gid={kernel_uid}"
            _check(
                _libc.mount(
                    b"dataexec-kernel",
                    bytes(kdir.rw),
                    b"tmpfs",
                    ctypes.c_ulong(MS_NOSUID | MS_NODEV | MS_NOEXEC),
                    options.encode(),
                ),
                f"mount a tmpfs on {kdir.rw}",
            )
            kdir.mounted = True
        return kdir

    def write_connection_file(self, info: dict[str, Any]) -> None:
        """Write the connection info the kernel reads (ipc paths as seen inside the sandbox)."""
        inside = {**info, "ip": f"{RW_MOUNT}/k"}
        path = self.srv / CONNECTION_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        with os.fdopen(fd, "w") as fh:
            json.dump(inside, fh)
        if os.geteuid() == 0:
            os.chown(path, 0, self.kernel_uid)

    def remove(self) -> None:
        """Unmount the writable part and delete the directory, never following symlinks."""
        remove_kernel_dir(self.root)


def remove_kernel_dir(root: Path) -> None:
    """Unmount and delete one kernel directory (also used for orphans of an earlier run)."""
    rw = root / "rw"
    if os.path.ismount(rw):
        try:
            _check(_libc.umount2(bytes(rw), MNT_DETACH), f"unmount {rw}")
        except OSError as exc:
            log.warning("could not unmount %s: %s", rw, exc)
            return
    shutil.rmtree(root, ignore_errors=True)


def new_connection_info(kernel_dir: KernelDir) -> dict[str, Any]:
    """Connection info as the host sees it: ipc sockets under the kernel's rw directory."""
    info: dict[str, Any] = {f"{name}_port": n for n, name in enumerate(CHANNELS, start=1)}
    info.update(
        transport="ipc",
        ip=str(kernel_dir.rw / "k"),
        key=secrets.token_hex(32),
        signature_scheme="hmac-sha256",
        kernel_name="dataexec",
    )
    return info
