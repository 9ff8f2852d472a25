"""A plain ipykernel outside DataExec, with the client package installed as an analyst would.

Shared by the tests that re-run DataExec's notebooks elsewhere (``test_client_mode``,
``test_examples``). This module owns: the client package built from ``kernel_image`` as a
wheel and installed with pip into a directory of its own; the environment such a kernel
gets (the caller's, less any DataExec client configuration, plus what the test says); and a
kernel spec that starts the kernel environment's Python as a plain ipykernel, without a
sandbox or a broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager

KERNEL_IMAGE = Path(__file__).resolve().parents[2] / "kernel_image"
# The settings the client package reads; a test's own process may have them set.
CLIENT_ENV = ("DATAEXEC_BROKER", "DATAEXEC_URL", "DATAEXEC_TOKEN", "DATAEXEC_DATABASE_URL")
KERNEL_NAME = "plain"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without client configuration, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    return {**env, **extra}


async def run_checked(command: list[str]) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode == 0, out.decode()


async def install_client_package(root: Path) -> Path:
    """kernel_image built as a wheel (from a copy: no build files in the repository) and
    installed with pip under ``root``; the directory to put on ``PYTHONPATH`` is returned."""
    source = root / "src"
    source.mkdir()
    shutil.copy(KERNEL_IMAGE / "pyproject.toml", source)
    for package in ("dataexec_kernel", "dataexec_client"):
        shutil.copytree(
            KERNEL_IMAGE / package,
            source / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    await run_checked([*pip, "wheel", "--no-deps", "-w", str(root / "dist"), str(source)])
    [wheel] = (root / "dist").glob("dataexec_kernel-*.whl")
    await run_checked(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(root / "site"), str(wheel)]
    )
    return root / "site"


def plain_kernel_specs(python: str, workdir: Path) -> KernelSpecManager:
    """A kernel spec manager that knows one kernel, ``plain``: ``python -m ipykernel``."""
    spec_dir = workdir / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": KERNEL_NAME,
                "language": "python",
            }
        )
    )
    return KernelSpecManager(kernel_dirs=[str(workdir / "kernels")])


def run_plain_kernel(
    python: str, env: dict[str, str], cells: list[str], workdir: Path
) -> list[dict[str, Any]]:
    """Run cells in a plain ipykernel; per cell its status, stdout and error (blocking)."""
    from jupyter_client.manager import KernelManager

    manager = KernelManager(
        kernel_name=KERNEL_NAME, kernel_spec_manager=plain_kernel_specs(python, workdir)
    )
    manager.connection_file = str(workdir / "connection.json")
    manager.start_kernel(env=env, cwd=str(workdir))
    kernel = manager.client()
    kernel.start_channels()
    results = []
    try:
        kernel.wait_for_ready(timeout=120)
        for cell in cells:
            out: list[str] = []

            def hook(message: dict[str, Any], out: list[str] = out) -> None:
                if message["msg_type"] == "stream" and message["content"]["name"] == "stdout":
                    out.append(message["content"]["text"])

            reply = kernel.execute_interactive(cell, timeout=120, output_hook=hook)
            content = reply["content"]
            results.append(
                {
                    "status": content["status"],
                    "stdout": "".join(out),
                    "error": f"{content.get('ename')}: {content.get('evalue')}",
                }
            )
    finally:
        kernel.stop_channels()
        manager.shutdown_kernel(now=True)
    return results
