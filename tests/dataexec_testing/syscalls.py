"""The system calls no kernel may make, as data, and the code that tries them inside a kernel.

Owns ``DENIED``: one line per probe, the call's name and the arguments it is tried with
(a Python expression evaluated in the probe process, where ``NULL``, ``AT_FDCWD``, ``pid``,
``buf`` and the ``CLONE_*`` flags are defined); ``NUMBERS``: each call's number on x86_64
and aarch64, kept here apart from ``server/kernels/seccomp.py`` so that a wrong number
there is caught; and ``probe_cell``/``subprocess_cell``, the cells that run probes.

The list covers what Docker's default profile denies a container without capabilities,
plus what it allows but DataExec denies (``ptrace``, ``process_vm_*``, ``io_uring_*``,
``name_to_handle_at``, ``adjtimex``); every sandbox must answer EPERM or ENOSYS to each.
Where a call has an argument that reaches the kernel without privileges (``keyctl`` on
one's own keyring, ``userfaultfd`` in user mode, ``open_tree`` without cloning,
``personality(ADDR_NO_RANDOMIZE)``...), the probe uses it, so a missing filter shows as
``ok`` or as another error, never as EPERM by accident. Arguments are harmless if a call
gets through: nothing names a real module, device, mount or clock value.

Probes run in a fresh, single-threaded Python process (some calls refuse a process with
threads whatever the filter, and a kernel has threads), each in a forked child of it, so
one that got through changes nothing for the next.
"""

from __future__ import annotations

import json

# name: (x86_64, aarch64); None where the architecture has no such call.
NUMBERS: dict[str, tuple[int | None, int | None]] = {
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438),
    "process_madvise": (440, 440),
    "kcmp": (312, 272),
    "clone": (56, 220),
    "clone3": (435, 435),
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
    "mbind": (237, 235),
    "set_mempolicy": (238, 237),
    "get_mempolicy": (239, 236),
    "set_mempolicy_home_node": (450, 450),
    "move_pages": (279, 239),
    "migrate_pages": (256, 238),
    "personality": (135, 92),
    "socket": (41, 198),
    "create_module": (174, None),
    "get_kernel_syms": (177, None),
    "query_module": (178, None),
    "uselib": (134, None),
    "ustat": (136, None),
    "sysfs": (139, None),
    "_sysctl": (156, None),
    "nfsservctl": (180, 42),
}

# (call, arguments): every one must be refused with EPERM or ENOSYS.
DENIED: tuple[tuple[str, str], ...] = (
    # other processes (and one's own) traced or read
    ("ptrace", "0, 0, NULL, NULL"),  # PTRACE_TRACEME: allowed to anyone without a filter
    ("process_vm_readv", "pid, NULL, 0, NULL, 0, 0"),
    ("process_vm_writev", "pid, NULL, 0, NULL, 0, 0"),
    ("pidfd_getfd", "-1, 0, 0"),
    ("process_madvise", "-1, NULL, 0, 0, 0"),
    ("kcmp", "pid, pid, 0, 0, 0"),  # KCMP_FILE of fd 0 with itself
    # namespaces: clone3 must say ENOSYS so that libc falls back to clone
    ("clone", "CLONE_NEWUSER | SIGCHLD, 0, NULL, NULL, 0"),
    ("clone", "CLONE_NEWNS | SIGCHLD, 0, NULL, NULL, 0"),
    ("clone", "CLONE_NEWNET | SIGCHLD, 0, NULL, NULL, 0"),
    ("clone", "CLONE_NEWPID | SIGCHLD, 0, NULL, NULL, 0"),
    ("clone3", "NULL, 0"),
    ("unshare", "CLONE_NEWUSER"),
    ("unshare", "CLONE_NEWUSER | CLONE_NEWNS"),
    ("unshare", "CLONE_NEWNET"),
    ("setns", "-1, 0"),
    # mounts
    ("mount", "b'none', b'/tmp/.probe', b'tmpfs', 0, NULL"),
    ("umount2", "b'/tmp/.probe', 0"),
    ("pivot_root", "b'/tmp', b'/tmp/.probe'"),
    ("chroot", "b'/tmp'"),
    ("open_tree", "AT_FDCWD, b'/tmp', 0"),  # a plain O_PATH open without a filter
    ("move_mount", "-1, b'', AT_FDCWD, b'/tmp/.probe', 0"),
    ("fsopen", "b'tmpfs', 0"),
    ("fsconfig", "-1, 0, NULL, NULL, 0"),
    ("fsmount", "-1, 0, 0"),
    ("fspick", "AT_FDCWD, b'/tmp', 0"),
    ("mount_setattr", "-1, b'', 0, NULL, 0"),
    # large kernel surfaces
    ("bpf", "0, buf, 16"),
    ("perf_event_open", "NULL, 0, -1, -1, 0"),
    ("userfaultfd", "1"),  # UFFD_USER_MODE_ONLY: allowed without privileges
    ("io_uring_setup", "1, NULL"),
    ("io_uring_enter", "-1, 0, 0, 0, NULL, 0"),
    ("io_uring_register", "-1, 0, NULL, 0"),
    ("keyctl", "0, -3, 0"),  # KEYCTL_GET_KEYRING_ID of the session keyring
    ("add_key", "b'user', b'dataexec-probe', b'x', 1, -2"),  # into the process keyring
    ("request_key", "b'user', b'dataexec-probe', NULL, 0"),
    ("open_by_handle_at", "AT_FDCWD, buf, 0"),
    ("name_to_handle_at", "AT_FDCWD, b'/tmp', buf, buf, 0"),
    ("fanotify_init", "0x200, 0"),  # FAN_REPORT_FID: allowed without privileges
    ("lookup_dcookie", "0, NULL, 0"),
    # the machine
    ("kexec_load", "0, 0, NULL, 0"),
    ("kexec_file_load", "-1, -1, 0, NULL, 0"),
    ("init_module", "NULL, 0, b''"),
    ("finit_module", "-1, b'', 0"),
    ("delete_module", "b'dataexec_probe', 0"),
    ("acct", "NULL"),
    ("swapon", "b'/tmp/.probe', 0"),
    ("swapoff", "b'/tmp/.probe'"),
    ("reboot", "0, 0, 0, NULL"),  # no magic numbers: EINVAL even for root
    ("settimeofday", "NULL, NULL"),
    ("clock_settime", "0, NULL"),
    ("clock_adjtime", "0, NULL"),
    ("adjtimex", "NULL"),
    ("syslog", "10, NULL, 0"),  # SYSLOG_ACTION_SIZE_BUFFER
    ("quotactl", "0, NULL, 0, NULL"),
    ("quotactl_fd", "-1, 0, 0, NULL"),
    ("sethostname", "b'x', 1"),
    ("setdomainname", "b'x', 1"),
    ("vhangup", ""),
    ("iopl", "3"),
    ("ioperm", "0x80, 1, 1"),
    # memory placement
    ("mbind", "NULL, 0, 0, NULL, 0, 0"),
    ("set_mempolicy", "0, NULL, 0"),
    ("get_mempolicy", "NULL, NULL, 0, NULL, 0"),
    ("set_mempolicy_home_node", "0, 0, 0, 0"),
    ("move_pages", "0, 0, NULL, NULL, NULL, 0"),
    ("migrate_pages", "0, 0, NULL, NULL"),
    # arguments Docker refuses
    ("personality", "0x0040000"),  # ADDR_NO_RANDOMIZE
    ("socket", "40, 1, 0"),  # AF_VSOCK
    # obsolete (the kernel says ENOSYS itself; the filter keeps it so)
    ("create_module", "NULL, 0"),
    ("get_kernel_syms", "NULL"),
    ("query_module", "NULL, 0, NULL, 0, NULL"),
    ("uselib", "NULL"),
    ("ustat", "0, buf"),
    ("sysfs", "3"),
    ("_sysctl", "NULL"),
    ("nfsservctl", "0, NULL, NULL"),
)

