"""The zygote: a warm template process that forks kernels, each into a sandbox of its own.

A kernel started from scratch spends about 0.8 s of cpu importing numpy, pandas, pyarrow and
ipykernel; a fork of a process that has imported them shares those pages and starts in a
fraction of that. The server (``server/kernels/zygote.py``) runs this module as root on the
host, with the kernel environment's Python, and asks it for kernels over a unix socket (its
fd is the one argument; one message per request, each kernel's stderr pipe passed along).
For each kernel:

    zygote (root, host namespaces)
      └─ outer: joins the kernel's cgroups, unshares mount, pid, network, ipc, uts and cgroup
         namespaces, forks, waits and exits with the kernel's code
          └─ init (pid 1 of the new namespaces): builds the kernel's root from the server's
             mount plan (the one bubblewrap gets), pivots into it, brings up loopback, drops
             to the kernel uid with no capabilities and no new privileges, loads the seccomp
             filter, forks the kernel and reaps orphans until the kernel exits
              └─ kernel (pid 2): the kernel's environment and argv, then ``__main__.main``

so each kernel is confined as a bubblewrap kernel is, before any of its own code runs. What
forked kernels share is the zygote's memory image: its hash seed and address layout
(``random`` reseeds itself at fork, numpy's global generator is reseeded here). The server
retires a zygote after a number of kernels so that those stay per handful of kernels.

Messages are JSON: ``{"op": "fork", ...}`` (see ``Request``) and ``{"op": "retire"}`` in;
``{"started": id, "pid": n}``, ``{"failed": id, "error": text}`` and ``{"exited": id,
"code": n}`` out. A retired zygote exits once its last kernel has.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import fcntl
import gc
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

MESSAGE_MAX = 1 << 20
PACKAGE = "dataexec_kernel"
LIB_MOUNT = "/dataexec/lib"

# <sched.h>, <sys/mount.h>, <sys/prctl.h>, <linux/sockios.h>, <net/if.h>
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS = 0x00020000, 0x02000000, 0x04000000
CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x08000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = (
    1,
    4,
    24,
    38,
    22,
)
SECCOMP_MODE_FILTER = 2
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}[os.uname().machine]
CAP_LAST = 63
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _prctl(option: int, arg: int = 0) -> int:
    return int(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_seccomp(program: bytes) -> None:
    """Install the classic-BPF ``program`` (struct sock_filter[]) on this process, for good."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _check(_prctl(PR_SET_NO_NEW_PRIVS, 1), "no_new_privs")
    _check(
        _libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), 0, 0),
        "seccomp",
    )


class Request:
    """One fork request: the kernel's id, cgroups, root, mount plan, identity and command."""

    def __init__(self, message: dict[str, Any]) -> None:
        self.kernel_id: str = message["kernel_id"]
        self.uid: int = message["uid"]
        self.cgroup_procs: list[str] = message["cgroup_procs"]
        self.root: str = message["root"]
        self.mounts: list[dict[str, Any]] = message["mounts"]
        self.hostname: str = message["hostname"]
        self.env: dict[str, str] = message["env"]
        self.cwd: str = message["cwd"]
        self.argv: list[str] = message["argv"]
        self.threads: int = message["threads"]
        self.seccomp = base64.b64decode(message["seccomp"])


def _parent_dirs(path: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)


def _mount_point(path: str, like: str) -> None:
    """An empty directory or file at ``path`` to mount ``like`` on."""
    if os.path.isdir(like):
        os.makedirs(path, mode=0o755, exist_ok=True)
    else:
        _parent_dirs(path)
        if not os.path.exists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))


def _bind(source: str, target: str, read_only: bool, extra: int = MS_NODEV) -> None:
    _mount_point(target, source)
    _mount(source, target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_NOSUID | extra | (MS_RDONLY * read_only))


def _tmpfs(target: str, options: str) -> None:
    os.makedirs(target, mode=0o755, exist_ok=True)
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)


