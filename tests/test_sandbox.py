"""The sandbox contract: what every sandbox guarantees, checked from inside real kernels.

Each test runs once per sandbox (``SANDBOXES``: zygote, bubblewrap, docker), in a kernel of the
shared server, so a new sandbox is added to that list and must pass all of them. A kernel:

- runs as the unprivileged kernel uid, with no capabilities and no_new_privs set;
- has no network: only ``lo``, and the host's loopback cannot be reached;
- reaches no unix socket of the host (Docker's, containerd's, PostgreSQL's, the server's
  runtime and state dirs): the only one it sees is its own broker;
- writes only to ``/tmp``, ``/dev/shm`` and its socket dir, and the first two are
  size-capped;
- makes no system call of the denied list (``dataexec_testing.syscalls``: what Docker's
  default profile denies and more), creates no namespace, mounts nothing and traces no
  process, while threads, fork, subprocesses and shared memory work;
- sees nothing of the server: not its environment or this process's, not its files, not
  its processes;
- cannot install packages, and says how to add them instead;
- starts warm, with pandas, numpy and pyarrow imported.

The limits that end or stop code (memory, processes and threads, timeouts, output floods)
are tested over the same sandboxes through the server in ``test_limits.py``; what only the
Docker sandbox has (container configuration, labels, seccomp, the image, reaping
containers) is in ``test_docker_sandbox.py``. The no-network test listens on the host's
loopback only; no test sends traffic anywhere else.
"""

from __future__ import annotations

import json
import platform
import socket
import threading
from pathlib import Path

import httpx
import pytest
from dataexec_testing.api import (
    HOST_MARKER,
    SANDBOXES,
    RunningServer,
    connect_from_kernel,
    ok,
    value_of,
)
from dataexec_testing.syscalls import (
    DENIED,
    NUMBERS,
    REFUSED,
    label,
    probe_cell,
    subprocess_cell,
)

from server.embedded.postgres import EmbeddedPostgres

# The Docker sandbox again with gVisor (runsc) as every pool's runtime: the same contract.
GVISOR = "docker-runsc"
pytestmark = pytest.mark.parametrize(
    "api", [*SANDBOXES, *([GVISOR] if GVISOR not in SANDBOXES else [])], indirect=True
)

KERNEL_UID = 60001  # the default kernel_uid


async def test_kernel_runs_as_an_unprivileged_user_without_capabilities(
    client: httpx.AsyncClient, session_id: str
) -> None:
    ids = await value_of(
        client, session_id, "import os; str([os.getuid(), os.geteuid(), os.getgid(), os.getegid()])"
    )
    assert ids == str([KERNEL_UID] * 4)
    status = json.loads(
        await value_of(
            client,
            session_id,
            "import json; json.dumps(dict(l.split(':\\t', 1) for l in "
            "open('/proc/self/status').read().splitlines() if ':\\t' in l))",
        )
    )
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
    # Asked of the kernel itself: gVisor's /proc/self/status has no NoNewPrivs line.
    no_new_privs = await value_of(
        client, session_id, "import ctypes; ctypes.CDLL(None).prctl(39, 0, 0, 0, 0)"
    )  # PR_GET_NO_NEW_PRIVS
    assert no_new_privs == 1