REFUSED = ("EPERM", "ENOSYS")

# Run in a fresh process: argv[1] is [[label, {machine: number}, arguments], ...]; prints
# {label: "ok" | errno name | "died: <status>"} as JSON.
PROBE_SCRIPT = r"""
import ctypes, errno, json, os, platform, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NULL, AT_FDCWD, SIGCHLD = None, -100, 17
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
pid = os.getpid()
buf = ctypes.create_string_buffer(256)
os.makedirs('/tmp/.probe', exist_ok=True)
def arg(value):
    return ctypes.c_long(value) if isinstance(value, int) else value
results = {}
for label, numbers, arguments in json.loads(sys.argv[1]):
    number = numbers.get(platform.machine())
    if number is None:
        continue
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        values = eval('(' + arguments + ',)') if arguments else ()
        rc = libc.syscall(ctypes.c_long(number), *map(arg, values))
        outcome = 'ok' if rc != -1 else errno.errorcode.get(ctypes.get_errno(), 'errno?')
        os.write(write_end, outcome.encode())
        os._exit(0)  # also a clone that got through, in the new process
    os.close(write_end)
    outcome = os.read(read_end, 64).decode()
    os.close(read_end)
    _, status = os.waitpid(child, 0)
    results[label] = outcome[:2] if outcome.startswith('ok') else outcome or f'died: {status}'
print(json.dumps(results))
"""


def label(call: str, arguments: str) -> str:
    """How a probe is named in results: the call as it is made."""
    return f"{call}({arguments})"


def subprocess_cell(script: str, *args: str) -> str:
    """A cell whose value is what ``script`` prints when run by a fresh Python in the kernel."""
    return (
        "import subprocess as _sp, sys as _sys\n"
        f"_p = _sp.run([_sys.executable, '-c', {script!r}, *{list(args)!r}], "
        "capture_output=True, text=True, timeout=60)\n"
        "_p.stdout.strip() if _p.returncode == 0 else 'failed: ' + _p.stderr[-2000:]"
    )


def probe_cell(probes: tuple[tuple[str, str], ...] = DENIED) -> str:
    """A cell whose value is the JSON outcome of each probe, by ``label``."""
    rows = [
        [
            label(call, arguments),
            {"x86_64": NUMBERS[call][0], "aarch64": NUMBERS[call][1]},
            arguments,
        ]
        for call, arguments in probes
    ]
    return subprocess_cell(PROBE_SCRIPT, json.dumps(rows))
