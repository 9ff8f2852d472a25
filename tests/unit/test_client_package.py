"""The client package without a server: the wheel the server serves, and no configuration.

The wheel ``GET /client/...`` serves is built in memory; its metadata must say what
``kernel_image/pyproject.toml`` says. Imported in a fresh Python with nothing configured,
the package imports nothing heavy and its ``sql()`` says how to configure it. Installing the
wheel with pip from a server and using it against one are in ``tests/test_client_wheel.py``
and ``tests/test_client_mode.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import tomllib
import zipfile
from pathlib import Path

from dataexec_testing.plain_kernel import clean_env

from server.ops import client_wheel

ROOT = Path(__file__).resolve().parents[2]


async def test_the_wheel_declares_what_the_package_project_declares() -> None:
    project = tomllib.loads((ROOT / "kernel_image" / "pyproject.toml").read_text())["project"]
    with zipfile.ZipFile(io.BytesIO(client_wheel.build())) as wheel:
        info = f"dataexec_kernel-{client_wheel.version()}.dist-info"
        metadata = wheel.read(f"{info}/METADATA").decode()
        assert wheel.testzip() is None
    assert list(client_wheel.REQUIRES) == project["dependencies"]
    assert {k: list(v) for k, v in client_wheel.EXTRAS.items()} == project["optional-dependencies"]
    assert f"Requires-Python: {project['requires-python']}" in metadata
    assert client_wheel.build() == client_wheel.build()


async def run_python(code: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_without_configuration_sql_says_how_to_configure() -> None:
    code = """
import json, sys
import dataexec_kernel
heavy = [m for m in ("pandas", "pyarrow", "urllib.request", "sqlalchemy") if m in sys.modules]
try:
    dataexec_kernel.sql("SELECT 1")
except dataexec_kernel.NotConfigured as exc:
    print(json.dumps({"heavy": heavy, "error": str(exc)}))
"""
    status, out, err = await run_python(code, clean_env())
    assert status == 0, err
    answer = json.loads(out)
    assert answer["heavy"] == []  # importing the package imports nothing heavy
    for hint in ("DATAEXEC_URL", "DATAEXEC_TOKEN", "DATAEXEC_DATABASE_URL", "connect("):
        assert hint in answer["error"]
