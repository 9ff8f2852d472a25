"""The HTTP API over a real socket: auth, sessions, execution results and every error shape."""

from __future__ import annotations

import asyncio

import httpx
from dataexec_testing.api import (
    OPERATOR_TOKEN,
    TOKEN_B,
    RunningServer,
    assert_error,
    ok,
    run,
    value_of,
    wait_for,
)


async def test_health_shows_pools_to_the_operator(api: RunningServer) -> None:
    async with api.client(token=OPERATOR_TOKEN) as operator:
        response = await operator.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["db_dialect"] == "postgresql"
    assert body["sandbox"] == api.runtime.sandbox.name
    assert set(body["pools"]) == {"default", "small", "tiny"}
    assert body["pools"]["default"]["max_kernels"] == 8


async def test_missing_or_wrong_token_is_unauthorized(api: RunningServer) -> None:
    for token in (None, "wrong-token-that-is-long-enough"):
        async with api.client(token=token) as http:
            response = await http.get("/sessions")
        assert_error(response, 401, "UNAUTHORIZED")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    async with httpx.AsyncClient(base_url=api.url) as raw:
        response = await raw.get("/sessions", headers={"Authorization": "Basic abc"})
    assert_error(response, 401, "UNAUTHORIZED")


async def test_operator_token_sees_pools_but_cannot_run_code(api: RunningServer) -> None:
    async with api.client(token=OPERATOR_TOKEN) as operator:
        pools = await operator.get("/pools")
        assert pools.status_code == 200
        assert pools.json()["pools"]["small"]["memory_mb"] == 256
        assert_error(await operator.post("/execute", json={"code": "1"}), 403, "FORBIDDEN")
    async with api.client() as tenant:
        assert_error(await tenant.get("/pools"), 403, "FORBIDDEN")


async def test_session_create_answers_201_with_location(
    client: httpx.AsyncClient, session_id: str
) -> None:
    response = await client.post("/sessions", json={"session_id": session_id})
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/sessions/{session_id}"
    body = response.json()
    assert body["session_id"] == session_id
    assert body["state"] == "idle" and body["kernel"]["status"] == "ready"
    assert body["pool"] == "default" and body["execution_count"] == 0
    assert_error(await client.post("/sessions", json={"session_id": session_id}), 409, "CONFLICT")


async def test_session_without_id_gets_a_generated_one(client: httpx.AsyncClient) -> None:
    response = await client.post("/sessions")
    assert response.status_code == 201
    generated = response.json()["session_id"]
    assert len(generated) == 32
    assert (await client.get(f"/sessions/{generated}")).status_code == 200


async def test_bad_session_ids_and_pools_are_rejected(client: httpx.AsyncClient) -> None:
    for bad in ("", "a" * 129, "has space", "slash/inside", "ü"):
        assert_error(
            await client.post("/sessions", json={"session_id": bad}), 400, "VALIDATION_ERROR"
        )
    assert_error(
        await client.post("/sessions/has%20space/execute", json={"code": "1"}),
        400,
        "VALIDATION_ERROR",
    )
    assert_error(await client.post("/sessions", json={"pool": "nope"}), 400, "VALIDATION_ERROR")
    assert_error(await client.post("/sessions", json={"session_id": 5}), 400, "VALIDATION_ERROR")


async def test_tenant_may_not_use_a_pool_it_is_not_given(api: RunningServer) -> None:
    async with api.client(token=TOKEN_B) as globex:
        assert_error(await globex.post("/sessions", json={"pool": "small"}), 403, "FORBIDDEN")


async def test_state_persists_across_cells_of_a_session(
    client: httpx.AsyncClient, session_id: str
) -> None:
    first = await ok(client, session_id, "x = 41")
    assert first["execution_count"] == 1 and first["session_id"] == session_id
    second = await ok(client, session_id, "x + 1")
    assert second["execution_count"] == 2
    assert second["data"] == {"columns": ["value"], "rows": [[42]]}
    assert second["cache_key"] is None


async def test_first_use_of_an_unknown_id_creates_the_session(
    client: httpx.AsyncClient, session_id: str
) -> None:
    assert_error(await client.get(f"/sessions/{session_id}"), 404, "NOT_FOUND")
    answer = await client.post("/execute", json={"code": "y = 2", "session_id": session_id})
    assert answer.status_code == 200
    assert await value_of(client, session_id, "y") == 2
    listed = (await client.get("/sessions")).json()["sessions"]
    assert session_id in [s["session_id"] for s in listed]


