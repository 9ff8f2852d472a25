"""The sandbox contract: what every sandbox guarantees, checked from inside real kernels.

Each test runs once per sandbox (``SANDBOXES``: bubblewrap and docker), in a kernel of the
shared server, so a new sandbox is added to that list and must pass all of them. A kernel:

- runs as the unprivileged kernel uid, with no capabilities and no_new_privs set;
- has no network: only ``lo``, and the host's loopback cannot be reached;
- reaches no unix socket of the host (Docker's, containerd's, PostgreSQL's, the server's
  runtime and state dirs): the only one it sees is its own broker;
- writes only to ``/tmp`` and its socket dir, and ``/tmp`` is size-capped;
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

from server.embedded.postgres import EmbeddedPostgres

pytestmark = pytest.mark.parametrize("api", SANDBOXES, indirect=True)

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
    assert status["NoNewPrivs"].strip() == "1"


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


async def test_kernel_writes_only_to_tmp_and_its_socket_dir(
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
     '/dataexec/lib/dataexec_kernel', '/tmp', '/dataexec/rw']})""",
        )
    )
    assert {d for d, ok in writable.items() if ok} == {"/tmp", "/dataexec/rw"}, writable


async def test_tmp_is_size_capped(
    api: RunningServer, client: httpx.AsyncClient, session_id: str
) -> None:
    cap_mb = api.settings.pools["default"].tmp_mb
    outcome = await value_of(
        client,
        session_id,
        f"""
import errno, json, os
written = 0
try:
    with open('/tmp/fill', 'wb') as fh:
        for _ in range({cap_mb + 16}):
            fh.write(b'x' * (1 << 20))
            fh.flush()
            written += 1
    outcome = 'filled'
except OSError as exc:
    outcome = errno.errorcode[exc.errno]
finally:
    os.remove('/tmp/fill')
json.dumps([outcome, written])""",
    )
    stopped_by, written_mb = json.loads(outcome)
    assert stopped_by == "ENOSPC"
    assert cap_mb - 16 < written_mb <= cap_mb  # stopped at the cap, not 16 MiB after it


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
