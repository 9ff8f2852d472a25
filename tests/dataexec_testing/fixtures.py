"""The shared server and what tests take from it, as pytest fixtures (a plugin module).

This module owns: ``api``, one server for the whole run per sandbox (a kernel costs about a
second to start, so servers are shared), started with a marker in this process's environment
(``host_marker``) that no kernel may see; ``client``, an HTTP client of tenant A on it; and
``session_id``, a fresh session id whose session ends with the test. Tests that break kernels
on purpose use their own pools (``small``, ``tiny`` in ``api.CONFIG``) so that they cannot
starve the others. Registered from ``tests/conftest.py``; the helpers it builds on are in
``api.py``.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from dataexec_testing.api import (
    HOST_MARKER,
    SANDBOXES,
    RunningServer,
    docker_missing,
    docker_ready,
    make_settings,
    remove_host_places,
    start_server,
)
from server.config.loading import RUNSC_MIN_PIDS
from server.embedded.postgres import EmbeddedPostgres


@pytest.fixture(scope="session", autouse=True)
def _host_places_removed() -> Iterator[None]:
    """The test servers' runtime dirs and cgroup parents do not outlive the run."""
    yield
    remove_host_places()


@pytest.fixture(scope="session")
def host_marker() -> Iterator[str]:
    """``HOST_MARKER`` in this process's environment for the rest of the run (test_sandbox.py
    asserts that no kernel sees it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOST_MARKER, "host-secret-env")
        yield HOST_MARKER


@pytest.fixture(scope="session", params=SANDBOXES)
async def api(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    embedded_pg: EmbeddedPostgres,
    host_marker: str,
) -> AsyncIterator[RunningServer]:
    """The shared server, once per sandbox: two tenants, three pools, warmed before use.

    Without a Docker engine and kernel image the docker half skips on a developer machine
    and fails in CI (or with DATAEXEC_REQUIRE_DOCKER=1): a sandbox never tested would pass.
    """
    # "docker-runsc": the docker sandbox with gVisor's runtime in every pool
    sandbox, _, runtime = request.param.partition("-")
    settings = make_settings(
        tmp_path_factory.mktemp("api"),
        DATAEXEC_SANDBOX=sandbox,
        DATAEXEC_DATABASE_URL=embedded_pg.query_url.render_as_string(hide_password=False),
    )
    if runtime:
        pools = settings.pools.items()
        settings = settings.replace(
            pools={
                name: dataclasses.replace(
                    pool, docker_runtime=runtime, pids=max(pool.pids, RUNSC_MIN_PIDS)
                )
                for name, pool in pools
            }
        )
    if sandbox == "docker" and not docker_ready(settings):
        docker_missing(
            f"no Docker engine with the kernel image and runtime {runtime or 'runc'} "
            "(scripts/docker-engine, build-image)"
        )
    server = await start_server(settings, env={"DATAEXEC_TEST_MARKER": "server-secret-env"})
    await server.runtime.wait_warm()
    yield server
    await server.stop()


@pytest.fixture
async def client(api: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of tenant A on the shared server."""
    async with api.client() as http:
        yield http


@pytest.fixture
async def session_id(api: RunningServer) -> AsyncIterator[str]:
    """A fresh session id; the session (in any tenant) ends with the test, freeing its kernel."""
    name = "test-" + secrets.token_hex(6)
    yield name
    for tenant in api.settings.tenants.values():
        if (tenant.name, name) in api.runtime.sessions.sessions:
            await api.runtime.sessions.delete(tenant, name)
