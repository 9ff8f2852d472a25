"""The bubblewrap sandbox: each kernel a fresh Python process that ``bwrap`` confines.

Each kernel runs as the unprivileged ``kernel_uid`` in fresh user, pid, network, ipc, uts
and cgroup namespaces, in a cgroup of its own (memory, pids, cpu), seeing only what
``view.kernel_mounts`` binds.

The kernel may create no user namespace of its own (``--disable-userns``), and runs under
the seccomp filter of ``seccomp.py`` (``--seccomp``, handed over on a pipe), which also
refuses every other namespace, mounts, ptrace and the calls Docker's default profile denies.

The server (root) starts ``sh``, which joins the kernel's cgroup, then ``setpriv`` drops to
``kernel_uid`` and execs ``bwrap``: limits apply before the kernel's first instruction.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import shutil
import signal
from typing import Protocol

from server.config import Settings
from server.errors import SandboxUnavailable
from server.kernels import seccomp
from server.kernels.cgroups import KernelCgroup, cgroup_version, check_writable, orphan_cgroups
from server.kernels.kerneldir import remove_kernel_dir
from server.kernels.sandbox import LaunchSpec, Sandbox, SandboxedKernel
from server.kernels.view import HOSTNAME, KERNEL_CWD, bwrap_options, kernel_mounts

log = logging.getLogger(__name__)

STDERR_TAIL_BYTES = 8192
# Joins the cgroups given as arguments, then drops privileges and execs bubblewrap.
LAUNCHER = (
    'uid=$1; shift; while [ "$1" != "--" ]; do echo $$ > "$1"; shift; done; shift; '
    'ulimit -c 0; exec setpriv --reuid="$uid" --regid="$uid" --clear-groups '
    '--no-new-privs -- "$@"'
)


class KernelProcess(Protocol):
    """The outer process of a kernel: a subprocess (bwrap) or a zygote's fork
    (``zygote.ForkedProcess``)."""

    @property
    def returncode(self) -> int | None: ...

    @property
    def stderr(self) -> asyncio.StreamReader | None: ...

    def send_signal(self, signum: int) -> None: ...

    async def wait(self) -> int: ...


class CgroupKernel(SandboxedKernel):
    """A kernel's process tree (under bwrap, or forked by the zygote) and its cgroup."""

    def __init__(self, kernel_id: str, process: KernelProcess, cgroup: KernelCgroup | None) -> None:
        self.kernel_id = kernel_id
        self.process = process
        self.cgroup = cgroup
        self.stderr_tail: collections.deque[bytes] = collections.deque(maxlen=64)
        self._reader = asyncio.ensure_future(self._read_stderr())

    async def _read_stderr(self) -> None:
        # Keep only a bounded tail of what the kernel prints outside Jupyter, for diagnosis.
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.read(STDERR_TAIL_BYTES // 64):
            self.stderr_tail.append(chunk)

    async def poll(self) -> int | None:
        return self.process.returncode

    def known_gone(self) -> bool:
        return self.process.returncode is not None

    async def kill(self) -> None:
        if self.process.returncode is None:
            try:
                self.process.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.remove)
        try:
            await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            log.error("kernel %s: its process did not exit after SIGKILL", self.kernel_id)
        self._reader.cancel()

    async def oom_killed(self) -> bool:
        return self.cgroup is not None and self.cgroup.oom_kills() > 0

    async def memory_bytes(self) -> int | None:
        return self.cgroup.memory_bytes() if self.cgroup is not None else None

    def stderr_text(self) -> str:
        return b"".join(self.stderr_tail).decode(errors="replace")[-STDERR_TAIL_BYTES:]


def filter_pipe(program: bytes) -> int:
    """The read end of a pipe holding ``program`` then its end, as ``bwrap --seccomp`` reads
    it. A few KiB: it fits in the pipe's buffer, so writing it never blocks."""
    read_fd, write_fd = os.pipe()
    try:
        view = memoryview(program)
        while view:
            view = view[os.write(write_fd, view) :]
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd


