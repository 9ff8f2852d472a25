"""Sessions that survive their kernels: checkpoints, restore, restart, variables, lineage.

Kernels here are lost for real: killed from outside through their sandbox while a cell
runs, killed by their own code, or replaced on request; and a whole server is stopped and
a new one started on the same state dir.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from dataexec_testing.api import (
    RunningServer,
    assert_error,
    make_settings,
    ok,
    run,
    server_on,
    start_server,
    value_of,
    wait_for,
)

from server.embedded.postgres import EmbeddedPostgres

pytestmark = pytest.mark.timeout(240)

STEPS = [
    {"language": "sql", "code": "SELECT * FROM flights WHERE month = 1", "result_name": "jan"},
    {"code": "late = jan[jan.dep_delay > 60]"},
    {"code": "by_carrier = late.groupby('carrier').size().rename('n').reset_index()"},
]
FINGERPRINT = "(len(jan), len(late), int(by_carrier.n.sum()), sorted(by_carrier.carrier)[:3])"


async def analysis(client: httpx.AsyncClient, session: str) -> list:
    """Run the first steps of an analysis; the fingerprint of its frames."""
    for request in STEPS:
        response = await client.post(f"/sessions/{session}/execute", json=request)
        assert response.status_code == 200, response.text
    return await value_of(client, session, f"str({FINGERPRINT})")


async def checkpointed(client: httpx.AsyncClient, session: str, *names: str) -> dict:
    """Wait until the named frames have checkpoint keys; the variables answer."""

    async def ready() -> dict | None:
        answer = (await client.get(f"/sessions/{session}/variables")).json()
        keys = {f["name"]: f["cache_key"] for f in answer["frames"]}
        return answer if all(keys.get(n) for n in names) else None

    return await wait_for(ready, timeout=30)


async def kernel_of(api: RunningServer, session: str):
    found = await api.runtime.sessions.get(api.settings.tenants["acme"], session)
    assert found.kernel is not None
    return found.kernel


async def test_a_kernel_killed_mid_analysis_comes_back_with_its_frames(
    api: RunningServer, client: httpx.AsyncClient, session_id: str
) -> None:
    before = await analysis(client, session_id)
    await checkpointed(client, session_id, "jan", "late", "by_carrier")
    kernel = await kernel_of(api, session_id)
    running = asyncio.ensure_future(run(client, session_id, "import time; time.sleep(60)"))
    await wait_for(lambda: _busy(client, session_id))
    await kernel.process.kill()  # from outside: the sandbox's SIGKILL / container kill
    died = await running
    assert_error(died, 500, "KERNEL_DIED")
    answer = await ok(client, session_id, f"str({FINGERPRINT})")
    assert answer["kernel_replaced"] is True
    assert answer["replaced_reason"] == "kernel_died"
    assert sorted(answer["restored_frames"]) == ["by_carrier", "jan", "late"]
    assert answer["data"]["rows"][0][0] == before
    assert (await kernel_of(api, session_id)).kernel_id != kernel.kernel_id
    # The dtypes came back as they were (Arrow round trip, no pickle).
    dtypes = await value_of(client, session_id, "str(jan.dtypes.astype(str).to_dict())")
    assert "'dep_delay': 'float64'" in dtypes


async def _busy(client: httpx.AsyncClient, session: str) -> bool:
    return (await client.get(f"/sessions/{session}")).json()["state"] == "busy"


async def test_a_kernel_that_kills_itself_loses_nothing_checkpointed(
    client: httpx.AsyncClient, session_id: str
) -> None:
    await ok(client, session_id, "kept = pd.DataFrame({'a': range(5)})")
    await checkpointed(client, session_id, "kept")
    died = await run(client, session_id, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert_error(died, 500, "KERNEL_DIED")
    answer = await ok(client, session_id, "int(kept.a.sum())")
    assert answer["data"]["rows"] == [[10]]
    assert answer["restored_frames"] == ["kept"]


async def test_restart_gives_a_fresh_kernel_with_the_frames(
    api: RunningServer, client: httpx.AsyncClient, session_id: str
) -> None:
    before = await analysis(client, session_id)
    await ok(client, session_id, "not_a_frame = 41")
    await checkpointed(client, session_id, "jan", "late", "by_carrier")
    old = (await kernel_of(api, session_id)).kernel_id
    response = await client.post(f"/sessions/{session_id}/restart")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["kernel_replaced"] is True and answer["replaced_reason"] == "restart"
    assert sorted(answer["restored_frames"]) == ["by_carrier", "jan", "late"]
    assert (await kernel_of(api, session_id)).kernel_id != old
    assert await value_of(client, session_id, f"str({FINGERPRINT})") == before
    # Only frames come back: other values were the old kernel's.
    gone = await run(client, session_id, "not_a_frame")
    assert assert_error(gone, 400, "EXECUTION_ERROR")["ename"] == "NameError"
    assert_error(await client.post("/sessions/no-such/restart"), 404, "NOT_FOUND")


async def test_variables_list_frames_with_shape_dtypes_bytes_and_keys(
    client: httpx.AsyncClient, session_id: str
) -> None:
    await ok(client, session_id, "a = pd.DataFrame({'x': [1, 2, 3], 's': list('abc')}); b = a.x")
    answer = await checkpointed(client, session_id, "a")
    [frame] = answer["frames"]  # the Series `b` is not a frame
    assert frame["name"] == "a" and frame["shape"] == [3, 2]
    assert frame["dtypes"] == {"x": "int64", "s": "str"}
    assert frame["bytes"] > 0 and frame["restorable"] is True
    meta = (await client.get(f"/cache/{frame['cache_key']}/meta")).json()
    assert meta["lineage"]["kind"] == "checkpoint" and meta["lineage"]["name"] == "a"
    assert meta["row_count"] == 3
    # An unchanged frame keeps its key; a changed one gets a new one; a deleted one goes.
    await ok(client, session_id, "c = a.copy()")
    again = await checkpointed(client, session_id, "a", "c")
    keys = {f["name"]: f["cache_key"] for f in again["frames"]}
    assert keys["a"] == frame["cache_key"]
    await ok(client, session_id, "a['y'] = a.x * 2; del c")
    changed = await checkpointed(client, session_id, "a")
    assert [f["name"] for f in changed["frames"]] == ["a"]
    assert changed["frames"][0]["cache_key"] != frame["cache_key"]
    assert changed["frames"][0]["shape"] == [3, 3]
    assert_error(await client.get("/sessions/no-such/variables"), 404, "NOT_FOUND")


async def test_a_frame_already_cached_is_not_sent_again(
    client: httpx.AsyncClient, session_id: str
) -> None:
    answer = await client.post(
        f"/sessions/{session_id}/execute",
        json={"language": "sql", "code": "SELECT * FROM airlines", "result_name": "al"},
    )
    result_key = answer.json()["cache_key"]
    variables = await checkpointed(client, session_id, "al")
    assert variables["frames"][0]["cache_key"] == result_key
    # Nor is a frame loaded by key, while it is unchanged.
    await ok(client, session_id, f"again = load({result_key!r})")
    keys = {
        f["name"]: f["cache_key"]
        for f in (await checkpointed(client, session_id, "again"))["frames"]
    }
    assert keys == {"al": result_key, "again": result_key}
    await ok(client, session_id, "again = again.head(3)")
    keys = {
        f["name"]: f["cache_key"]
        for f in (await checkpointed(client, session_id, "again"))["frames"]
    }
    assert keys["again"] != result_key


async def test_lineage_names_code_and_input_keys(
    client: httpx.AsyncClient, session_id: str
) -> None:
    sql = await client.post("/execute", json={"language": "sql", "code": "SELECT * FROM airlines"})
    source = sql.json()["cache_key"]
    meta = (await client.get(f"/cache/{source}/meta")).json()
    assert meta["lineage"]["sql"] == "SELECT * FROM airlines"
    assert meta["lineage"]["inputs"] == []
    step = await client.post(
        "/execute-on-data",
        json={
            "code": "result_df = input_data['al'].head(3)",
            "cache_keys": {"al": source},
            "session_id": session_id,
        },
    )
    assert step.status_code == 200, step.text
    derived = (await client.get(f"/cache/{step.json()['cache_key']}/meta")).json()
    assert derived["lineage"]["inputs"] == [source]
    assert "result_df = input_data['al'].head(3)" in derived["lineage"]["code"]
    assert derived["session_id"] == session_id
    saved = await value_of(client, session_id, f"save(load({source!r}).tail(2), name='last two')")
    saved_meta = (await client.get(f"/cache/{saved}/meta")).json()
    assert saved_meta["lineage"]["kind"] == "save"
    assert saved_meta["lineage"]["name"] == "last two"
    assert saved_meta["lineage"]["inputs"] == [source]
    assert saved_meta["row_count"] == 2
    refused = await run(client, session_id, "save([1, 2])")
    assert assert_error(refused, 400, "EXECUTION_ERROR")["ename"] == "TypeError"
    # Garbage sent straight to the broker is refused as bad input, and the kernel goes on.
    garbage = await run(
        client,
        session_id,
        "from dataexec_kernel import broker, protocol\n"
        "with broker._connect() as s:\n"
        "    s.sendall(protocol.encode_frame({'op': 'put', 'bytes': 5}) + b'junk!')\n"
        "    answer = broker._read_frame(s.makefile('rb'))\n"
        "answer['error']['type']",
    )
    assert garbage.json()["data"]["rows"] == [["VALIDATION_ERROR"]]


RANDOM = "np.random.default_rng({seed}).random({n})"  # incompressible: Parquet as big as Arrow
QUOTA_CONFIG = """
checkpoint_budget_bytes = 600000
[pools.default]
min_idle = 1
max_kernels = 3
[tenants.small]
tokens = ["small-tenant-token-0123456789"]
cache_quota_bytes = 3000000
"""


@pytest.fixture(scope="module")
async def limited(
    tmp_path_factory: pytest.TempPathFactory, embedded_pg: EmbeddedPostgres
) -> AsyncIterator[RunningServer]:
    """A server whose tenant has a 3 MB cache quota and sessions a 600 kB checkpoint budget."""
    async with server_on(embedded_pg, tmp_path_factory.mktemp("limited"), QUOTA_CONFIG) as server:
        yield server


async def test_quota_is_enforced_through_the_api(limited: RunningServer) -> None:
    async with limited.client("small-tenant-token-0123456789") as client:
        session = "quota-" + secrets.token_hex(4)
        big = await run(
            client, session, f"pd.DataFrame({{'x': {RANDOM.format(seed=0, n=500_000)}}})"
        )
        detail = assert_error(big, 400, "QUOTA_EXCEEDED")
        assert "cache quota" in detail["message"]
        # The frame is still in the kernel, and the session goes on.
        assert await value_of(client, session, "len(_)") == 500_000
        keys = [
            await value_of(
                client, session, f"save(pd.DataFrame({{'x': {RANDOM.format(seed=i, n=100_000)}}}))"
            )
            for i in range(1, 6)
        ]
        # Each about 1 MB in a 3 MB quota: the oldest went to make room for the newest.
        answers = [await client.get(f"/cache/{key}/meta") for key in keys]
        statuses = [a.status_code for a in answers]
        assert statuses[-2:] == [200, 200] and 404 in statuses[:3], statuses
        gone = answers[statuses.index(404)].json()["detail"]["message"]
        assert "evicted" in gone


async def test_frames_over_the_checkpoint_budget_are_listed_not_restorable(
    limited: RunningServer,
) -> None:
    async with limited.client("small-tenant-token-0123456789") as client:
        session = "budget-" + secrets.token_hex(4)
        await ok(client, session, "small = pd.DataFrame({'x': range(1000)})")
        await ok(client, session, "huge = pd.DataFrame({'x': np.arange(200_000.0)})")
        answer = await checkpointed(client, session, "small")
        frames = {f["name"]: f for f in answer["frames"]}
        assert frames["huge"]["restorable"] is False
        assert "budget" in frames["huge"]["note"]
        restarted = (await client.post(f"/sessions/{session}/restart")).json()
        assert restarted["restored_frames"] == ["small"]
        assert "huge" in restarted["unrestored_frames"]
        missing = await run(client, session, "huge")
        assert assert_error(missing, 400, "EXECUTION_ERROR")["ename"] == "NameError"


async def test_sessions_outlive_a_server_restart(
    tmp_path: Path, embedded_pg: EmbeddedPostgres
) -> None:
    settings = make_settings(
        tmp_path,
        QUOTA_CONFIG,
        DATAEXEC_DATABASE_URL=embedded_pg.query_url.render_as_string(hide_password=False),
    )
    token = "small-tenant-token-0123456789"
    first = await start_server(settings)
    try:
        async with first.client(token) as client:
            await ok(client, "kept", "t = pd.DataFrame({'a': [1, 2, 3]})")
            await ok(client, "kept", "u = t.assign(b=t.a * 10)")
            await checkpointed(client, "kept", "t", "u")
            await ok(client, "gone", "1")
            assert (await client.delete("/sessions/gone")).status_code == 204
    finally:
        await first.stop()
    second = await start_server(settings)
    try:
        async with second.client(token) as client:
            listed = (await client.get("/sessions")).json()["sessions"]
            assert [s["session_id"] for s in listed] == ["kept"]
            shown = (await client.get("/sessions/kept")).json()
            assert shown["execution_count"] == 2 and shown["state"] == "no_kernel"
            answer = await ok(client, "kept", "int(u.b.sum())")
            assert answer["data"]["rows"] == [[60]]
            assert answer["kernel_replaced"] is True
            assert answer["replaced_reason"] == "server_restart"
            assert sorted(answer["restored_frames"]) == ["t", "u"]
            assert answer["execution_count"] == 3
            assert_error(await client.get("/sessions/gone"), 404, "NOT_FOUND")
    finally:
        await second.stop()
