"""The Docker sandbox against a real engine, the real kernel image and real kernels.

Kernels are started through ``DockerSandbox`` in kernel directories made by ``KernelDir``
and driven over their ipc sockets with jupyter_client's blocking client, as the server does.
Every container these tests start carries the test run's runtime dir as its label, and the
fixtures remove all of them at teardown; a failed test prints its containers' logs and state.

Without an engine or the image these tests skip on a developer machine, and fail in CI
(``CI`` set) or wherever ``DATAEXEC_REQUIRE_DOCKER=1``: a sandbox that is never tested
there would pass by skipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

import docker
import docker.errors
import pandas as pd
import pyarrow as pa
import pytest
import pytest_asyncio
import requests.exceptions
from jupyter_client import BlockingKernelClient
from jupyter_client.connect import KernelConnectionInfo

from server.config import MiB, Settings, load_settings
from server.errors import SandboxUnavailable
from server.kernels.docker import (
    CPU_PERIOD_US,
    LABEL_KERNEL,
    LABEL_POOL,
    LABEL_RUNTIME_DIR,
    DockerKernel,
    DockerSandbox,
)
from server.kernels.kerneldir import (
    KernelDir,
    install_kernel_lib,
    new_connection_info,
    remove_kernel_dir,
)
from server.kernels.sandbox import LaunchSpec, Limits

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="module")]

REQUIRE_DOCKER = bool(os.environ.get("CI")) or os.environ.get("DATAEXEC_REQUIRE_DOCKER") == "1"
KERNEL_UID = 60001
READY_TIMEOUT_S = 60.0
CELL_TIMEOUT_S = 30.0
DEFAULT_LIMITS = Limits(
    memory_bytes=1024 * MiB, cpus=1.0, pids=256, tmp_bytes=64 * MiB, rw_bytes=16 * MiB
)


def _settings(runtime_dir: Path, state_dir: Path, **overrides: Any) -> Settings:
    env = {
        name: os.environ[name]
        for name in ("DATAEXEC_DOCKER_IMAGE", "DATAEXEC_DOCKER_URL")
        if name in os.environ
    }
    return load_settings(
        env=env,
        overrides={
            "runtime_dir": str(runtime_dir),
            "state_dir": str(state_dir),
            "kernel_uid": KERNEL_UID,
            **overrides,
        },
    )


@pytest.fixture(scope="module")
def runtime_dir() -> Iterator[Path]:
    """A short runtime dir of this module's own (socket paths must fit 108 bytes)."""
    if os.geteuid() != 0:
        _missing("the server side of these tests runs as root (kernel dirs mount a tmpfs)")
    path = Path(f"/run/dxd-{secrets.token_hex(3)}")
    path.mkdir(mode=0o711)
    yield path
    for kdir in (path / "k").glob("*"):
        remove_kernel_dir(kdir)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def settings(runtime_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return _settings(runtime_dir, tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[docker.DockerClient]:
    """A docker-py client for assertions and cleanup; skips or fails when Docker is missing."""
    try:
        client = (
            docker.DockerClient(base_url=settings.docker_url, version="auto", timeout=30)
            if settings.docker_url
            else docker.from_env(version="auto", timeout=30)
        )
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        _missing(f"no Docker engine answers ({exc}); run scripts/docker-engine")
    try:
        client.images.get(settings.docker_image)
    except docker.errors.ImageNotFound:
        _missing(f"the kernel image {settings.docker_image} is missing; run `dataexec build-image`")
    yield client
    _remove_labelled(client, settings.runtime_dir)
    client.close()


def _missing(reason: str) -> NoReturn:
    if REQUIRE_DOCKER:
        pytest.fail(
            f"Docker is required here (CI or DATAEXEC_REQUIRE_DOCKER=1): {reason}", pytrace=False
        )
    pytest.skip(reason)


def _labelled(client: docker.DockerClient, runtime_dir: Path) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{LABEL_RUNTIME_DIR}={runtime_dir}"})


def _remove_labelled(client: docker.DockerClient, runtime_dir: Path) -> None:
    for container in _labelled(client, runtime_dir):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def _print_debug(client: docker.DockerClient, runtime_dir: Path) -> None:
    """What a failing test's containers said and how they ended (shown by pytest on failure)."""
    for container in _labelled(client, runtime_dir):
        state = container.attrs["State"]
        print(f"--- container {container.short_id} {container.labels} state={json.dumps(state)}")
        print(container.logs(tail=200).decode(errors="replace"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox(settings: Settings, engine: docker.DockerClient) -> AsyncIterator[DockerSandbox]:
    box = DockerSandbox(settings)
    yield box
    await box.close()


@pytest.fixture
def debug_docker(
    request: pytest.FixtureRequest, engine: docker.DockerClient, settings: Settings
) -> Iterator[None]:
    """On failure, print the logs and state of every container of this run."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        _print_debug(engine, settings.runtime_dir)


@dataclass
class Kernel:
    """A kernel started for a test: its sandbox handle, its directory and a client."""

    sandboxed: DockerKernel
    kdir: KernelDir
    client: BlockingKernelClient

    async def stop(self) -> None:
        self.client.stop_channels()
        await self.sandboxed.kill()
        self.kdir.remove()


async def start_kernel(
    sandbox: DockerSandbox,
    settings: Settings,
    limits: Limits = DEFAULT_LIMITS,
    pool: str = "default",
    env: dict[str, str] | None = None,
) -> Kernel:
    """Launch a kernel the way the server does and wait until it answers kernel_info."""
    lib_dir = install_kernel_lib(settings.runtime_dir)
    kernel_id = uuid.uuid4().hex
    kdir = KernelDir.create(settings.runtime_dir, kernel_id, settings.kernel_uid, limits.rw_bytes)
    info = new_connection_info(kdir)
    kdir.write_connection_file(info)
    spec = LaunchSpec(
        kernel_id=kernel_id,
        kernel_dir=kdir.root,
        lib_dir=lib_dir,
        limits=limits,
        pool=pool,
        env=env or {},
    )
    sandboxed = await sandbox.launch(spec)
    client = BlockingKernelClient()
    client.load_connection_info(cast(KernelConnectionInfo, info))
    client.start_channels()
    kernel = Kernel(sandboxed, kdir, client)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    while True:
        try:
            await asyncio.to_thread(client.wait_for_ready, 2)
            return kernel
        except RuntimeError:
            code = await sandboxed.poll()
            if code is not None or loop.time() > deadline:
                await kernel.stop()
                raise AssertionError(f"kernel did not become ready (exit code {code})") from None


@pytest_asyncio.fixture(loop_scope="module")
async def kernels(
    sandbox: DockerSandbox, settings: Settings, debug_docker: None
) -> AsyncIterator[Callable[..., Awaitable[Kernel]]]:
    """Start kernels for one test; all are stopped at its end."""
    started: list[Kernel] = []

    async def start(**kwargs: Any) -> Kernel:
        kernel = await start_kernel(sandbox, settings, **kwargs)
        started.append(kernel)
        return kernel

    yield start
    for kernel in started:
        await kernel.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(
    sandbox: DockerSandbox, settings: Settings, engine: docker.DockerClient
) -> AsyncIterator[Kernel]:
    """One kernel for the tests that only look around, started with a marker in our env."""
    os.environ["DATAEXEC_TEST_DOCKER_MARKER"] = "server-secret-" + secrets.token_hex(4)
    try:
        kernel = await start_kernel(sandbox, settings)
    finally:
        del os.environ["DATAEXEC_TEST_DOCKER_MARKER"]
    yield kernel
    await kernel.stop()


@dataclass
class Cell:
    """What one executed cell produced."""

    status: str
    result: str | None
    stdout: str
    error: dict[str, Any] | None


def _execute(client: BlockingKernelClient, code: str, timeout: float) -> Cell:
    stdout: list[str] = []
    result: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        content = msg["content"]
        if msg["msg_type"] == "stream" and content["name"] == "stdout":
            stdout.append(content["text"])
        elif msg["msg_type"] == "execute_result":
            result.append(content["data"]["text/plain"])

    reply = client.execute_interactive(code, timeout=timeout, output_hook=hook, allow_stdin=False)[
        "content"
    ]
    error = reply if reply["status"] == "error" else None
    return Cell(reply["status"], result[0] if result else None, "".join(stdout), error)


async def run(kernel: Kernel, code: str, seconds: float = CELL_TIMEOUT_S) -> Cell:
    """Execute code in the kernel (off the event loop) and return what it produced."""
    return await asyncio.to_thread(_execute, kernel.client, code, seconds)


async def value(kernel: Kernel, expression: str) -> Any:
    """The value of a Python expression in the kernel, passed back as JSON."""
    cell = await run(kernel, f"import json as _j; print(_j.dumps({expression}))")
    assert cell.status == "ok", cell.error
    return json.loads(cell.stdout)


def wait_for_stdout(client: BlockingKernelClient, msg_id: str, text: str) -> None:
    """Read the kernel's iopub until the cell ``msg_id`` prints ``text`` (blocking)."""
    while True:
        msg = client.get_iopub_msg(timeout=CELL_TIMEOUT_S)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "stream"
            and text in msg["content"]["text"]
        ):
            return


async def wait_for_exit(kernel: DockerKernel, seconds: float = 60.0) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        code = await kernel.poll()
        if code is not None:
            return code
        await asyncio.sleep(0.2)
    raise AssertionError("the kernel container did not stop in time")


async def test_kernel_answers_and_keeps_state_across_cells(shared: Kernel) -> None:
    assert (await run(shared, "1+1")).result == "2"
    assert (await run(shared, "x = 40")).status == "ok"
    assert (await run(shared, "x + 2")).result == "42"


async def test_warm_imports_are_done_before_the_kernel_is_ready(shared: Kernel) -> None:
    # Asked before any cell imports them: the warm-up did.
    assert await value(
        shared, "[m in __import__('sys').modules for m in ('pandas', 'numpy', 'pyarrow')]"
    ) == [True, True, True]


async def test_kernel_is_a_running_labelled_locked_down_container(
    shared: Kernel, settings: Settings, engine: docker.DockerClient
) -> None:
    assert await shared.sandboxed.poll() is None
    attrs = engine.api.inspect_container(shared.sandboxed.container_id)
    labels = attrs["Config"]["Labels"]  # the image's own labels are merged in
    assert {k: labels.get(k) for k in (LABEL_KERNEL, LABEL_POOL, LABEL_RUNTIME_DIR)} == {
        LABEL_KERNEL: shared.sandboxed.kernel_id,
        LABEL_POOL: "default",
        LABEL_RUNTIME_DIR: str(settings.runtime_dir),
    }
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Init"] is True
    assert host["AutoRemove"] is False
    assert host["PidsLimit"] == DEFAULT_LIMITS.pids
    assert host["Memory"] == host["MemorySwap"] == DEFAULT_LIMITS.memory_bytes
    assert (host["CpuPeriod"], host["CpuQuota"]) == (CPU_PERIOD_US, CPU_PERIOD_US)
    assert host["Tmpfs"] == {"/tmp": f"size={DEFAULT_LIMITS.tmp_bytes},mode=1777,nosuid,nodev"}
    assert attrs["Config"]["User"] == f"{KERNEL_UID}:{KERNEL_UID}"


async def test_kernel_contents_import_and_draw_a_chart(shared: Kernel) -> None:
    cell = await run(
        shared,
        """
import matplotlib.pyplot as plt, seaborn, scipy.stats, sklearn.linear_model, statsmodels.api
import pyarrow as pa, dataexec_kernel
fig = plt.figure(); plt.plot([1, 2, 3]); fig.savefig('/tmp/chart.png'); plt.close(fig)
print(pd.__version__, pa.__version__, dataexec_kernel.__file__)
""",
        seconds=60,
    )
    assert cell.status == "ok", cell.error
    pandas_version, pyarrow_version, kernel_package = cell.stdout.split()
    # One constraints file for server and image: frames cross with the same versions.
    assert (pandas_version, pyarrow_version) == (pd.__version__, pa.__version__)
    assert kernel_package.startswith("/dataexec/lib/")  # the bound package wins over the image's


async def test_memory_use_is_reported(shared: Kernel) -> None:
    used = await shared.sandboxed.memory_bytes()
    assert used is not None and 20 * MiB < used < DEFAULT_LIMITS.memory_bytes


async def test_kernel_runs_as_an_unprivileged_user_without_capabilities(shared: Kernel) -> None:
    ids = await value(
        shared,
        "[__import__('os').getuid(), __import__('os').geteuid(), "
        "__import__('os').getgid(), __import__('os').getegid()]",
    )
    assert ids == [KERNEL_UID] * 4
    status = dict(
        line.split(":\t", 1)
        for line in (await value(shared, "open('/proc/self/status').read()")).splitlines()
        if ":\t" in line
    )
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"  # the engine's default filter


async def test_only_tmp_and_the_kernel_rw_dir_are_writable(shared: Kernel) -> None:
    probe = """
import os
def writable(directory):
    path = os.path.join(directory, 'probe-' + str(os.getpid()))
    try:
        with open(path, 'w') as fh:
            fh.write('x')
    except OSError:
        return False
    os.unlink(path)
    return True
print(__import__('json').dumps({d: writable(d) for d in
      ['/', '/etc', '/opt/venv', '/opt/venv/lib/python3.11/site-packages', '/usr/lib',
       '/var/tmp', '/root', '/home', '/dataexec', '/dataexec/srv', '/dataexec/lib',
       '/dataexec/lib/dataexec_kernel', '/tmp', '/dataexec/rw']}))
"""
    cell = await run(shared, probe)
    assert cell.status == "ok", cell.error
    writable = json.loads(cell.stdout)
    assert {d for d, ok in writable.items() if ok} == {"/tmp", "/dataexec/rw"}, writable


async def test_tmp_is_capped_at_its_size(shared: Kernel) -> None:
    cell = await run(
        shared,
        f"""
import os
try:
    with open('/tmp/fill', 'wb') as fh:
        for _ in range({DEFAULT_LIMITS.tmp_bytes // MiB + 16}):
            fh.write(b'x' * {MiB})
            fh.flush()
    print('filled')
except OSError as exc:
    print(exc.errno == __import__('errno').ENOSPC)
finally:
    os.unlink('/tmp/fill')
""",
    )
    assert cell.stdout.strip() == "True", cell


async def test_pip_install_fails_inside_a_kernel(shared: Kernel) -> None:
    cell = await run(
        shared,
        "import subprocess, sys\n"
        "p = subprocess.run([sys.executable, '-m', 'pip', 'install', 'six'],"
        " capture_output=True, text=True)\nprint(p.returncode, p.stderr)",
    )
    assert cell.status == "ok", cell.error
    assert cell.stdout.split()[0] != "0" and "No module named pip" in cell.stdout
    magic = await run(shared, "%pip install six")
    assert magic.status == "error" and magic.error is not None
    assert "not possible" in magic.error["evalue"]


async def test_kernel_cannot_see_the_server_environment(shared: Kernel) -> None:
    environ = await value(shared, "dict(__import__('os').environ)")
    assert "DATAEXEC_TEST_DOCKER_MARKER" not in environ
    assert not any("server-secret-" in v for v in environ.values())
    # Only what LaunchSpec.kernel_env gives, the image's ENV and the engine's HOSTNAME.
    assert environ["PYTHONPATH"] == "/dataexec/lib" and environ["HOME"] == "/tmp"
    assert "DOCKER_HOST" not in environ and "PIP_FIND_LINKS" not in environ


async def test_kernel_has_no_network_not_even_to_the_host_loopback(shared: Kernel) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        cell = await run(
            shared,
            f"""
import socket
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=3).close()
    print('connected')
except OSError as exc:
    print(type(exc).__name__)
""",
        )
        assert cell.status == "ok", cell.error
        assert cell.stdout.strip() in ("ConnectionRefusedError", "TimeoutError"), cell.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    interfaces = await value(
        shared, "[l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]]"
    )
    assert interfaces == ["lo"]


async def test_no_host_unix_socket_is_reachable(shared: Kernel, settings: Settings) -> None:
    probe = f"""
import os, socket, stat, json
paths = ['/var/run/docker.sock', '/run/docker.sock', '/run/containerd/containerd.sock',
         '/var/run/postgresql', '/run/postgresql', '/tmp/.s.PGSQL.5432',
         {str(settings.runtime_dir)!r}, {str(settings.state_dir)!r}]
reachable = []
for path in ['/var/run/docker.sock', '/run/docker.sock', '/var/run/postgresql/.s.PGSQL.5432',
             '/run/postgresql/.s.PGSQL.5432']:
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
    if top in ('/proc', '/sys'):
        dirs[:] = []
        continue
    for name in files:
        full = os.path.join(top, name)
        try:
            if stat.S_ISSOCK(os.lstat(full).st_mode):
                sockets.append(full)
        except OSError:
            pass
abstract = [l.split()[-1] for l in open('/proc/net/unix').read().splitlines()[1:]
            if l.split()[-1].startswith('@')]
print(json.dumps({{'exists': [p for p in paths if os.path.exists(p)], 'reachable': reachable,
                  'sockets': sockets, 'abstract': abstract}}))
"""
    cell = await run(shared, probe, seconds=60)
    assert cell.status == "ok", cell.error
    seen = json.loads(cell.stdout)
    assert seen["exists"] == [] and seen["reachable"] == []
    assert seen["sockets"] and all(p.startswith("/dataexec/rw/") for p in seen["sockets"]), seen
    assert seen["abstract"] == []


async def test_memory_limit_ends_the_kernel_as_oom_killed(kernels: Any) -> None:
    limits = Limits(memory_bytes=128 * MiB, cpus=1.0, pids=256, tmp_bytes=16 * MiB, rw_bytes=MiB)
    kernel = await kernels(limits=limits)
    assert await kernel.sandboxed.oom_killed() is False
    # Filled bytes, not calloc'd zeros: the pages must really be touched.
    kernel.client.execute("hog = b'x' * (400 * 1024 * 1024)")
    assert await wait_for_exit(kernel.sandboxed) != 0
    assert await kernel.sandboxed.oom_killed() is True


async def test_pids_limit_stops_a_thread_bomb_with_an_error(kernels: Any) -> None:
    limits = Limits(memory_bytes=512 * MiB, cpus=1.0, pids=64, tmp_bytes=16 * MiB, rw_bytes=MiB)
    kernel = await kernels(limits=limits)
    cell = await run(
        kernel,
        """
import threading
stop = threading.Event()
started, failure = [], None
for _ in range(500):
    t = threading.Thread(target=stop.wait)
    try:
        t.start()
    except RuntimeError as exc:
        failure = str(exc)
        break
    started.append(t)
stop.set()
for t in started:
    t.join()
print(len(started), failure)
""",
    )
    assert cell.status == "ok", cell.error
    count, _, failure = cell.stdout.strip().partition(" ")
    assert int(count) < 64 and "thread" in failure, cell.stdout
    assert (await run(kernel, "1+1")).result == "2"  # the kernel lives on


async def test_interrupt_request_stops_a_running_cell(kernels: Any) -> None:
    kernel = await kernels()
    client = kernel.client
    msg_id = client.execute("import time; print('sleeping', flush=True); time.sleep(60)")
    await asyncio.to_thread(wait_for_stdout, client, msg_id, "sleeping")
    # Message mode, as the server interrupts: the kernel signals itself inside the container.
    client.control_channel.send(client.session.msg("interrupt_request", {}))
    reply = await asyncio.to_thread(client.get_shell_msg, timeout=10)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert await kernel.sandboxed.poll() is None
    assert (await run(kernel, "1+1")).result == "2"


async def test_kill_removes_the_container_and_is_idempotent(
    kernels: Any, engine: docker.DockerClient
) -> None:
    kernel = await kernels()
    container_id = kernel.sandboxed.container_id
    await kernel.sandboxed.kill()
    with pytest.raises(docker.errors.NotFound):
        engine.api.inspect_container(container_id)
    assert await kernel.sandboxed.poll() is not None
    assert await kernel.sandboxed.oom_killed() is False
    assert await kernel.sandboxed.memory_bytes() is None
    await kernel.sandboxed.kill()


async def test_reap_orphans_removes_only_this_runtime_dirs_containers(
    shared: Kernel, settings: Settings, engine: docker.DockerClient
) -> None:
    # A server on another runtime dir starts a kernel and dies without cleaning up.
    other = settings.replace(runtime_dir=Path(f"/run/dxd-{secrets.token_hex(3)}"))
    other.runtime_dir.mkdir(mode=0o711)
    crashed = DockerSandbox(other)
    try:
        orphan = await start_kernel(crashed, other)
        orphan.client.stop_channels()
        await crashed.close()
        restarted = DockerSandbox(other)  # ... and is started again on the same runtime dir
        try:
            assert await restarted.reap_orphans() == 1
            assert await restarted.reap_orphans() == 0
        finally:
            await restarted.close()
        with pytest.raises(docker.errors.NotFound):
            engine.api.inspect_container(orphan.sandboxed.container_id)
        # This module's kernel belongs to another runtime dir: untouched, still running.
        assert await shared.sandboxed.poll() is None
    finally:
        _remove_labelled(engine, other.runtime_dir)
        for kdir in (other.runtime_dir / "k").glob("*"):
            remove_kernel_dir(kdir)
        shutil.rmtree(other.runtime_dir, ignore_errors=True)


async def test_check_and_available_accept_a_working_engine_and_image(
    sandbox: DockerSandbox, settings: Settings
) -> None:
    await sandbox.check()
    assert await asyncio.to_thread(DockerSandbox.available, settings)


async def test_missing_image_is_reported_with_how_to_build_it(
    settings: Settings, engine: Any
) -> None:
    missing = settings.replace(docker_image="dataexec-kernel:no-such-tag")
    box = DockerSandbox(missing)
    try:
        with pytest.raises(SandboxUnavailable, match="dataexec build-image"):
            await box.check()
    finally:
        await box.close()
    assert not await asyncio.to_thread(DockerSandbox.available, missing)


async def test_missing_engine_is_reported_clearly(settings: Settings) -> None:
    nowhere = settings.replace(docker_url=f"unix://{settings.runtime_dir}/no-engine.sock")
    box = DockerSandbox(nowhere)
    try:
        with pytest.raises(SandboxUnavailable, match="no Docker engine answers"):
            await box.check()
    finally:
        await box.close()
    assert not await asyncio.to_thread(DockerSandbox.available, nowhere)
