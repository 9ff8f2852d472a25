"""What a kernel sees of the host, as a mount plan the bubblewrap and zygote sandboxes share.

One list of mounts, in order, over an empty root: bubblewrap gets it as ``bwrap`` options
(``bwrap_options``), the zygote as JSON (``Mount.as_json``) and mounts it itself. Either
way a kernel sees exactly:

    /usr (read-only, with the /bin, /lib, /lib64, /sbin links), the kernel environment
    (read-only), /dataexec/{srv,lib} (read-only), /dataexec/rw (its tmpfs socket dir),
    a size-capped /tmp, a private /proc, a minimal read-only /dev with a /dev/shm capped
    like /tmp, and a two-line /etc/passwd.

Nothing else of the host is bound: not /run, /var/run, the host's /tmp, the state dir or any
directory holding a unix socket, since a read-only bind does not stop ``connect()``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from server.kernels.sandbox import LIB_MOUNT, RW_MOUNT, SRV_MOUNT, LaunchSpec

HOSTNAME = "dataexec"
KERNEL_CWD = "/tmp"
HOST_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/nsswitch.conf")


@dataclass(frozen=True)
class Mount:
    """One step of the plan: ``kind`` is ro-bind, bind, symlink, tmpfs, proc, dev or
    remount-ro; ``source`` is the host path (or a symlink's target); ``size`` a tmpfs's."""

    kind: str
    target: str
    source: str = ""
    size: int = 0

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def kernel_mounts(spec: LaunchSpec, kernel_env: Path) -> list[Mount]:
    """The plan for one kernel, in the order it must be mounted."""
    kdir, env_dir, tmp = spec.kernel_dir, str(kernel_env), spec.limits.tmp_bytes
    mounts = [Mount("ro-bind", "/usr", "/usr")]
    mounts += [
        Mount("symlink", f"/{link}", f"usr/{link}")
        for link in ("bin", "lib", "lib64", "sbin")
        if Path(f"/usr/{link}").exists()
    ]
    mounts += [Mount("ro-bind", etc, etc) for etc in HOST_FILES if os.path.exists(etc)]
    return mounts + [
        Mount("ro-bind", "/etc/passwd", str(kdir / "srv" / "passwd")),
        Mount("ro-bind", env_dir, env_dir),
        Mount("ro-bind", LIB_MOUNT, str(spec.lib_dir)),
        Mount("ro-bind", SRV_MOUNT, str(kdir / "srv")),
        Mount("bind", RW_MOUNT, str(kdir / "rw")),
        Mount("proc", "/proc"),
        Mount("dev", "/dev"),
        # /dev/shm capped as /tmp is (as Docker's shm_size does); the rest of /dev read-only.
        Mount("tmpfs", "/dev/shm", size=tmp),
        Mount("remount-ro", "/dev"),
        Mount("tmpfs", "/tmp", size=tmp),
        Mount("remount-ro", "/"),
    ]


def bwrap_options(mounts: list[Mount]) -> list[str]:
    """The plan as bubblewrap's command-line options."""
    argv: list[str] = []
    for mount in mounts:
        if mount.kind in ("ro-bind", "bind", "symlink"):
            argv += [f"--{mount.kind}", mount.source, mount.target]
        elif mount.kind == "tmpfs":
            argv += ["--size", str(mount.size), "--tmpfs", mount.target]
        else:
            argv += [f"--{mount.kind}", mount.target]
    return argv
