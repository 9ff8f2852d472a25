"""The seccomp filter every kernel runs under, as a classic-BPF program built here.

Owns which system calls a kernel may not make, and the program that says so, for x86_64
and aarch64. Both sandboxes load the same program: bubblewrap hands it to ``bwrap --seccomp
FD``; in Docker, ``LOADER`` installs it inside the container before the kernel starts, on
top of the engine's own default profile (filters stack: the stricter answer wins).

The policy is at least as strict as Docker's default profile for a container without
capabilities (moby ``profiles/seccomp/default.json``): every call that profile leaves out
of its allow-list is in ``DENIED``, and more besides (``ptrace``, ``process_vm_*``,
``io_uring_*``, ``name_to_handle_at``, ``adjtimex`` and ``clock_adjtime``, which it
allows). In order, the program:

    1. kills the process when the call's audit arch is not the expected one (the i386 and
       x32 entry points on x86_64, 32-bit arm on aarch64: other numbers, other rules);
    2. answers ENOSYS for numbers past the last one this table knows (calls newer than the
       table: libc falls back, as it does on an older kernel);
    3. answers EPERM for ``DENIED``;
    4. ``clone3`` -> ENOSYS (its flags live in memory a filter cannot read, so libc falls
       back to ``clone``); ``clone`` with any CLONE_NEW* flag -> EPERM (threads and fork
       pass); ``personality`` other than the values Docker allows -> EPERM; ``socket``
       of family AF_VSOCK -> EPERM;
    5. allows everything else.
"""

from __future__ import annotations

import errno
import platform
import struct
from dataclasses import dataclass

from server.errors import SandboxUnavailable

# What each denied call would reach, by group; numbers as (x86_64, aarch64), None where the
# architecture has no such call.
DENIED: dict[str, tuple[int | None, int | None]] = {
    # other processes' memory and files
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438),
    "process_madvise": (440, 440),
    "kcmp": (312, 272),
    # namespaces and mounts
    "unshare": (272, 97),
    "setns": (308, 268),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    # large kernel attack surfaces an analysis never needs
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "fanotify_init": (300, 262),
    "lookup_dcookie": (212, 18),
    # the machine: modules, kexec, time, swap, accounting, logs, quotas, names, ports
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "acct": (163, 89),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "reboot": (169, 142),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "syslog": (103, 116),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "vhangup": (153, 58),
    "iopl": (172, None),
    "ioperm": (173, None),
    # NUMA placement (Docker allows it only with CAP_SYS_NICE)
    "mbind": (237, 235),
    "set_mempolicy": (238, 237),
    "get_mempolicy": (239, 236),
    "set_mempolicy_home_node": (450, 450),
    "move_pages": (279, 239),
    "migrate_pages": (256, 238),
    # obsolete or never implemented (ENOSYS today; denied so that no kernel revives them)
    "create_module": (174, None),
    "get_kernel_syms": (177, None),
    "query_module": (178, None),
    "uselib": (134, None),
    "ustat": (136, None),
    "sysfs": (139, None),
    "_sysctl": (156, None),
    "nfsservctl": (180, 42),
    "getpmsg": (181, None),
    "putpmsg": (182, None),
    "afs_syscall": (183, None),
    "tuxcall": (184, None),
    "security": (185, None),
    "vserver": (236, None),
}

# Calls allowed only with some arguments (checked in the program), as (x86_64, aarch64).
CLONE = (56, 220)
CLONE3 = (435, 435)
PERSONALITY = (135, 92)
SOCKET = (41, 198)

# The highest call number the table knows (set_mempolicy_home_node, Linux 6.1, the same on
# both architectures): larger numbers, and x86_64's x32 numbers (bit 30 set), get ENOSYS.
LAST_KNOWN = 450

# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET: Docker's mask.
CLONE_NEW_FLAGS = 0x7E020000
# personality(2) values Docker allows: PER_LINUX, PER_LINUX32, UNAME26, both, and a query.
SAFE_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
AF_VSOCK = 40


@dataclass(frozen=True)
class Arch:
    """One architecture: its audit arch and which column of the tables is its numbers."""

    name: str
    audit_arch: int
    column: int


ARCHES = {
    "x86_64": Arch("x86_64", 0xC000003E, 0),
    "aarch64": Arch("aarch64", 0xC00000B7, 1),
}
MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}

# Classic BPF opcodes and the seccomp_data layout (linux/filter.h, linux/seccomp.h).
LD_W_ABS = 0x20
JEQ_K = 0x15
JGE_K = 0x35
JSET_K = 0x45
RET_K = 0x06
OFFSET_NR = 0
OFFSET_ARCH = 4
OFFSET_ARG0_LOW = 16  # the low 32 bits of args[0] on these little-endian machines
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
MAX_INSTRUCTIONS = 4096  # BPF_MAXINSNS
MAX_JUMP = 255  # jt/jf are 8-bit offsets