async def test_another_tenants_session_is_unknown(
    api: RunningServer, client: httpx.AsyncClient, session_id: str
) -> None:
    await ok(client, session_id, "secret = 'acme only'")
    async with api.client(token=TOKEN_B) as globex:
        assert_error(await globex.get(f"/sessions/{session_id}"), 404, "NOT_FOUND")
        assert_error(await globex.delete(f"/sessions/{session_id}"), 404, "NOT_FOUND")
        listed = (await globex.get("/sessions")).json()["sessions"]
        assert session_id not in [s["session_id"] for s in listed]
        # The same id in another tenant is another session, with its own kernel.
        mine = await globex.post(
            f"/sessions/{session_id}/execute", json={"code": "'secret' in globals()"}
        )
        assert mine.json()["data"]["rows"] == [[False]]


async def test_dataframe_result_has_schema_stats_and_preview(
    client: httpx.AsyncClient, session_id: str
) -> None:
    code = (
        "pd.DataFrame({'n': [1, 2, 3, None], 's': ['a', 'b', 'a', None], "
        "'b': [True, False, True, True], 't': pd.to_datetime(['2024-01-01', None, "
        "'2024-03-01', '2024-02-01'])})"
    )
    answer = await ok(client, session_id, code)
    assert answer["status"] == "success"
    assert answer["metadata"]["row_count"] == 4
    assert answer["metadata"]["truncated"] is False
    assert answer["metadata"]["execution_time_ms"] > 0
    assert answer["data"]["columns"] == ["n", "s", "b", "t"]
    assert answer["data"]["rows"][3][0] is None  # NaN becomes null
    assert answer["data"]["rows"][0][3].startswith("2024-01-01")
    schema = {c["name"]: c for c in answer["metadata"]["result_schema"]}
    assert schema["n"]["type"] == "float64"
    assert schema["n"]["stats"] == {
        "min": 1.0,
        "max": 3.0,
        "mean": 2.0,
        "std": 1.0,
        "null_count": 1,
        "distinct_count": 3,
    }
    assert schema["s"]["stats"]["top_values"][0] == {"value": "a", "count": 2}
    assert schema["s"]["stats"]["null_count"] == 1
    assert schema["b"]["stats"] == {"true_count": 3, "false_count": 1, "null_count": 0}
    assert schema["t"]["stats"]["null_count"] == 1
    assert schema["t"]["stats"]["min"].startswith("2024-01-01")
    assert [o["output_type"] for o in answer["outputs"]] == ["execute_result"]


async def test_result_df_wins_over_the_last_expression(
    client: httpx.AsyncClient, session_id: str
) -> None:
    answer = await ok(client, session_id, "result_df = pd.DataFrame({'a': [1, 2]})\n123")
    assert answer["data"] == {"columns": ["a"], "rows": [[1], [2]]}
    # result_df is cleared before each cell: the next cell's result is its own.
    assert (await ok(client, session_id, "7"))["data"]["rows"] == [[7]]


async def test_series_and_grouped_results_keep_their_keys(
    client: httpx.AsyncClient, session_id: str
) -> None:
    answer = await ok(
        client,
        session_id,
        "pd.DataFrame({'k': ['x', 'y', 'x'], 'v': [1, 2, 3]}).groupby('k').v.sum()",
    )
    assert answer["data"] == {"columns": ["k", "v"], "rows": [["x", 4], ["y", 2]]}
    plain = await ok(client, session_id, "pd.Series([1.5, 2.5], name='s')")
    assert plain["data"] == {"columns": ["s"], "rows": [[1.5], [2.5]]}


async def test_non_frame_results_give_no_data(client: httpx.AsyncClient, session_id: str) -> None:
    for code in ("z = 1", "print('hello')", "[1, 2, 3]", "None"):
        answer = await ok(client, session_id, code)
        assert answer["data"] is None, code
        assert answer["metadata"]["row_count"] == 0
        assert answer["metadata"]["result_schema"] == []
        assert answer["metadata"]["truncated"] is False
    printed = await ok(
        client, session_id, "print('hello'); import sys; print('oops', file=sys.stderr)"
    )
    assert {"output_type": "stream", "name": "stdout", "text": "hello\n"} in printed["outputs"]
    assert {"output_type": "stream", "name": "stderr", "text": "oops\n"} in printed["outputs"]