def _dev(target: str, uid: int) -> None:
    """A minimal /dev: the harmless devices bound from the host, a new devpts, std links."""
    _tmpfs(target, "mode=0755")
    for name in DEVICES:
        _bind(f"/dev/{name}", f"{target}/{name}", read_only=False, extra=0)
    for name, link in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ):
        os.symlink(link, f"{target}/{name}")
    os.mkdir(f"{target}/pts", 0o755)
    _mount(
        "devpts",
        f"{target}/pts",
        "devpts",
        MS_NOSUID | MS_NOEXEC,
        f"newinstance,ptmxmode=0666,mode=620,gid={uid}",
    )
    os.mkdir(f"{target}/shm", 0o755)


def _proc(target: str) -> None:
    os.makedirs(target, mode=0o755, exist_ok=True)
    _mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_READ_ONLY:
        path = f"{target}/{name}"
        if os.path.exists(path):
            _mount(path, path, None, MS_BIND | MS_REC)
            _mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def build_root(request: Request) -> None:
    """Mount the kernel's root under ``request.root`` from its plan, and pivot into it."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below reaches the host's mounts
    root = request.root
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    owner = f"uid={request.uid},gid={request.uid}"
    for mount in request.mounts:
        kind, target = mount["kind"], root + mount["target"]
        if kind in ("ro-bind", "bind"):
            _bind(mount["source"], target, read_only=kind == "ro-bind")
        elif kind == "symlink":
            _parent_dirs(target)
            os.symlink(mount["source"], target)
        elif kind == "tmpfs":
            _tmpfs(target, f"mode=0755,size={mount['size']},{owner}")
        elif kind == "proc":
            _proc(target)
        elif kind == "dev":
            _dev(target, request.uid)
        elif kind == "remount-ro":
            _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        else:
            raise ValueError(f"unknown mount kind {kind!r}")
    os.chdir(root)
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount the host's root")
    os.chdir("/")


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def drop_privileges(uid: int) -> None:
    """Become ``uid`` with no capabilities, none to regain, and no core dumps."""
    for cap in range(CAP_LAST + 1):
        if _prctl(PR_CAPBSET_DROP, cap) != 0 and ctypes.get_errno() != 22:  # EINVAL: no such cap
            _check(-1, f"drop capability {cap}")
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    # Both cleared by setresuid. Dumpable: the kernel's /proc/self is its own, as a kernel
    # run as that uid from the start has it (ptrace stays refused by the seccomp filter).
    _check(_prctl(PR_SET_PDEATHSIG, signal.SIGKILL), "pdeathsig")
    _check(_prctl(PR_SET_DUMPABLE, 1), "dumpable")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_kernel(request: Request) -> None:
    """In the confined kernel process: its environment, its own randomness, then the kernel."""
    os.environ.clear()
    os.environ.update(request.env)
    os.chdir(request.cwd)
    # From here on the package is imported from LIB_MOUNT, as in every kernel.
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _LibFinder)]
    sys.path.insert(0, LIB_MOUNT)
    import numpy
    import pyarrow

    numpy.random.seed()
    if request.threads > 1:
        import threadpoolctl

        threadpoolctl.threadpool_limits(request.threads)
        pyarrow.set_cpu_count(request.threads)
    sys.argv = [f"{LIB_MOUNT}/{PACKAGE}/__main__.py", *request.argv]
    importlib.import_module(f"{PACKAGE}.__main__").main()


def init_process(request: Request) -> None:
    """pid 1 of the kernel's namespaces: confine, fork the kernel, reap until it exits."""
    os.setsid()
    build_root(request)
    socket.sethostname(request.hostname)
    _loopback_up()
    drop_privileges(request.uid)
    load_seccomp(request.seccomp)
    kernel = os.fork()
    if kernel == 0:
        _child(run_kernel, request)
    while True:  # orphans of the kernel's own children come here
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(1)
        if pid == kernel:
            os._exit(_exit_code(status))


