"""The zygote sandbox's own behaviour, on a real server: what forked kernels share and do not,
templates renewed after ``zygote_renew_after`` kernels, a template that dies, and ``auto``
choosing it where no Docker engine answers.

The confinement of its kernels is ``test_sandbox.py``'s and the adversarial suite's (both run
once per sandbox, the zygote included); these are what only a forked kernel can get wrong.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from dataexec_testing.api import CONFIG, RunningServer, ok, server_on, value_of, wait_for

from server.embedded.postgres import EmbeddedPostgres
from server.kernels.zygote import Zygote, ZygoteSandbox

# What a forked kernel could inherit from its template: the random generators' states and
# the str hash seed (shared by one template's kernels).
INHERITED = "import random\nstr([random.random(), float(np.random.random()), hash('dataexec')])"


def sandbox_of(server: RunningServer) -> ZygoteSandbox:
    sandbox = server.runtime.sandbox
    assert isinstance(sandbox, ZygoteSandbox)
    return sandbox


async def test_forked_kernels_have_their_own_randomness_and_templates_are_renewed(
    embedded_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    async with server_on(
        embedded_pg, tmp_path, CONFIG, DATAEXEC_SANDBOX="zygote", DATAEXEC_ZYGOTE_RENEW_AFTER="2"
    ) as server:
        sandbox = sandbox_of(server)
        first = sandbox.zygote
        assert first is not None
        async with server.client() as client:
            seen = [eval(await value_of(client, "fork-0", INHERITED))]
            # Past two forks (the pool's two idle kernels, then fork-0's replacement) a
            # fresh template warms up beside the first, which forks on meanwhile.
            await wait_for(lambda: _ready_to_take_over(sandbox))
            assert sandbox.zygote is first and first.forks == 3
            for n in range(1, 4):  # the tenant's share of the pool
                seen.append(eval(await value_of(client, f"fork-{n}", INHERITED)))
            # It took over at the next fork; the first one retired.
            assert sandbox.zygote is not first and first in sandbox.retired
            python_randoms = {s[0] for s in seen}
            numpy_randoms = {s[1] for s in seen}
            assert len(python_randoms) == len(numpy_randoms) == 4
            # fork-3's kernel is the first the fresh template forked: its own hash seed.
            assert len({s[2] for s in seen}) == 2
            # A fresh template warms up at a lower priority; its kernels get the server's.
            niceness = "__import__('os').getpriority(__import__('os').PRIO_PROCESS, 0)"
            assert await value_of(client, "fork-3", niceness) == os.getpriority(os.PRIO_PROCESS, 0)
            # The first kernel's template has retired; the kernel still works.
            assert await value_of(client, "fork-0", "6 * 7") == 42
            retired = sandbox.retired
            for n in range(4):
                await client.delete(f"/sessions/fork-{n}")
            # A retired template exits with its last kernel.
            await wait_for(lambda: _all_exited(retired), timeout=30)


async def _ready_to_take_over(sandbox: ZygoteSandbox) -> bool:
    return sandbox.successor is not None and sandbox.successor.ready.is_set()


async def _gone(zygote: Zygote) -> bool:
    return not zygote.alive


async def _all_exited(zygotes: list[Zygote]) -> bool:
    return all(z.process.returncode is not None for z in zygotes)


async def test_a_template_that_dies_takes_its_kernels_and_a_new_one_serves(
    embedded_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    async with server_on(embedded_pg, tmp_path, CONFIG, DATAEXEC_SANDBOX="zygote") as server:
        async with server.client() as client:
            await ok(client, "before", "x = 1")
            zygote = sandbox_of(server).zygote
            assert zygote is not None
            os.kill(zygote.process.pid, signal.SIGKILL)
            await asyncio.wait_for(zygote.process.wait(), 10)
            await wait_for(lambda: _gone(zygote))
            # Its kernels went with it; the session says so and goes on in a new kernel.
            answer = await client.post("/sessions/before/execute", json={"code": "1 + 1"})
            assert answer.status_code in (200, 500), answer.text
            if answer.status_code == 500:
                assert answer.json()["detail"]["type"] == "KERNEL_DIED"
            assert await value_of(client, "before", "2 + 2") == 4
            assert await value_of(client, "after", "3 + 3") == 6
            renewed = sandbox_of(server).zygote
            assert renewed is not None and renewed is not zygote and renewed.alive


async def test_auto_picks_the_zygote_where_no_docker_engine_answers(
    embedded_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    # The README's first command on a machine without Docker: sandbox "auto".
    async with server_on(
        embedded_pg,
        tmp_path,
        CONFIG,
        DATAEXEC_SANDBOX="auto",
        DATAEXEC_DOCKER_URL=f"unix://{tmp_path}/no-engine.sock",
    ) as server:
        assert server.runtime.sandbox.name == "zygote"
        async with server.client() as client:
            assert await value_of(client, "auto", "1 + 1") == 2
            health = await client.get("/health")
            assert health.status_code == 200, health.text
