"""The bubblewrap sandbox's kernel environment: what `dataexec kernel-env` makes.

A venv of the system Python with the kernel packages (``kernel_image/requirements.txt``
under the one ``constraints.txt``, the same pins as the server and the Docker image), where
the unprivileged kernel uid can read it. The ``dataexec_kernel`` package itself is not
installed there: the server copies it into each kernel's read-only lib directory. Beside
the packages, matplotlib's font list (``dataexec_kernel/fontcache.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from server.config import Settings
from server.errors import DataExecError
from server.ops.image import CONSTRAINTS, KERNEL_PACKAGE, REQUIREMENTS


def make_kernel_env(settings: Settings) -> str:
    """Create the bubblewrap kernel environment: a venv of the system Python plus the kernel
    packages, where an unprivileged kernel uid can read it."""
    target = settings.kernel_env
    base = shutil.which("python3", path="/usr/bin") or sys.executable
    if not (target / "bin" / "python").exists():
        subprocess.run([base, "-m", "venv", "--without-pip", str(target)], check=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(target / "bin" / "python"),
            "install",
            "--quiet",
            "-r",
            str(REQUIREMENTS),
            "-c",
            str(CONSTRAINTS),
        ],
        check=True,
    )
    # Matplotlib's font list, scanned once at the paths kernels see (the environment and
    # /usr are bound where they are): each kernel copies it as it starts.
    subprocess.run(
        [str(target / "bin" / "python"), "-m", "dataexec_kernel.fontcache"],
        env={**os.environ, "PYTHONPATH": str(KERNEL_PACKAGE.parent)},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for path in [target, *target.parents]:
        if path == Path("/"):
            break
        # The kernel uid must reach the environment through every parent directory.
        if not path.stat().st_mode & 0o001:
            raise DataExecError(
                f"{path} is not searchable by other users; put kernel_env "
                "where the kernel uid can read it (e.g. /opt/dataexec)"
            )
    return f"kernel environment ready at {target}"
