"""The zygote sandbox: kernels forked from a warm template, each confined as under bubblewrap.

A kernel started from scratch spends about 0.8 s of cpu importing what every kernel imports;
under load the pools are bound by that. Here one template process per server (the zygote,
``dataexec_kernel.zygote``, run as root with the kernel environment's Python) has imported
it all, and each kernel is a fork of it that builds its own sandbox before any of its code
runs: its own cgroup (joined first), mount, pid, network, ipc, uts and cgroup namespaces,
the mount plan bubblewrap gets (``view.kernel_mounts``), the kernel uid with no capabilities
and no new privileges, and the same seccomp filter. What forked kernels share is the
template's memory image (hash seed, address layout); once a zygote has forked
``zygote_renew_after`` kernels a fresh one starts beside it, takes over when it has warmed
up (the old one forks on until then, so no start waits for a warm-up), and the old one exits
with its last kernel.

The server talks to a zygote over a unix ``SOCK_SEQPACKET`` pair, one JSON message per
request or event, each kernel's stderr pipe passed along (``SCM_RIGHTS``). A kernel's
outer process is the zygote's child, so the zygote reports its exit code; the server kills a
kernel by its cgroup and that pid (never reused before the zygote has reported it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import socket
from typing import Any

from server.config import Settings
from server.errors import SandboxUnavailable
from server.kernels.bubblewrap import BubblewrapSandbox, CgroupKernel
from server.kernels.sandbox import KERNEL_MODULE, LaunchSpec, SandboxedKernel
from server.kernels.view import HOSTNAME, KERNEL_CWD, kernel_mounts

log = logging.getLogger(__name__)

MESSAGE_MAX = 1 << 16
KILLED = -int(signal.SIGKILL)
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "ARROW_NUM_THREADS",
)


class ForkedProcess:
    """A forked kernel's outer process, the zygote's child: ``CgroupKernel`` uses it as it
    uses bwrap's subprocess."""

    def __init__(self, stderr: asyncio.StreamReader) -> None:
        self.pid = 0  # until the zygote has forked it
        self.stderr = stderr
        self.returncode: int | None = None
        self._exited = asyncio.Event()

    def exited(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    def send_signal(self, signum: int) -> None:
        if self.pid and self.returncode is None:  # not reaped by the zygote: still ours
            os.kill(self.pid, signum)

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode


class Zygote:
    """One template process and the kernels it forked."""

    def __init__(self, process: asyncio.subprocess.Process, control: socket.socket) -> None:
        self.process = process
        self.control = control
        self.forks = 0
        self.kernels: dict[str, ForkedProcess] = {}
        self.starting: dict[str, asyncio.Future[int]] = {}
        self.lost = False  # a send found it gone
        self.ready = asyncio.Event()  # warmed up: a fork from it now costs no warm-up
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, settings: Settings, lib_dir: str, env: dict[str, str]) -> Zygote:
        """Start a template with a kernel's environment ``env``."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        try:
            process = await asyncio.create_subprocess_exec(
                str(settings.kernel_env / "bin" / "python"),
                f"{lib_dir}/{KERNEL_MODULE}/zygote.py",
                str(theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                env={
                    # a kernel's environment (the zygote imports as kernels would) ...
                    **env,
                    "PATH": "/usr/bin:/bin",
                    # ... but root writes nothing to the kernel environment ...
                    "PYTHONDONTWRITEBYTECODE": "1",
                    # ... its kernels raise these to their pool's cpus ...
                    **{name: "1" for name in THREAD_VARIABLES},
                    # ... and debugpy (ipykernel's debugger) would warn on stderr
                    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
                },
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        return cls(process, ours)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await loop.sock_recv(self.control, MESSAGE_MAX):
                self._event(json.loads(data))
        except OSError as exc:
            log.error("zygote %d: control socket failed: %s", self.process.pid, exc)
        # Gone: its kernels died with it (each one's outer process has it as parent-death).
        for kernel in self.kernels.values():
            kernel.exited(KILLED)
        for future in self.starting.values():
            if not future.done():
                future.set_exception(SandboxUnavailable("the zygote exited"))
        self.kernels.clear()
        self.control.close()

    def _event(self, event: dict[str, Any]) -> None:
        if "ready" in event:
            self.ready.set()
        elif "started" in event:
            kernel = self.kernels.get(event["started"])
            if kernel is not None:
                kernel.pid = event["pid"]
            future = self.starting.pop(event["started"], None)
            if future is not None and not future.done():
                future.set_result(event["pid"])
        elif "failed" in event:
            future = self.starting.pop(event["failed"], None)
            if future is not None and not future.done():
                future.set_exception(SandboxUnavailable(f"zygote: {event['error']}"))
        elif "exited" in event:
            kernel = self.kernels.pop(event["exited"], None)
            if kernel is not None:
                kernel.exited(event["code"])

    @property
    def alive(self) -> bool:
        return not self.lost and not self._reader.done()

    async def _send(self, message: dict[str, Any], fds: list[int]) -> None:
        data = json.dumps(message).encode()
        while True:
            try:
                socket.send_fds(self.control, [data], fds)
                return
            except BlockingIOError:
                await asyncio.sleep(0.001)

    async def fork(self, request: dict[str, Any], stderr_fd: int, process: ForkedProcess) -> None:
        """Fork a kernel as ``process``; return once the zygote has forked it."""
        self.forks += 1
        kernel_id = request["kernel_id"]
        self.kernels[kernel_id] = process  # before its events can arrive
        future = self.starting[kernel_id] = asyncio.get_running_loop().create_future()
        try:
            try:
                await self._send({"op": "fork", **request}, [stderr_fd])
            except OSError as exc:  # it died: its reader has yet to read the end
                self.lost = True
                raise SandboxUnavailable(f"the zygote exited: {exc}") from exc
            await future
        except BaseException:
            self.kernels.pop(kernel_id, None)
            self.starting.pop(kernel_id, None)
            raise

    async def retire(self) -> None:
        """Fork no more; exit with the last kernel."""
        if self.alive:
            await self._send({"op": "retire"}, [])

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        await self._reader


class ZygoteSandbox(BubblewrapSandbox):
    """Kernels forked from a warm template; see the module docstring."""

    name = "zygote"
    # The template drew a chart: a kernel's first chart costs 8-12 ms more than its second
    # (profiled in forks), while drawing one more in each idle kernel cost 75-100 ms of cpu
    # and 2,500 pages copied from the template.
    charts_warm_at_start = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.zygote: Zygote | None = None
        self.successor: Zygote | None = None  # warming up to take over from ``zygote``
        self.retired: list[Zygote] = []
        self._starting = asyncio.Lock()

    @classmethod
    def available(cls) -> bool:
        return True  # needs nothing bubblewrap's checks do not

    async def _zygote(self, lib_dir: str, env: dict[str, str]) -> Zygote:
        """The template to fork from. Renewal happens beside the current one: under load a
        start that waited for a new template's warm-up (about 1.5 s) was a soak's slowest."""
        async with self._starting:
            current = self.zygote
            if current is not None and current.alive:
                if current.forks < self.settings.zygote_renew_after:
                    return current
                if self.successor is None or not self.successor.alive:
                    self.successor = await Zygote.start(self.settings, lib_dir, env)
                if not self.successor.ready.is_set():
                    return current
            # None yet, the current one died (a start waits for whichever comes next), or
            # its successor is ready.
            fresh = self.successor or await Zygote.start(self.settings, lib_dir, env)
            self.successor = None
            if current is not None:
                await current.retire()
                self.retired = [z for z in self.retired if z.alive] + [current]
            self.zygote = fresh
            return fresh

    async def launch(self, spec: LaunchSpec) -> SandboxedKernel:
        cgroup = self.prepare(spec)
        root = spec.kernel_dir / "root"
        root.mkdir(mode=0o700)
        request = {
            "kernel_id": spec.kernel_id,
            "uid": self.settings.kernel_uid,
            "cgroup_procs": [str(p) for p in cgroup.procs_files] if cgroup else [],
            "root": str(root),
            "mounts": [m.as_json() for m in kernel_mounts(spec, self.settings.kernel_env)],
            "hostname": HOSTNAME,
            "env": spec.kernel_env(),
            "cwd": KERNEL_CWD,
            "argv": spec.kernel_args(),
            "threads": spec.limits.threads,
            "seccomp": base64.b64encode(self.seccomp_filter).decode(),
        }
        read_fd, write_fd = os.pipe()
        stderr = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stderr), os.fdopen(read_fd, "rb", 0)
        )
        try:
            process = await self._fork(spec, request, write_fd, stderr)
        except BaseException:
            gone = ForkedProcess(stderr)  # nothing of it runs: its cgroup and pipe go
            gone.exited(KILLED)
            await CgroupKernel(spec.kernel_id, gone, cgroup).kill()
            raise
        finally:
            os.close(write_fd)
        return CgroupKernel(spec.kernel_id, process, cgroup)

    async def _fork(
        self,
        spec: LaunchSpec,
        request: dict[str, Any],
        stderr_fd: int,
        stderr: asyncio.StreamReader,
    ) -> ForkedProcess:
        """Fork from the current template, or, when it died between being chosen and
        forking (its kernels die with it), once more from a new one."""
        for attempt in (1, 2):
            zygote = await self._zygote(str(spec.lib_dir), spec.kernel_env())
            process = ForkedProcess(stderr)
            try:
                await zygote.fork(request, stderr_fd, process)
                return process
            except SandboxUnavailable:
                if zygote.alive or attempt == 2:
                    raise
                log.warning("zygote %d exited; forking from a new one", zygote.process.pid)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for zygote in [*self.retired, self.zygote, self.successor]:
            if zygote is not None:
                await zygote.kill()
        self.zygote, self.successor, self.retired = None, None, []
        await super().close()
