"""Warm pools with real kernels: one session per kernel, refills, limits that count starts."""

from __future__ import annotations

import asyncio

import httpx
from dataexec_testing.api import RunningServer, assert_error, ok, value_of, wait_for


async def test_a_kernel_is_never_handed_to_a_second_session(
    api: RunningServer, client: httpx.AsyncClient
) -> None:
    tenant = api.settings.tenants["acme"]
    seen = set()
    for round_ in range(4):
        name = f"reuse-{round_}"
        assert await value_of(client, name, "import builtins; hasattr(builtins, 'leak')") is False
        await ok(client, name, "import builtins; builtins.leak = 'from an earlier session'")
        kernel = (await api.runtime.sessions.get(tenant, name)).kernel
        assert kernel is not None and kernel.kernel_id not in seen
        seen.add(kernel.kernel_id)
        await client.delete(f"/sessions/{name}")


async def test_pool_refills_after_sessions_take_its_idle_kernels(
    api: RunningServer, client: httpx.AsyncClient
) -> None:
    pool = api.runtime.pools["default"]
    await wait_for(lambda: _async(len(pool.idle) == pool.settings.min_idle), timeout=30)
    started = pool.started_total
    names = [f"refill-{i}" for i in range(2)]
    for name in names:
        assert (await client.post("/sessions", json={"session_id": name})).status_code == 201
    await wait_for(lambda: _async(len(pool.idle) == pool.settings.min_idle), timeout=30)
    assert pool.started_total >= started + 2
    for name in names:
        await client.delete(f"/sessions/{name}")


async def test_kernels_still_starting_count_toward_max_kernels(
    api: RunningServer, client: httpx.AsyncClient
) -> None:
    pool = api.runtime.pools["tiny"]  # max_kernels = 1, min_idle = 0: every create is cold
    assert pool.total == 0
    answers = await asyncio.gather(
        *[client.post("/sessions", json={"pool": "tiny"}) for _ in range(3)]
    )
    created = [a for a in answers if a.status_code == 201]
    assert len(created) == 1
    for refused in (a for a in answers if a.status_code != 201):
        assert_error(refused, 503, "CAPACITY")
    assert pool.total <= 1
    await client.delete(f"/sessions/{created[0].json()['session_id']}")


async def test_an_idle_kernel_that_dies_is_replaced(
    api: RunningServer, client: httpx.AsyncClient
) -> None:
    pool = api.runtime.pools["default"]
    await wait_for(lambda: _async(len(pool.idle) >= 1), timeout=30)
    victim = pool.idle[0]
    await victim.process.kill()
    await pool.check_idle()
    assert victim not in pool.idle
    answer = await ok(client, "after-death", "1 + 1")
    assert answer["data"]["rows"] == [[2]]
    await client.delete("/sessions/after-death")


async def _async(value: bool) -> bool:
    return value


async def test_a_cold_kernels_first_cell_runs_after_its_chart_warm_up(
    api: RunningServer, client: httpx.AsyncClient
) -> None:
    # tiny: min_idle = 0, warm_charts on. The create answers once pandas is warm; the first
    # cell waits for the chart being drawn meanwhile, and sees none of its output.
    created = await client.post("/sessions", json={"pool": "tiny"})
    assert created.status_code == 201, created.text
    name = created.json()["session_id"]
    try:
        first = await ok(client, name, "import sys; 'matplotlib.pyplot' in sys.modules")
        assert first["data"]["rows"] == [[True]]
        assert [o["output_type"] for o in first["outputs"]] == ["execute_result"]
        assert first["execution_count"] == 1
    finally:
        await client.delete(f"/sessions/{name}")
