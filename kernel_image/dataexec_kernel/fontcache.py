"""Matplotlib's font list, built once where the kernel packages live, seeded into kernels.

Matplotlib scans every font file the first time a process imports ``matplotlib.pyplot``
(about 0.16 s here) and keeps what it found in ``$MPLCONFIGDIR/fontlist-v*.json``. Each
kernel has a ``MPLCONFIGDIR`` of its own in its own ``/tmp``, so each kernel's first chart
paid for that scan. ``python -m dataexec_kernel.fontcache`` (run by ``dataexec kernel-env``
and by the kernel image's build) scans once into ``SEED_DIR`` beside the packages; a kernel
copies that list into its ``MPLCONFIGDIR`` as it starts (``seed()``), and matplotlib reads
it instead of scanning. The list names font files by path: it is built with the same
packages, fonts and fontconfig file a kernel sees, at the paths a kernel sees them.

Without a seed (an environment made before this existed), a kernel scans as before.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

SEED_DIR = Path(sys.prefix) / "share" / "dataexec-matplotlib"
FONTCONFIG_FILE = Path(__file__).with_name("fonts.conf")


def seed() -> None:
    """Copy the prebuilt font list into this kernel's ``MPLCONFIGDIR`` (if both exist)."""
    target = os.environ.get("MPLCONFIGDIR")
    if not target or not SEED_DIR.is_dir():
        return
    for found in SEED_DIR.glob("fontlist-v*.json"):
        os.makedirs(target, mode=0o700, exist_ok=True)
        shutil.copyfile(found, Path(target) / found.name)


def build() -> Path:
    """Scan the fonts into ``SEED_DIR``; its font list file. In a process of its own:
    matplotlib must not have been imported before."""
    assert "matplotlib" not in sys.modules, "matplotlib already chose its cache directory"
    shutil.rmtree(SEED_DIR, ignore_errors=True)  # a list of other packages or fonts
    SEED_DIR.mkdir(parents=True)
    os.environ["MPLCONFIGDIR"] = str(SEED_DIR)
    os.environ.setdefault("FONTCONFIG_FILE", str(FONTCONFIG_FILE))
    import matplotlib.font_manager  # noqa: F401  (importing it scans, and writes the list)

    (built,) = SEED_DIR.glob("fontlist-v*.json")
    built.chmod(0o644)  # read by the kernel uid
    return built


if __name__ == "__main__":
    print(f"matplotlib font list: {build()}")