async def test_kernel_has_no_network_not_even_to_the_hosts_loopback(
    client: httpx.AsyncClient, session_id: str
) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(3)
    port = listener.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        try:
            accepted.append(listener.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        outcome = await connect_from_kernel(client, session_id, port)
        interfaces = await value_of(
            client, session_id, "import socket; str(sorted(n for _, n in socket.if_nameindex()))"
        )
    finally:
        thread.join()
        listener.close()
    assert outcome in ("ConnectionRefusedError", "TimeoutError"), outcome
    assert accepted == []
    assert interfaces == "['lo']"


async def test_no_unix_socket_of_the_host_is_reachable(
    api: RunningServer, client: httpx.AsyncClient, session_id: str, embedded_pg: EmbeddedPostgres
) -> None:
    # Neither the Docker socket nor PostgreSQL's socket directory is in the sandbox at all,
    # and the only socket a kernel can reach is its own broker.
    pg_socket = embedded_pg.socket_dir / f".s.PGSQL.{embedded_pg.port}"
    assert pg_socket.exists()
    absent = [
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/run/containerd/containerd.sock",
        "/run/postgresql",
        "/var/run/postgresql",
        "/tmp/.s.PGSQL.5432",
        str(api.settings.runtime_dir),
        str(api.settings.state_dir),
        str(embedded_pg.socket_dir),
        str(pg_socket),
    ]
    unreachable = [
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/var/run/postgresql/.s.PGSQL.5432",
        "/run/postgresql/.s.PGSQL.5432",
        str(pg_socket),
    ]
    seen = json.loads(
        await value_of(
            client,
            session_id,
            f"""
import json, os, socket, stat
reachable = []
for path in {unreachable!r}:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        reachable.append(path)
    except OSError:
        pass
    finally:
        s.close()
sockets = []
for top, dirs, files in os.walk('/', onerror=lambda e: None):
    if top.startswith(('/proc', '/sys')):
        dirs[:] = []
        continue
    for name in files:
        try:
            if stat.S_ISSOCK(os.lstat(os.path.join(top, name)).st_mode):
                sockets.append(os.path.join(top, name))
        except OSError:
            pass
json.dumps({{
    'exists': [p for p in {absent!r} if os.path.exists(p)],
    'reachable': reachable,
    'sockets': sorted(p for p in sockets if not p.startswith('/dataexec/rw/')),
    'abstract': [l.split()[-1] for l in open('/proc/net/unix').read().splitlines()[1:]
                 if l.split()[-1].startswith('@')],
    'mounts': sorted({{l.split()[4] for l in open('/proc/self/mountinfo')}}),
}})""",
        )
    )
    assert seen["exists"] == [] and seen["reachable"] == []
    assert seen["sockets"] == ["/dataexec/srv/broker.sock"]
    assert seen["abstract"] == []
    assert "/run" not in seen["mounts"] and "/var" not in seen["mounts"]


async def test_kernel_writes_only_to_tmp_dev_shm_and_its_socket_dir(
    client: httpx.AsyncClient, session_id: str
) -> None:
    writable = json.loads(
        await value_of(
            client,
            session_id,
            """
import json, os, sys, sysconfig
def writable(directory):
    path = os.path.join(directory, 'probe-' + str(os.getpid()))
    try:
        with open(path, 'w') as fh:
            fh.write('x')
    except OSError:
        return False
    os.unlink(path)
    return True
json.dumps({d: writable(d) for d in
    ['/', '/etc', '/usr', '/usr/lib', sys.prefix, sysconfig.get_paths()['purelib'],
     '/var/tmp', '/root', '/home', '/dataexec', '/dataexec/srv', '/dataexec/lib',
     '/dataexec/lib/dataexec_kernel', '/tmp', '/dataexec/rw', '/dev', '/dev/shm']})""",
        )
    )
    assert {d for d, ok in writable.items() if ok} == {"/tmp", "/dev/shm", "/dataexec/rw"}, writable


@pytest.mark.parametrize("directory", ["/tmp", "/dev/shm"])
async def test_tmp_and_dev_shm_are_size_capped(
    api: RunningServer, client: httpx.AsyncClient, session_id: str, directory: str
) -> None:
    cap_mb = api.settings.pools["default"].tmp_mb  # /dev/shm is capped like /tmp
    outcome = await value_of(
        client,
        session_id,
        f"""
import errno, json, os
written = 0
try:
    with open('{directory}/fill', 'wb') as fh:
        for _ in range({cap_mb + 16}):
            fh.write(b'x' * (1 << 20))
            fh.flush()
            written += 1
    outcome = 'filled'
except OSError as exc:
    outcome = errno.errorcode[exc.errno]
finally:
    os.remove('{directory}/fill')
json.dumps([outcome, written])""",
    )
    stopped_by, written_mb = json.loads(outcome)
    assert stopped_by == "ENOSPC"
    assert cap_mb - 16 < written_mb <= cap_mb  # stopped at the cap, not 16 MiB after it


async def test_denied_system_calls_are_refused(client: httpx.AsyncClient, session_id: str) -> None:
    answer = await value_of(client, session_id, probe_cell())
    assert not answer.startswith("failed"), answer
    outcomes = json.loads(answer)
    column = {"x86_64": 0, "aarch64": 1}[platform.machine()]  # kernels run on this machine
    tried = {label(call, args) for call, args in DENIED if NUMBERS[call][column] is not None}
    assert set(outcomes) == tried
    assert {probe: seen for probe, seen in outcomes.items() if seen not in REFUSED} == {}


NAMESPACES_AND_MOUNTS = r"""
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
def outcome(rc):
    return 'ok' if rc == 0 else errno.errorcode[ctypes.get_errno()]
os.makedirs('/tmp/mnt', exist_ok=True)
steps = {'unshare': outcome(libc.unshare(0x10000000 | 0x20000))}  # CLONE_NEWUSER | NEWNS
steps['mount'] = outcome(libc.mount(b'none', b'/tmp/mnt', b'tmpfs', 0, None))
print(json.dumps(steps))
"""

PTRACE_A_CHILD = r"""
import ctypes, errno, json, os, signal, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
try:
    rc = libc.ptrace(ctypes.c_long(16), ctypes.c_long(child), None, None)  # PTRACE_ATTACH
    outcome = 'attached' if rc == 0 else errno.errorcode[ctypes.get_errno()]
finally:
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
print(json.dumps(outcome))
"""


async def test_kernel_can_neither_nest_a_user_namespace_nor_mount_a_tmpfs(
    client: httpx.AsyncClient, session_id: str
) -> None:
    # In a fresh single-threaded process: unshare(CLONE_NEWUSER) refuses a process with
    # threads (EINVAL) whatever the sandbox, and a kernel has threads.
    steps = json.loads(await value_of(client, session_id, subprocess_cell(NAMESPACES_AND_MOUNTS)))
    # EPERM from the filter; ENOSPC where only bwrap's --disable-userns stood in the way
    assert steps["unshare"] in ("EPERM", "ENOSPC"), steps
    assert steps["mount"] == "EPERM", steps


async def test_kernel_cannot_ptrace_its_own_child(
    client: httpx.AsyncClient, session_id: str
) -> None:
    assert await value_of(client, session_id, subprocess_cell(PTRACE_A_CHILD)) == '"EPERM"'


async def test_threads_fork_subprocesses_and_shared_memory_still_work(
    client: httpx.AsyncClient, session_id: str
) -> None:
    answer = await value_of(
        client,
        session_id,
        """
import concurrent.futures, json, multiprocessing, subprocess, sys
from multiprocessing import shared_memory
import matplotlib.pyplot as plt, pandas as pd, pyarrow as pa
with concurrent.futures.ThreadPoolExecutor(8) as threads:
    threaded = sum(threads.map(abs, range(-100, 0)))
with multiprocessing.get_context('fork').Pool(2) as pool:  # semaphores live in /dev/shm
    forked = sum(pool.map(abs, range(-10, 0)))
shm = shared_memory.SharedMemory(create=True, size=1 << 20)
shm.buf[:3] = b'abc'
shared = bytes(shm.buf[:3]).decode()
shm.close()
shm.unlink()
child = subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True)
frame = pd.DataFrame({'k': [1, 1, 2], 'v': [1.0, 2.0, 3.0]})
table = pa.Table.from_pandas(frame.groupby('k').sum())
fig = plt.figure(); plt.plot([1, 2, 3]); fig.savefig('/tmp/chart.png'); plt.close(fig)
json.dumps([threaded, forked, shared, child.stdout.strip(), table.num_rows])""",
    )
    assert json.loads(answer) == [5050, 55, "abc", "42", 2]


FIRST_CHART = """
import json, logging, os
read = []
probe = logging.Handler()
probe.emit = lambda record: read.append(record.getMessage())
scanner = logging.getLogger('matplotlib.font_manager')
scanner.addHandler(probe)
scanner.setLevel(logging.DEBUG)
seeded = sorted(os.listdir(os.environ['MPLCONFIGDIR']))
import matplotlib.pyplot as plt
fig = plt.figure(); plt.plot([1, 2, 3]); fig.savefig('/tmp/chart.png'); plt.close(fig)
json.dumps([seeded, read])"""


async def test_a_kernels_first_chart_reads_the_prebuilt_font_list_instead_of_scanning(
    api: RunningServer, client: httpx.AsyncClient, session_id: str
) -> None:
    # The small pool draws no chart while warming: this cell's import is pyplot's first,
    # except in a zygote's kernel, whose template read the same seeded list already.
    created = await client.post("/sessions", json={"session_id": session_id, "pool": "small"})
    assert created.status_code == 201, created.text
    seeded, logged = json.loads(await value_of(client, session_id, FIRST_CHART))
    assert [name for name in seeded if name.startswith("fontlist-v")], seeded
    if api.runtime.sandbox.name != "zygote":
        assert any(line.startswith("Using fontManager instance from") for line in logged), logged
    assert not any("generated new fontManager" in line for line in logged), logged


async def test_kernel_sees_nothing_of_the_server(
    api: RunningServer, client: httpx.AsyncClient, session_id: str
) -> None:
    environ = json.loads(
        await value_of(client, session_id, "import os, json; json.dumps(dict(os.environ))")
    )
    # Neither the server's environment nor this process's (HOST_MARKER is set in it).
    for name in ("DATAEXEC_TEST_MARKER", HOST_MARKER, "DATAEXEC_TOKEN", "AGENT_SECRET_TOKEN"):
        assert name not in environ
    assert not any("secret-env" in value for value in environ.values())
    assert "DOCKER_HOST" not in environ and "PIP_FIND_LINKS" not in environ
    assert environ["PYTHONPATH"] == "/dataexec/lib" and environ["HOME"] == "/tmp"
    # Host files the server can read: this test, the state dir, a marker in root's home.
    marker = Path.home() / f".dataexec-marker-{session_id}"
    marker.write_text("host only")
    host_paths = [__file__, str(api.settings.state_dir), str(marker), str(Path.cwd())]
    try:
        visible = await value_of(
            client,
            session_id,
            f"import os\nstr([p for p in {host_paths!r} if os.path.exists(p)])",
        )
    finally:
        marker.unlink()
    assert visible == "[]"
    init_env = await value_of(client, session_id, "open('/proc/1/environ').read()")
    assert "DATAEXEC_TEST_MARKER" not in init_env and HOST_MARKER not in init_env
    pids = await value_of(
        client, session_id, "import os; len([p for p in os.listdir('/proc') if p.isdigit()])"
    )
    assert pids < 10  # its own pid namespace: no host processes


async def test_packages_cannot_be_installed_and_the_message_says_how_to_add_them(
    client: httpx.AsyncClient, session_id: str
) -> None:
    response = await client.post(
        f"/sessions/{session_id}/execute", json={"code": "%pip install requests"}
    )
    detail = response.json()["detail"]
    assert detail["type"] == "EXECUTION_ERROR"
    assert "not possible" in detail["evalue"] and "build-image" in detail["evalue"]
    # Nor around the magic: the kernel's Python has no pip at all.
    pip = await value_of(
        client,
        session_id,
        "import json, subprocess, sys\n"
        "p = subprocess.run([sys.executable, '-m', 'pip', 'install', 'six'],"
        " capture_output=True, text=True)\njson.dumps([p.returncode, p.stderr])",
    )
    returncode, stderr = json.loads(pip)
    assert returncode != 0 and "No module named pip" in stderr


async def test_warm_kernels_have_pandas_imported(
    client: httpx.AsyncClient, session_id: str
) -> None:
    # Asked in the session's first cell, before any cell imports them: the warm-up did.
    answer = await ok(
        client,
        session_id,
        "import sys; str(sorted(m for m in ('pandas', 'numpy', 'pyarrow') if m in sys.modules))",
    )
    assert answer["data"]["rows"] == [["['numpy', 'pandas', 'pyarrow']"]]
    assert await value_of(client, session_id, "pd.__name__ + np.__name__") == "pandasnumpy"