async def test_outputs_keep_the_order_they_were_flushed_in(
    client: httpx.AsyncClient, session_id: str
) -> None:
    # The kernel skips flushes with nothing waiting (dataexec_kernel/flushes.py): one that
    # has text waiting must still send it before what comes after it.
    code = (
        "import sys, threading\n"
        "for i in range(3):\n"
        "    print(f'out{i}', flush=True)\n"
        "    print(f'err{i}', file=sys.stderr, flush=True)\n"
        "t = threading.Thread(target=lambda: print('thread', flush=True)); t.start(); t.join()\n"
        "display('shown')\n"
        "print('last')\n"
        "42"
    )
    answer = await ok(client, session_id, code)
    seen = [
        (o["output_type"], o.get("name") or o.get("data", {}).get("text/plain"), o.get("text"))
        for o in answer["outputs"]
    ]
    assert seen == [
        ("stream", "stdout", "out0\n"),
        ("stream", "stderr", "err0\n"),
        ("stream", "stdout", "out1\n"),
        ("stream", "stderr", "err1\n"),
        ("stream", "stdout", "out2\n"),
        ("stream", "stderr", "err2\n"),
        ("stream", "stdout", "thread\n"),
        ("display_data", "'shown'", None),
        ("stream", "stdout", "last\n"),
        ("execute_result", "42", None),
    ]


async def test_max_rows_truncates_the_preview_not_the_count(
    client: httpx.AsyncClient, session_id: str
) -> None:
    answer = await ok(client, session_id, "pd.DataFrame({'i': range(2500)})", max_rows=10)
    assert answer["metadata"]["row_count"] == 2500
    assert answer["metadata"]["truncated"] is True
    assert len(answer["data"]["rows"]) == 10
    default = await ok(client, session_id, "pd.DataFrame({'i': range(2500)})")
    assert len(default["data"]["rows"]) == 1000
    for bad in (-1, 5001, "10", 1.5, True):
        assert_error(await run(client, session_id, "1", max_rows=bad), 400, "VALIDATION_ERROR")


async def test_user_code_error_is_execution_error_with_traceback(
    client: httpx.AsyncClient, session_id: str
) -> None:
    response = await run(client, session_id, "print('before')\n1 / 0")
    detail = assert_error(response, 400, "EXECUTION_ERROR")
    assert detail["ename"] == "ZeroDivisionError"
    assert detail["evalue"] == "division by zero"
    assert detail["message"] == "ZeroDivisionError: division by zero"
    assert any("1 / 0" in line for line in detail["traceback"])
    assert not any("\x1b[" in line for line in detail["traceback"])
    assert detail["outputs"][0] == {"output_type": "stream", "name": "stdout", "text": "before\n"}
    assert detail["session_id"] == session_id and detail["execution_count"] == 1
    assert detail["kernel_replaced"] is False
    # The session goes on.
    assert await value_of(client, session_id, "2 * 21") == 42


async def test_syntax_error_is_an_execution_error(
    client: httpx.AsyncClient, session_id: str
) -> None:
    detail = assert_error(await run(client, session_id, "def f(:"), 400, "EXECUTION_ERROR")
    assert detail["ename"] == "SyntaxError"


async def test_execute_without_session_uses_a_throwaway_kernel(client: httpx.AsyncClient) -> None:
    first = await client.post("/execute", json={"language": "python", "code": "w = 5\nw"})
    assert first.status_code == 200
    assert first.json()["data"]["rows"] == [[5]] and first.json()["session_id"] is None
    second = await client.post("/execute", json={"code": "'w' in globals()"})
    assert second.json()["data"]["rows"] == [[False]]
    failed = await client.post("/execute", json={"code": "raise ValueError('bad')"})
    assert assert_error(failed, 400, "EXECUTION_ERROR")["evalue"] == "bad"


async def test_delete_ends_the_session_and_its_kernel(
    api: RunningServer, client: httpx.AsyncClient, session_id: str
) -> None:
    await ok(client, session_id, "a = 1")
    kernel = (await api.runtime.sessions.get(api.settings.tenants["acme"], session_id)).kernel
    assert kernel is not None
    response = await client.delete(f"/sessions/{session_id}")
    assert response.status_code == 204
    assert_error(await client.get(f"/sessions/{session_id}"), 404, "NOT_FOUND")
    assert_error(await client.delete(f"/sessions/{session_id}"), 404, "NOT_FOUND")
    # The id is free again: a new session, with nothing of the old one.
    again = await client.post("/sessions", json={"session_id": session_id})
    assert again.status_code == 201 and again.json()["execution_count"] == 0
    assert await value_of(client, session_id, "'a' in globals()") is False

    async def gone() -> bool:
        return await kernel.process.poll() is not None and not kernel.kernel_dir.root.exists()

    await wait_for(gone)
    # Reusing the id starts afresh.
    assert await value_of(client, session_id, "'a' in globals()") is False