def _child(body: Callable[..., None], *args: Any) -> NoReturn:
    """Run a forked child's ``body``; it never returns into its parent's code."""
    try:
        body(*args)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(1)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def outer_process(request: Request, stderr_fd: int) -> None:
    """The kernel's process outside its namespaces (``poll``'s and ``kill``'s handle)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(stderr_fd, 2)
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    for procs in request.cgroup_procs:
        with open(procs, "w") as file:
            file.write("0")
    # After joining: the kernel's own cgroup is the root of its cgroup namespace.
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    _check(_libc.unshare(flags | CLONE_NEWCGROUP), "unshare")
    init = os.fork()
    if init == 0:
        _child(init_process, request)
    _, status = os.waitpid(init, 0)
    os._exit(_exit_code(status))


class Zygote:
    """The request loop: forks kernels, reports their pids and exit codes."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.kernels: dict[int, str] = {}
        self.retired = False

    def send(self, message: dict[str, Any]) -> None:
        self.control.sendall(json.dumps(message).encode())

    def fork(self, request: Request, stderr_fd: int) -> None:
        try:
            pid = os.fork()
        except OSError as exc:
            self.send({"failed": request.kernel_id, "error": f"fork: {exc}"})
            return
        if pid == 0:
            _child(outer_process, request, stderr_fd)
        self.kernels[pid] = request.kernel_id
        self.send({"started": request.kernel_id, "pid": pid})

    def reap(self) -> None:
        while self.kernels:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            kernel_id = self.kernels.pop(pid, None)
            if kernel_id is not None:
                self.send({"exited": kernel_id, "code": os.waitstatus_to_exitcode(status)})

    def handle(self) -> bool:
        """Read one message; False once the server has gone."""
        data, fds, _, _ = socket.recv_fds(self.control, MESSAGE_MAX, 1)
        if not data:
            return False
        message: dict[str, Any] = {}
        try:
            message = json.loads(data)
            if message["op"] == "retire":
                self.retired = True
            elif message["op"] == "fork":
                [stderr_fd] = fds
                self.fork(Request(message), stderr_fd)
        except Exception as exc:  # a request it cannot serve fails alone
            self.send({"failed": message.get("kernel_id", ""), "error": repr(exc)})
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def serve(self) -> None:
        wakeup_read, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wakeup_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        selector = selectors.DefaultSelector()
        selector.register(self.control, selectors.EVENT_READ)
        selector.register(wakeup_read, selectors.EVENT_READ)
        while not (self.retired and not self.kernels):
            for key, _ in selector.select():
                if key.fileobj is self.control:
                    if not self.handle():
                        return
                else:
                    os.read(wakeup_read, 4096)
            self.reap()


class _LibFinder(importlib.abc.MetaPathFinder):
    """Imports this package from the host's copy under the names kernels see it by
    (``LIB_MOUNT``), so that what the zygote imported has the paths kernels have."""

    def __init__(self, host_lib: str) -> None:
        self.host_lib = host_lib

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != PACKAGE and not name.startswith(f"{PACKAGE}."):
            return None
        relative = name.replace(".", "/")
        for file, package in ((f"{relative}/__init__.py", True), (f"{relative}.py", False)):
            if os.path.exists(f"{self.host_lib}/{file}"):
                loader = _LibLoader(name, f"{LIB_MOUNT}/{file}", self.host_lib)
                return importlib.util.spec_from_file_location(
                    name,
                    f"{LIB_MOUNT}/{file}",
                    loader=loader,
                    submodule_search_locations=[f"{LIB_MOUNT}/{relative}"] if package else None,
                )
        return None


class _LibLoader(importlib.machinery.SourceFileLoader):
    def __init__(self, name: str, path: str, host_lib: str) -> None:
        super().__init__(name, path)
        self.host_lib = host_lib

    def get_data(self, path: str) -> bytes:
        with open(path.replace(LIB_MOUNT, self.host_lib, 1), "rb") as file:
            return file.read()


WARM_UP_NICENESS = 10  # added to the template's priority while it warms up

