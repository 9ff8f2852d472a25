"""What the sandboxes refuse, decided without starting one.

The seccomp program of ``server/kernels/seccomp.py`` is run here by a small classic-BPF
interpreter on both architectures it supports, aarch64 included, which no test machine
here runs: every call of the shared denied list (``dataexec_testing.syscalls``, whose
numbers are kept apart from the server's) is refused, namespaces are refused in ``clone``
while threads and fork pass, ``clone3`` says ENOSYS, and a foreign audit arch is killed.
The same list is tried for real inside kernels of every sandbox in ``tests/test_sandbox.py``.
Also: ``docker_runtime`` takes runc or runsc only, a pool meant for a Docker runtime
refuses to run under bubblewrap or the zygote, and both of those mount one plan.
"""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest
from dataexec_testing.syscalls import NUMBERS

from server.config import MiB, load_settings
from server.errors import ConfigError, SandboxUnavailable
from server.kernels import seccomp
from server.kernels.bubblewrap import BubblewrapSandbox
from server.kernels.sandbox import LaunchSpec, Limits
from server.kernels.view import Mount, bwrap_options, kernel_mounts
from server.kernels.zygote import ZygoteSandbox

ALLOW = seccomp.RET_ALLOW
EPERM = seccomp.RET_ERRNO | errno.EPERM
ENOSYS = seccomp.RET_ERRNO | errno.ENOSYS
KILL = seccomp.RET_KILL_PROCESS
ARCHES = ["x86_64", "aarch64"]
COLUMN = {"x86_64": 0, "aarch64": 1}
# Calls every kernel makes, as (x86_64, aarch64).
EVERYDAY = {
    "read": (0, 63),
    "write": (1, 64),
    "openat": (257, 56),
    "mmap": (9, 222),
    "futex": (202, 98),
    "execve": (59, 221),
    "wait4": (61, 260),
    "prctl": (157, 167),
    "seccomp": (317, 277),
    "rseq": (334, 293),
}
# glibc's flags for pthread_create and for fork.
THREAD_FLAGS = 0x003D0F00
FORK_FLAGS = 0x01200011  # CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD
CLONE_NEW = {
    "NEWNS": 0x20000,
    "NEWCGROUP": 0x02000000,
    "NEWUTS": 0x04000000,
    "NEWIPC": 0x08000000,
    "NEWUSER": 0x10000000,
    "NEWPID": 0x20000000,
    "NEWNET": 0x40000000,
}