async def test_interrupt_stops_a_running_cell(client: httpx.AsyncClient, session_id: str) -> None:
    await ok(client, session_id, "kept = 'still here'")
    running = asyncio.ensure_future(
        run(client, session_id, "import time\nwhile True: time.sleep(0.01)")
    )

    async def busy() -> bool:
        return (await client.get(f"/sessions/{session_id}")).json()["state"] == "busy"

    await wait_for(busy)
    interrupted = await client.post(f"/sessions/{session_id}/interrupt")
    assert interrupted.json() == {"session_id": session_id, "interrupted": True}
    detail = assert_error(await running, 400, "EXECUTION_ERROR")
    assert detail["ename"] == "KeyboardInterrupt"
    assert await value_of(client, session_id, "kept") == "still here"
    idle = await client.post(f"/sessions/{session_id}/interrupt")
    assert idle.json()["interrupted"] is False


async def test_requests_to_one_session_run_in_order_with_a_bounded_queue(
    client: httpx.AsyncClient, session_id: str
) -> None:
    await ok(client, session_id, "import time\nlog = []")
    cells = [run(client, session_id, f"time.sleep(0.3); log.append({i})") for i in range(3)]
    tasks = [asyncio.ensure_future(c) for c in cells]

    async def queue_full() -> bool:
        return (await client.get(f"/sessions/{session_id}")).json()["queued"] == 2

    await wait_for(queue_full)
    # One runs and two wait (session_queue_size = 2): the next one is turned away.
    busy = await run(client, session_id, "log.append('late')")
    assert_error(busy, 409, "SESSION_BUSY")
    assert busy.headers["Retry-After"] == "1"
    assert all(r.status_code == 200 for r in await asyncio.gather(*tasks))
    assert await value_of(client, session_id, "str(log)") == "[0, 1, 2]"


async def test_bad_requests_get_validation_errors(
    client: httpx.AsyncClient, session_id: str
) -> None:
    url = f"/sessions/{session_id}/execute"
    cases = [
        b"{not json",
        b"[1, 2]",
        b'"code"',
        b"{}",
        b'{"code": 5}',
        b'{"code": "   "}',
        b'{"code": "1", "language": "r"}',
    ]
    for body in cases:
        assert_error(await client.post(url, content=body), 400, "VALIDATION_ERROR")
    assert_error(
        await client.post("/execute", content=b'{"code": "1", "session_id": 3}'),
        400,
        "VALIDATION_ERROR",
    )


async def test_unknown_paths_and_methods_answer_in_the_error_shape(
    client: httpx.AsyncClient,
) -> None:
    assert_error(await client.get("/no/such/path"), 404, "NOT_FOUND")
    assert_error(await client.put("/sessions"), 405, "METHOD_NOT_ALLOWED")
    assert_error(await client.get("/execute"), 405, "METHOD_NOT_ALLOWED")


async def test_oversized_body_is_rejected(api: RunningServer, client: httpx.AsyncClient) -> None:
    big = b'{"code": "' + b"x" * (api.settings.max_body_bytes + 10) + b'"}'
    response = await client.post("/execute", content=big)
    assert response.status_code == 413
    assert response.json()["detail"]["type"] == "PAYLOAD_TOO_LARGE"


async def test_openapi_is_served_without_auth(api: RunningServer) -> None:
    async with api.client(token=None) as anonymous:
        response = await anonymous.get("/openapi.json")
    assert response.status_code == 200
    assert response.json()["openapi"].startswith("3.")


async def test_a_client_that_disconnects_interrupts_its_cell(
    api: RunningServer, client: httpx.AsyncClient, session_id: str
) -> None:
    await ok(client, session_id, "kept = 3")
    async with api.client(timeout=0.5) as impatient:
        try:
            await impatient.post(
                f"/sessions/{session_id}/execute",
                json={"code": "import time\nwhile True: time.sleep(0.01)"},
            )
        except httpx.ReadTimeout:
            pass
        else:
            raise AssertionError("the endless cell answered")

    async def idle() -> bool:
        return (await client.get(f"/sessions/{session_id}")).json()["state"] == "idle"

    await wait_for(idle)
    answer = await ok(client, session_id, "kept")
    assert answer["data"]["rows"] == [[3]] and answer["kernel_replaced"] is False