# What a kernel imports after ``__main__``'s imports, before it answers (measured: a third of
# a forked kernel's start was these): ipykernel's debugger (debugpy), IPython's completer and
# extensions, what the ``dataexec_kernel`` extension and its helpers import.
WARM_IMPORTS = (
    "faulthandler",
    "ipykernel.control",
    "ipykernel.debugger",
    "ipykernel.heartbeat",
    "ipykernel.ipkernel",
    "ipykernel.kernelapp",
    "ipykernel.parentpoller",
    "ipykernel.shellchannel",
    "ipykernel.zmqshell",
    "IPython.core.application",
    "IPython.core.completerlib",
    "IPython.core.crashhandler",
    "IPython.core.debugger",
    "IPython.core.logger",
    "IPython.core.magic_arguments",
    "IPython.core.magics.ast_mod",
    "IPython.core.magics.execution",
    "IPython.core.magics.extension",
    "IPython.core.magics.pylab",
    "IPython.core.oinspect",
    "IPython.core.shellapp",
    "IPython.core.ultratb",
    "IPython.extensions.storemagic",
    "IPython.terminal.pt_inputhooks",
    "IPython.utils.module_paths",
    "IPython.utils.wildcard",
    "adbc_driver_manager.dbapi",
    "pyarrow.dataset",
    "pyarrow.parquet",
    "threadpoolctl",
    "tornado.gen",
    "tornado.platform.asyncio",
    "tornado.queues",
    f"{PACKAGE}.__main__",
    f"{PACKAGE}.capture",
    f"{PACKAGE}.flushes",
    f"{PACKAGE}.helpers",
    f"{PACKAGE}.threads",
)


@contextlib.contextmanager
def private_tmp() -> Iterator[None]:
    """A /tmp of the zygote's own while it warms (a tmpfs in a mount namespace of its own):
    matplotlib keeps its config dir there, at the path kernels have theirs, and root writes
    nothing to the host's /tmp. Back in the host's mount namespace after, since kernels
    bind directories the server mounts later (a namespace of the zygote's own would not see
    them: this host's mounts do not propagate)."""
    host = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.unshare(CLONE_NEWNS), "unshare")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700,size=64m")
        yield
    finally:
        _check(_libc.setns(host, CLONE_NEWNS), "back to the host's mount namespace")
        os.close(host)


def warm_charts() -> None:
    """Draw a chart (pyplot, the inline backend, fonts) and forget it. Before ``warm``: it
    starts no thread, so the zygote can go back to the host's mount namespace after."""
    import io

    importlib.import_module(f"{PACKAGE}.fontcache").seed()
    import matplotlib.pyplot as plt
    from matplotlib.backends.registry import backend_registry

    # What a kernel's `%matplotlib inline` resolves: matplotlib reads every installed
    # distribution's entry points for it (10-17 ms of a forked kernel's start under cProfile).
    backend_registry.resolve_gui_or_backend("inline")
    figure = plt.figure()
    figure.add_subplot().plot([0, 1])
    figure.savefig(io.BytesIO(), format="png")
    plt.close("all")


def warm() -> None:
    """Import what every kernel imports before it answers, and run what the server's warm-up
    cell runs: a formatted traceback (``inspect`` maps every loaded module to its file, 75
    ms measured in a fresh fork) and a described frame."""
    import pandas

    for module in WARM_IMPORTS:
        try:
            importlib.import_module(module)
        except ImportError:  # an optional part missing here: the kernel imports it or not
            pass
    from IPython.core.ultratb import AutoFormattedTB

    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        AutoFormattedTB(mode="Context", theme_name="nocolor").structured_traceback(*sys.exc_info())
    pandas.DataFrame({"a": [1.0]}).describe()


def main() -> None:
    # Run as a script from the host's copy of the package (its directory is sys.path[0]).
    host_lib = os.path.dirname(sys.path.pop(0))
    sys.meta_path.insert(0, _LibFinder(host_lib))
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # A template that replaces another warms up (about 1.5 s of cpu) while the old one
    # serves: it yields the cpu to running cells meanwhile (a soak's slowest steps were
    # those beside a warm-up), and its kernels get the priority it started with.
    priority = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, priority + WARM_UP_NICENESS)
    with private_tmp():
        warm_charts()
    warm()
    # The template's objects are out of every later collection: a kernel's collector would
    # otherwise write to each one, and copy every page of the template it touched.
    gc.freeze()
    os.setpriority(os.PRIO_PROCESS, 0, priority)
    control = socket.socket(fileno=int(sys.argv[1]))
    control.set_inheritable(False)
    zygote = Zygote(control)
    zygote.send({"ready": os.getpid()})  # forks from now on cost no warm-up
    zygote.serve()


if __name__ == "__main__":
    main()