class BubblewrapSandbox(Sandbox):
    """Starts kernels under bubblewrap; see the module docstring for what they can see."""

    name = "bubblewrap"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.python = settings.kernel_env / "bin" / "python"
        self.use_cgroups = True

    @classmethod
    def available(cls) -> bool:
        return shutil.which("bwrap") is not None

    @functools.cached_property
    def seccomp_filter(self) -> bytes:
        """The BPF program every kernel runs under (SandboxUnavailable on an unknown arch)."""
        return seccomp.program()

    async def check(self) -> None:
        # A pool meant for gVisor must not quietly run under the host kernel instead.
        docker_only = [
            f"pools.{n}" for n, pool in self.settings.pools.items() if pool.docker_runtime
        ]
        if docker_only:
            raise SandboxUnavailable(
                f"{', '.join(docker_only)} name a docker_runtime, but kernels run under "
                f"{self.name} (sandbox = docker needs an engine with the kernel image)"
            )
        if not self.available():
            raise SandboxUnavailable("bubblewrap is not installed (apt-get install bubblewrap)")
        self.seccomp_filter  # noqa: B018 - raises here, at start, on an unknown arch
        if not self.python.exists():
            raise SandboxUnavailable(
                f"no kernel environment at {self.settings.kernel_env}; "
                "create it with `dataexec kernel-env`"
            )
        if os.geteuid() != 0:
            raise SandboxUnavailable(
                "the bubblewrap sandbox needs a root server to run kernels "
                "as a dedicated uid in their own cgroups"
            )
        try:
            check_writable(self.settings.cgroup_parent)
        except SandboxUnavailable:
            if not self.settings.insecure_no_sandbox:
                raise
            log.warning(
                "INSECURE: no writable cgroup; kernels run WITHOUT memory, pids and cpu "
                "limits because insecure_no_sandbox is set"
            )
            self.use_cgroups = False

    def bwrap_argv(self, spec: LaunchSpec, seccomp_fd: int) -> list[str]:
        """The bwrap command line for one kernel (explicit, minimal binds), its seccomp
        filter to be read from ``seccomp_fd``."""
        argv = [
            "bwrap",
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--seccomp",
            str(seccomp_fd),
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--hostname",
            HOSTNAME,
            *bwrap_options(kernel_mounts(spec, self.settings.kernel_env)),
            "--clearenv",
            "--chdir",
            KERNEL_CWD,
        ]
        for key, value in spec.kernel_env().items():
            argv += ["--setenv", key, value]
        return argv + spec.kernel_argv(str(self.python))

    def prepare(self, spec: LaunchSpec) -> KernelCgroup | None:
        """The kernel's /etc/passwd and its cgroup (None where cgroups are off)."""
        uid = self.settings.kernel_uid
        (spec.kernel_dir / "srv" / "passwd").write_text(
            f"root:x:0:0::/:/usr/sbin/nologin\nkernel:x:{uid}:{uid}::/tmp:/usr/sbin/nologin\n"
        )
        if not self.use_cgroups:
            return None
        version = cgroup_version()
        assert version is not None
        cgroup = KernelCgroup(
            parent=self.settings.cgroup_parent, name=spec.kernel_id, version=version
        )
        cgroup.create(spec.limits.memory_bytes, spec.limits.pids, spec.limits.cpus)
        return cgroup

    async def launch(self, spec: LaunchSpec) -> SandboxedKernel:
        uid = self.settings.kernel_uid
        cgroup = self.prepare(spec)
        procs = [str(p) for p in cgroup.procs_files] if cgroup else []
        filter_fd = filter_pipe(self.seccomp_filter)
        try:
            process = await asyncio.create_subprocess_exec(
                "sh",
                "-c",
                LAUNCHER,
                "launcher",
                str(uid),
                *procs,
                "--",
                *self.bwrap_argv(spec, filter_fd),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                pass_fds=(filter_fd,),
            )
        finally:
            os.close(filter_fd)
        return CgroupKernel(spec.kernel_id, process, cgroup)

    async def reap_orphans(self) -> int:
        def reap() -> int:
            count = 0
            for cgroup in orphan_cgroups(self.settings.cgroup_parent):
                cgroup.remove()
                count += 1
            kernels = self.settings.runtime_dir / "k"
            if kernels.is_dir():
                for root in kernels.iterdir():
                    remove_kernel_dir(root)
            return count

        return await asyncio.to_thread(reap)
