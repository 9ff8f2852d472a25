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
    await wait_for(lambda: _async(len(pool.idle) == pool.idle_target()), timeout=30)
    started, target = pool.started_total, pool.idle_target()
    names = [f"refill-{i}" for i in range(2)]
    try:
        for name in names:
            answer = await client.post("/sessions", json={"session_id": name})
            assert answer.status_code == 201
        await wait_for(lambda: _async(len(pool.idle) == pool.idle_target()), timeout=30)
        # The target follows demand: takes of earlier tests leaving its window may lower
        # it meanwhile, and the pool refills only up to the lower target.
        lowered = max(0, target - pool.idle_target())
        assert pool.started_total - started >= 2 - lowered
    finally:
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


CHARTS_WARMED = "import sys; str(['matplotlib.pyplot' in sys.modules, 'plt' in dir()])"


async def test_idle_kernels_of_a_warm_charts_pool_draw_a_chart_before_any_session_uses_them(
    api: RunningServer, client: httpx.AsyncClient
) -> None:
    # default: warm_charts on. Once nothing starts, its idle kernels draw their chart; the
    # first cell finds pyplot imported (waiting for it if need be) and no name left behind.
    pool = api.runtime.pools["default"]
    await wait_for(lambda: _async(len(pool.idle) == pool.idle_target()), timeout=60)
    await wait_for(lambda: _async(pool.starting == 0), timeout=60)
    forked = api.runtime.sandbox.name == "zygote"
    if forked:  # its template drew a chart: the pool draws none in its kernels
        assert pool.idle and all(k._warming is None for k in pool.idle)
    name = (await client.post("/sessions", json={})).json()["session_id"]
    cold = []
    try:
        first = await ok(client, name, CHARTS_WARMED)
        assert first["data"]["rows"] == [["[True, False]"]] and first["execution_count"] == 1
        assert [o["output_type"] for o in first["outputs"]] == ["execute_result"]
        chart = await ok(client, name, "import matplotlib.pyplot as plt\nplt.plot([1, 2])")
        assert [o for o in chart["outputs"] if "image/png" in o.get("data", {})], chart
        # small: warm_charts off. tiny: on, but its kernel starts for a waiting request,
        # which gets it as soon as it is ready: the chart is left to its session (a zygote's
        # kernel has pyplot from its template either way).
        for other in ("small", "tiny"):
            created = await client.post("/sessions", json={"pool": other})
            assert created.status_code == 201, created.text
            cold.append(created.json()["session_id"])
            assert await value_of(client, cold[-1], CHARTS_WARMED) == f"[{forked}, False]"
    finally:
        for session in (name, *cold):
            await client.delete(f"/sessions/{session}")
