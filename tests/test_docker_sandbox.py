"""What only the Docker sandbox has, against a real engine, the real kernel image and kernels.

The contract every sandbox meets (no network, no host socket, read-only but for /tmp, no
server environment, an unprivileged uid, no pip, warm imports) is in ``test_sandbox.py``,
which runs it in Docker too; this module keeps the Docker side: how the container is
configured and labelled (and the two seccomp filters inside it: the engine's and
DataExec's), a pool's runtime (gVisor's runsc, or one the engine lacks), what the image holds,
the container's memory use and OOM state, removing containers and reaping orphans by label,
and the messages when the engine or the image is missing.

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
import platform
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import docker
import docker.errors
import pandas as pd
import pyarrow as pa
import pytest
import pytest_asyncio
import requests.exceptions
from dataexec_testing.api import docker_missing
from jupyter_client import BlockingKernelClient
from jupyter_client.connect import KernelConnectionInfo

from server.config import MiB, Settings, load_settings
from server.errors import SandboxUnavailable
from server.kernels.docker import (
    CPU_PERIOD_US,
    KERNEL_PYTHON,
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
from server.kernels.seccomp import LOADER

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="module")]

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
        docker_missing("the server side of these tests runs as root (kernel dirs mount a tmpfs)")
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
        docker_missing(f"no Docker engine answers ({exc}); run scripts/docker-engine")
    try:
        client.images.get(settings.docker_image)
    except docker.errors.ImageNotFound:
        docker_missing(
            f"the kernel image {settings.docker_image} is missing; run `dataexec build-image`"
        )
    yield client
    _remove_labelled(client, settings.runtime_dir)
    client.close()


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
    """One kernel for the tests that only look around."""
    kernel = await start_kernel(sandbox, settings)
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
    assert host["ShmSize"] == DEFAULT_LIMITS.tmp_bytes  # /dev/shm capped like /tmp
    assert host["Runtime"] == "runc"  # the default pool names none: the engine's default
    assert attrs["Config"]["User"] == f"{KERNEL_UID}:{KERNEL_UID}"
    # The kernel starts under DataExec's filter, installed by the loader in the container.
    assert attrs["Config"]["Cmd"][:5] == [KERNEL_PYTHON, "-I", "-S", "-c", LOADER]
    # Seen from inside: two filters stacked, the engine's default profile and DataExec's.
    status = await value(shared, "open('/proc/self/status').read()")
    assert "\nSeccomp:\t2\n" in status and "\nSeccomp_filters:\t2\n" in status


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


async def test_memory_limit_ends_the_kernel_as_oom_killed(kernels: Any) -> None:
    limits = Limits(memory_bytes=128 * MiB, cpus=1.0, pids=256, tmp_bytes=16 * MiB, rw_bytes=MiB)
    kernel = await kernels(limits=limits)
    assert await kernel.sandboxed.oom_killed() is False
    # Filled bytes, not calloc'd zeros: the pages must really be touched.
    kernel.client.execute("hog = b'x' * (400 * 1024 * 1024)")
    assert await wait_for_exit(kernel.sandboxed) != 0
    assert await kernel.sandboxed.oom_killed() is True


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


async def test_a_runsc_pool_runs_its_kernels_under_gvisor_with_the_filter(
    settings: Settings, engine: docker.DockerClient, debug_docker: None
) -> None:
    if "runsc" not in (engine.info().get("Runtimes") or {}):
        docker_missing(
            "gVisor's runsc is not registered with the engine: run scripts/docker-engine"
        )
    pools = {name: replace(pool, docker_runtime="runsc") for name, pool in settings.pools.items()}
    gvisor = settings.replace(pools=pools)
    box = DockerSandbox(gvisor)
    try:
        await box.check()
        kernel = await start_kernel(box, gvisor)
        try:
            host = engine.api.inspect_container(kernel.sandboxed.container_id)["HostConfig"]
            assert host["Runtime"] == "runsc"
            # gVisor's own kernel answers, not the host's
            assert await value(kernel, "__import__('os').uname().release") != platform.release()
            # gVisor does not apply the engine's profile; DataExec's filter is there all the same
            status = await value(kernel, "open('/proc/self/status').read()")
            assert "\nSeccomp:\t2\n" in status
            assert (await run(kernel, "1+1")).result == "2"
        finally:
            await kernel.stop()
    finally:
        await box.close()


async def test_a_runtime_the_engine_does_not_know_stops_the_start(
    settings: Settings, engine: docker.DockerClient
) -> None:
    # The config accepts runc and runsc only; an engine without runsc is what this stands for.
    pools = {"default": replace(settings.pools["default"], docker_runtime="no-such-runtime")}
    box = DockerSandbox(settings.replace(pools=pools))
    try:
        with pytest.raises(SandboxUnavailable, match="pools.default.docker_runtime"):
            await box.check()
    finally:
        await box.close()
    assert not await asyncio.to_thread(DockerSandbox.available, settings.replace(pools=pools))


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