def arch_of(machine: str | None = None) -> Arch:
    """The architecture of ``machine`` (``platform.machine()`` by default)."""
    name = machine or platform.machine()
    name = MACHINE_ALIASES.get(name, name)
    try:
        return ARCHES[name]
    except KeyError:
        known = ", ".join(ARCHES)
        raise SandboxUnavailable(
            f"no seccomp syscall table for {name!r} (known: {known}): kernels cannot be confined"
        ) from None


def denied_numbers(arch: Arch) -> list[int]:
    """The numbers of the calls ``DENIED`` on ``arch`` (those it has)."""
    return sorted(n for pair in DENIED.values() if (n := pair[arch.column]) is not None)


class _Program:
    """A tiny assembler: instructions with forward jumps to named labels."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def load(self, offset: int) -> None:
        self.code.append((LD_W_ABS, 0, 0, offset))

    def jump(self, op: int, k: int, true: str | int = 0, false: str | int = 0) -> None:
        """A conditional jump: to a label, or 0 to fall through."""
        self.code.append((op, true, false, k))

    def ret(self, value: int) -> None:
        self.code.append((RET_K, 0, 0, value))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> bytes:
        if len(self.code) > MAX_INSTRUCTIONS:
            raise ValueError(f"seccomp program of {len(self.code)} instructions is too long")
        out = bytearray()
        for index, (op, true, false, k) in enumerate(self.code):
            out += struct.pack(
                "<HBBI", op, self._offset(index, true), self._offset(index, false), k
            )
        return bytes(out)

    def _offset(self, index: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        offset = self.labels[target] - index - 1
        if not 0 <= offset <= MAX_JUMP:
            raise ValueError(f"seccomp jump to {target} out of range ({offset})")
        return offset


def program(machine: str | None = None) -> bytes:
    """The filter for ``machine`` (this one by default) as ``struct sock_filter[]`` bytes."""
    arch = arch_of(machine)
    col = arch.column
    p = _Program()
    p.load(OFFSET_ARCH)
    p.jump(JEQ_K, arch.audit_arch, false="kill")
    p.load(OFFSET_NR)
    p.jump(JGE_K, LAST_KNOWN + 1, true="enosys")
    for number in denied_numbers(arch):
        p.jump(JEQ_K, number, true="eperm")
    p.jump(JEQ_K, CLONE3[col], true="enosys")
    p.jump(JEQ_K, CLONE[col], true="clone")
    p.jump(JEQ_K, PERSONALITY[col], true="personality")
    p.jump(JEQ_K, SOCKET[col], true="socket")
    p.ret(RET_ALLOW)
    p.label("clone")
    p.load(OFFSET_ARG0_LOW)
    p.jump(JSET_K, CLONE_NEW_FLAGS, true="eperm")
    p.ret(RET_ALLOW)
    p.label("personality")
    p.load(OFFSET_ARG0_LOW)
    for value in SAFE_PERSONALITIES:
        p.jump(JEQ_K, value, true="allow")
    p.ret(RET_ERRNO | errno.EPERM)
    p.label("socket")
    p.load(OFFSET_ARG0_LOW)
    p.jump(JEQ_K, AF_VSOCK, true="eperm")
    p.label("allow")
    p.ret(RET_ALLOW)
    p.label("eperm")
    p.ret(RET_ERRNO | errno.EPERM)
    p.label("enosys")
    p.ret(RET_ERRNO | errno.ENOSYS)
    p.label("kill")
    p.ret(RET_KILL_PROCESS)
    return p.assemble()


# Installs the filter file argv[1] in this process (no_new_privs first, which an
# unprivileged process needs), then execs argv[2:]: how a Docker kernel gets the filter.
LOADER = """\
import ctypes, os, sys
data = open(sys.argv[1], 'rb').read()
class Prog(ctypes.Structure):
    _fields_ = [('len', ctypes.c_ushort), ('filter', ctypes.c_char_p)]
prog = Prog(len(data) // 8, data)
libc = ctypes.CDLL(None, use_errno=True)
U = ctypes.c_ulong
if libc.prctl(38, U(1), U(0), U(0), U(0)) or libc.prctl(22, U(2), ctypes.byref(prog), U(0), U(0)):
    sys.exit('dataexec: cannot install the seccomp filter: ' + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[2], sys.argv[2:])
"""


def loader_argv(python: str, filter_path: str, argv: list[str]) -> list[str]:
    """``argv`` run by ``python`` under the filter stored at ``filter_path``."""
    return [python, "-I", "-S", "-c", LOADER, filter_path, *argv]