def run(program: bytes, nr: int, arch: int, *args: int) -> int:
    """What the kernel would do with a call: the program's return value."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    code = [struct.unpack_from("<HBBI", program, at) for at in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        op, jt, jf, k = code[pc]
        pc += 1
        if op == seccomp.LD_W_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
        elif op == seccomp.RET_K:
            return k
        else:
            taken = {
                seccomp.JEQ_K: acc == k,
                seccomp.JGE_K: acc >= k,
                seccomp.JSET_K: bool(acc & k),
            }[op]
            pc += jt if taken else jf


@pytest.mark.parametrize("machine", ARCHES)
def test_every_call_of_the_shared_denied_list_is_refused(machine: str) -> None:
    arch = seccomp.arch_of(machine)
    program = seccomp.program(machine)
    argument_checked = {"clone", "clone3", "personality", "socket"}
    for call, numbers in NUMBERS.items():
        nr = numbers[COLUMN[machine]]
        if nr is None or call in argument_checked:
            continue
        assert run(program, nr, arch.audit_arch) in (EPERM, ENOSYS), call


@pytest.mark.parametrize("machine", ARCHES)
def test_everyday_calls_threads_and_fork_are_allowed(machine: str) -> None:
    arch = seccomp.arch_of(machine)
    program = seccomp.program(machine)
    column = COLUMN[machine]
    for call, numbers in EVERYDAY.items():
        assert run(program, numbers[column], arch.audit_arch) == ALLOW, call
    clone = NUMBERS["clone"][column]
    assert clone is not None
    assert run(program, clone, arch.audit_arch, THREAD_FLAGS) == ALLOW
    assert run(program, clone, arch.audit_arch, FORK_FLAGS) == ALLOW


@pytest.mark.parametrize("machine", ARCHES)
def test_namespaces_unsafe_personalities_and_vsock_are_refused_by_argument(
    machine: str,
) -> None:
    arch = seccomp.arch_of(machine)
    program = seccomp.program(machine)
    number = {call: NUMBERS[call][COLUMN[machine]] or -1 for call in NUMBERS}
    for name, flag in CLONE_NEW.items():
        assert run(program, number["clone"], arch.audit_arch, FORK_FLAGS | flag) == EPERM, name
    assert run(program, number["clone3"], arch.audit_arch) == ENOSYS  # libc falls back
    assert run(program, number["personality"], arch.audit_arch, 0xFFFFFFFF) == ALLOW
    assert run(program, number["personality"], arch.audit_arch, 0) == ALLOW
    assert run(program, number["personality"], arch.audit_arch, 0x0040000) == EPERM
    assert run(program, number["socket"], arch.audit_arch, 2) == ALLOW  # AF_INET
    assert run(program, number["socket"], arch.audit_arch, 40) == EPERM  # AF_VSOCK


@pytest.mark.parametrize("machine", ARCHES)
def test_unknown_numbers_say_enosys_and_a_foreign_arch_is_killed(machine: str) -> None:
    arch = seccomp.arch_of(machine)
    program = seccomp.program(machine)
    assert run(program, seccomp.LAST_KNOWN + 1, arch.audit_arch) == ENOSYS
    assert run(program, 0x40000000, arch.audit_arch) == ENOSYS  # x86_64's x32 calls
    other = next(a for a in seccomp.ARCHES.values() if a != arch)
    assert run(program, 0, other.audit_arch) == KILL
    assert run(program, 0, 0x40000003) == KILL  # i386


def test_a_machine_without_a_table_cannot_confine_kernels() -> None:
    with pytest.raises(SandboxUnavailable, match="no seccomp syscall table"):
        seccomp.program("riscv64")


@pytest.mark.parametrize("sandbox", [BubblewrapSandbox, ZygoteSandbox])
async def test_a_pool_meant_for_a_docker_runtime_refuses_to_run_outside_docker(
    sandbox: type[BubblewrapSandbox],
) -> None:
    settings = load_settings(env={"DATAEXEC_POOLS__DEFAULT__DOCKER_RUNTIME": "runsc"})
    assert settings.pools["default"].docker_runtime == "runsc"
    with pytest.raises(
        SandboxUnavailable, match=f"pools.default name a docker_runtime.*under {sandbox.name}"
    ):
        await sandbox(settings).check()


def test_bubblewrap_and_the_zygote_mount_one_plan_that_binds_nothing_else_of_the_host(
    tmp_path: Path,
) -> None:
    settings = load_settings(env={"DATAEXEC_STATE_DIR": str(tmp_path / "state")})
    pool = settings.pools["default"]
    spec = LaunchSpec("k" * 32, tmp_path / "k", tmp_path / "lib", Limits.of_pool(pool), "default")
    plan = kernel_mounts(spec, settings.kernel_env)
    argv = BubblewrapSandbox(settings).bwrap_argv(spec, seccomp_fd=9)
    options = bwrap_options(plan)
    start = argv.index(options[0])
    assert argv[start : start + len(options)] == options
    sources = {m.source for m in plan if m.kind in ("ro-bind", "bind")}
    allowed = {"/usr", str(settings.kernel_env), str(tmp_path / "lib")}
    assert all(s in allowed or s.startswith((str(tmp_path / "k"), "/etc/")) for s in sources), (
        sources
    )
    assert [m.target for m in plan if m.kind == "bind"] == ["/dataexec/rw"]  # the one writable
    capped = {m.target: m.size for m in plan if m.kind == "tmpfs"}
    assert capped == {"/tmp": pool.tmp_mb * MiB, "/dev/shm": pool.tmp_mb * MiB}
    assert plan[-1] == Mount("remount-ro", "/")


def test_a_docker_runtime_other_than_runc_or_runsc_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="DOCKER_RUNTIME: must be one of .* runc, runsc"):
        load_settings(env={"DATAEXEC_POOLS__DEFAULT__DOCKER_RUNTIME": "kata"})
