"""No sandbox at all: kernels run as plain child processes of the server.

Only with ``sandbox = "none"`` and ``insecure_no_sandbox = true`` together, and logged as a
warning at every start and every launch. For development on hosts where neither Docker nor
bubblewrap can run; never for untrusted code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal

from dataexec_kernel import protocol

from server.config import Settings
from server.kernels.sandbox import (
    CONNECTION_FILE,
    LaunchSpec,
    Sandbox,
    SandboxedKernel,
)

log = logging.getLogger(__name__)


class PlainKernel(SandboxedKernel):
    def __init__(self, kernel_id: str, process: asyncio.subprocess.Process) -> None:
        self.kernel_id = kernel_id
        self.process = process

    async def poll(self) -> int | None:
        return self.process.returncode

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def oom_killed(self) -> bool:
        return False

    async def memory_bytes(self) -> int | None:
        return None


class UnsandboxedSandbox(Sandbox):
    name = "none"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def check(self) -> None:
        log.warning(
            'INSECURE: kernels run WITHOUT A SANDBOX (sandbox = "none"); any code '
            "sent to this server runs with the server's own rights"
        )

    async def launch(self, spec: LaunchSpec) -> SandboxedKernel:
        log.warning("INSECURE: starting kernel %s without a sandbox", spec.kernel_id[:12])
        srv = spec.kernel_dir / "srv"
        info = json.loads((srv / CONNECTION_FILE).read_text())
        info["ip"] = str(spec.kernel_dir / "rw" / "k")
        host_file = srv / "connection-host.json"
        host_file.write_text(json.dumps(info))
        env = {
            **spec.kernel_env(),
            "PYTHONPATH": str(spec.lib_dir),
            "HOME": str(spec.kernel_dir),
            protocol.BROKER_ENV: str(srv / protocol.BROKER_SOCKET),
        }
        argv = spec.kernel_argv(str(self.settings.kernel_env / "bin" / "python"))
        argv[-1] = str(host_file)
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return PlainKernel(spec.kernel_id, process)

    async def reap_orphans(self) -> int:
        return 0
