"""What code inside a kernel can and cannot reach, checked from inside real kernels.

The no-network test listens on the host's loopback only and asserts the kernel cannot
connect; no test sends traffic anywhere else.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import httpx
from dataexec_testing.api import RunningServer, connect_from_kernel, ok, value_of

from server.embedded.postgres import EmbeddedPostgres


async def test_kernel_runs_as_an_unprivileged_user(
    client: httpx.AsyncClient, session_id: str
) -> None:
    ids = await value_of(
        client, session_id, "import os; str((os.getuid(), os.geteuid(), os.getgid()))"
    )
    assert ids == "(60001, 60001, 60001)"
    caps = await value_of(
        client,
        session_id,
        "[l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1]",
    )
    assert int(caps, 16) == 0


async def test_kernel_cannot_connect_to_the_hosts_loopback(
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
    assert outcome != "connected"
    assert accepted == []
    assert interfaces == "['lo']"


async def test_unix_sockets_of_the_host_are_out_of_reach(
    api: RunningServer, client: httpx.AsyncClient, session_id: str, embedded_pg: EmbeddedPostgres
) -> None:
    # Neither the Docker socket nor PostgreSQL's socket directory is in the sandbox at all,
    # and the only socket a kernel can reach is its own broker.
    paths = [
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/run/postgresql",
        "/var/run/postgresql",
        str(api.settings.runtime_dir),
        "/tmp/.s.PGSQL.5432",
        str(embedded_pg.socket_dir),
        str(embedded_pg.socket_dir / ".s.PGSQL.5432"),
    ]
    assert (embedded_pg.socket_dir / f".s.PGSQL.{embedded_pg.port}").exists()
    found = await value_of(
        client, session_id, f"import os\nstr([p for p in {paths!r} if os.path.exists(p)])"
    )
    assert found == "[]"
    sockets = await value_of(
        client,
        session_id,
        """
import os, stat
found = []
for root, dirs, files in os.walk('/', onerror=lambda e: None):
    if root.startswith(('/proc', '/sys')):
        dirs[:] = []
        continue
    for name in files:
        try:
            if stat.S_ISSOCK(os.lstat(os.path.join(root, name)).st_mode):
                found.append(os.path.join(root, name))
        except OSError:
            pass
str(sorted(f for f in found if not f.startswith('/dataexec/rw/')))""",
    )
    assert sockets == "['/dataexec/srv/broker.sock']"
    mounts = await value_of(
        client, session_id, "str(sorted({l.split()[4] for l in open('/proc/self/mountinfo')}))"
    )
    assert "/run" not in mounts and "/var" not in mounts


async def test_kernel_writes_only_to_tmp_and_its_socket_dir(
    client: httpx.AsyncClient, session_id: str
) -> None:
    results = await value_of(
        client,
        session_id,
        """
import os, sys
outcome = {}
for path in ['/tmp/ok.txt', '/dataexec/rw/ok.txt', '/usr/evil', '/etc/evil', '/evil',
             '/dataexec/srv/evil', '/dataexec/lib/evil', sys.prefix + '/evil']:
    try:
        with open(path, 'w') as fh:
            fh.write('x')
        outcome[path] = 'written'
    except OSError as exc:
        outcome[path] = type(exc).__name__
str(outcome)""",
    )
    outcome = eval(results)  # noqa: S307 (our own repr of a dict of strings)
    assert outcome.pop("/tmp/ok.txt") == "written"
    assert outcome.pop("/dataexec/rw/ok.txt") == "written"
    assert all(v != "written" for v in outcome.values()), outcome


async def test_tmp_is_size_capped(client: httpx.AsyncClient, session_id: str) -> None:
    outcome = await value_of(
        client,
        session_id,
        """
chunk = b'x' * (1 << 20)
written = 0
try:
    with open('/tmp/fill', 'wb') as fh:
        for _ in range(400):
            fh.write(chunk)
            fh.flush()
            written += 1
except OSError as exc:
    written = -written
import os
os.remove('/tmp/fill')
written""",
    )
    assert -260 < outcome < 0  # stopped near the 256 MiB cap, not after 400 MiB


async def test_kernel_cannot_see_the_servers_environment_or_files(
    api: RunningServer, client: httpx.AsyncClient, session_id: str
) -> None:
    env = await value_of(client, session_id, "import os; str(sorted(os.environ))")
    assert "DATAEXEC_TEST_MARKER" not in env
    assert "DATAEXEC_TOKEN" not in env and "AGENT_SECRET_TOKEN" not in env
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
    assert "DATAEXEC_TEST_MARKER" not in init_env
    pids = await value_of(
        client, session_id, "import os; len([p for p in os.listdir('/proc') if p.isdigit()])"
    )
    assert pids < 10  # its own pid namespace: no host processes


async def test_pip_install_fails_with_a_clear_message(
    client: httpx.AsyncClient, session_id: str
) -> None:
    response = await client.post(
        f"/sessions/{session_id}/execute", json={"code": "%pip install requests"}
    )
    detail = response.json()["detail"]
    assert detail["type"] == "EXECUTION_ERROR"
    assert "not possible" in detail["evalue"] and "build-image" in detail["evalue"]


async def test_warm_kernels_have_pandas_imported(
    client: httpx.AsyncClient, session_id: str
) -> None:
    answer = await ok(
        client,
        session_id,
        "import sys; str(sorted(m for m in ('pandas', 'numpy', 'pyarrow') if m in sys.modules))",
    )
    assert answer["data"]["rows"] == [["['numpy', 'pandas', 'pyarrow']"]]
    assert await value_of(client, session_id, "pd.__name__ + np.__name__") == "pandasnumpy"
