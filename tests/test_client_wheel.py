"""The client package served by the server: pip installs it from the URL GET /client names.

That the wheel declares what the package project declares is checked without a server in
``tests/unit/test_client_package.py``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
from dataexec_testing.api import ONE_SERVER, RunningServer, assert_error

from server.ops import client_wheel


@ONE_SERVER
async def test_pip_installs_the_client_from_the_server(api: RunningServer, tmp_path: Path) -> None:
    async with api.client(token=None) as anonymous:
        about = (await anonymous.get("/client")).json()
    assert about["wheel"].endswith(client_wheel.filename())
    target = tmp_path / "site"
    pip = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
        "--target", str(target), about["wheel"],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await pip.communicate()
    assert pip.returncode == 0, output.decode()
    assert (target / "dataexec_client" / "remote.py").is_file()
    assert (target / "dataexec_kernel" / "fonts.conf").is_file()
    probe = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-c",
        "import sys; sys.path.insert(0, sys.argv[1]); import dataexec_kernel as k; "
        "print(k.__file__, k.__version__)",
        str(target), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    printed, _ = await probe.communicate()
    location, version = printed.decode().split()
    assert location.startswith(str(target)) and version == client_wheel.version()


async def test_an_unknown_wheel_is_not_found(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/client/other-1.0-py3-none-any.whl"), 404, "NOT_FOUND")
