"""Holes in one's own session that must still answer cleanly (issue 12).

Owns: a session deleted or restarted while its cell runs or its requests wait (each such
request answers ``409 CANCELLED`` saying why, never ``500``, and no kernel is left behind);
restart stopping the running cell instead of waiting for it; a background thread's output
kept out of later cells; cache keys a kernel forges never relayed. ``RACES`` is the table
of interleavings on one session and the documented answer of every request in each.

All of it is session logic above the sandbox, so one server (bubblewrap) runs it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import httpx
import pytest
from dataexec_testing.api import (
    ONE_SERVER,
    TOKEN_B,
    RunningServer,
    assert_error,
    ok,
    run,
    value_of,
    wait_for,
)

pytestmark = ONE_SERVER

SLEEP_60 = "import time\ntime.sleep(60)"  # well inside the default pool's 100 s timeout


async def state_of(client: httpx.AsyncClient, session: str) -> dict[str, object]:
    response = await client.get(f"/sessions/{session}")
    return response.json() if response.status_code == 200 else {}


def running(client: httpx.AsyncClient, session: str, code: str) -> asyncio.Task[httpx.Response]:
    """Start a cell; the task answers its response."""
    return asyncio.ensure_future(run(client, session, code))


async def until_busy(client: httpx.AsyncClient, session: str) -> None:
    async def busy() -> bool:
        return (await state_of(client, session)).get("state") == "busy"

    await wait_for(busy)


# --- 1. delete while a cell runs --------------------------------------------------------


async def test_delete_while_a_cell_runs_answers_cancelled_and_ends_the_kernel(
    api: RunningServer,
    client: httpx.AsyncClient,
    session_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await ok(client, session_id, "a = 1")
    kernel = (await api.runtime.sessions.get(api.settings.tenants["acme"], session_id)).kernel
    assert kernel is not None
    cell = running(client, session_id, SLEEP_60)
    await until_busy(client, session_id)
    assert (await client.delete(f"/sessions/{session_id}")).status_code == 204
    detail = assert_error(await cell, 409, "CANCELLED")
    assert detail["message"] == "the session was deleted while the cell ran"
    assert detail["reason"] == "session_deleted"
    assert detail["session_id"] == session_id and detail["execution_count"] == 2
    assert_error(await client.get(f"/sessions/{session_id}"), 404, "NOT_FOUND")

    async def gone() -> bool:
        return await kernel.process.poll() is not None and not kernel.kernel_dir.root.exists()

    await wait_for(gone)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- 4. restart stops the running cell ----------------------------------------------------


async def test_restart_stops_the_running_cell_instead_of_waiting_for_it(
    client: httpx.AsyncClient, session_id: str
) -> None:
    await ok(client, session_id, "kept = pd.DataFrame({'n': [1, 2, 3]})")
    cell = running(client, session_id, SLEEP_60)
    await until_busy(client, session_id)
    # Were the restart to wait for its turn, the cell would answer 200 after 60 s and the
    # client's 30 s timeout would fail the restart first.
    async with httpx.AsyncClient(
        base_url=str(client.base_url), headers=client.headers, timeout=30
    ) as impatient:
        restarted = await impatient.post(f"/sessions/{session_id}/restart")
    assert restarted.status_code == 200, restarted.text
    assert restarted.json()["replaced_reason"] == "restart"
    assert restarted.json()["restored_frames"] == ["kept"]
    detail = assert_error(await cell, 409, "CANCELLED")
    assert detail["message"] == "the session was restarted while the cell ran"
    assert detail["reason"] == "restart"
    assert await value_of(client, session_id, "int(kept.n.sum())") == 6


# --- 5. interleavings on one session, as a table -----------------------------------------


@dataclass(frozen=True)
class Step:
    """One request of a race: ``action`` (run, delete, restart, interrupt), the code it
    runs, what to wait for before sending the next request (``busy``: a cell runs;
    ``queued``: one more request waits; ``no_kernel``: a restart is getting its kernel),
    and every answer it may get ("200", "409 CANCELLED:<reason>", "200 interrupted:False").
    """

    action: str
    answers: frozenset[str]
    code: str = ""
    then: str | None = None


def step(action: str, *answers: str, code: str = "", then: str | None = None) -> Step:
    return Step(action, frozenset(answers), code, then)


@dataclass(frozen=True)
class Race:
    """Requests sent to one session in this order (each after the previous one's ``then``),
    the answers each may get, and the session afterwards: ``usable`` or ``gone``. A restart
    in the ``tiny`` pool must start a kernel (about a second): room for a request to meet it.
    """

    name: str
    pool: str
    steps: tuple[Step, ...]
    after: str


RACES = [
    Race(
        "two executes at once run in order",
        "default",
        (
            step("run", "200", code="import time\ntime.sleep(0.5)\nn = 1", then="busy"),
            step("run", "200", code="n + 1", then="queued"),
        ),
        "usable",
    ),
    Race(
        "delete while a cell runs",
        "default",
        (
            step("run", "409 CANCELLED:session_deleted", code=SLEEP_60, then="busy"),
            step("delete", "204"),
        ),
        "gone",
    ),
    Race(
        "restart while a cell runs",
        "default",
        (
            step("run", "409 CANCELLED:restart", code=SLEEP_60, then="busy"),
            step("restart", "200"),
        ),
        "usable",
    ),
    Race(
        "delete while a request waits",
        "default",
        (
            step("run", "409 CANCELLED:session_deleted", code=SLEEP_60, then="busy"),
            step("run", "409 CANCELLED:session_deleted", code="1 + 1", then="queued"),
            step("delete", "204"),
        ),
        "gone",
    ),
    Race(
        "restart while a request waits: the waiting one runs in a fresh kernel",
        "default",
        (
            step("run", "409 CANCELLED:restart", code=SLEEP_60, then="busy"),
            step("run", "200", code="1 + 1", then="queued"),
            step("restart", "200"),
        ),
        "usable",
    ),
    Race(
        "restart and delete at once while a cell runs",
        "default",
        (
            step(
                "run",
                "409 CANCELLED:restart",
                "409 CANCELLED:session_deleted",
                code=SLEEP_60,
                then="busy",
            ),
            step("restart", "200", "409 CANCELLED:session_deleted", "404 NOT_FOUND"),
            step("delete", "204", "404 NOT_FOUND"),
        ),
        "gone",
    ),
    Race(
        "interrupt during a restart finds no cell",
        "tiny",
        (
            step("restart", "200", then="no_kernel"),
            step("interrupt", "200 interrupted:False"),
        ),
        "usable",
    ),
    Race(
        "delete during a restart",
        "tiny",
        (
            step("restart", "409 CANCELLED:session_deleted", then="no_kernel"),
            step("delete", "204"),
        ),
        "gone",
    ),
    Race(
        "execute during a restart waits for it",
        "tiny",
        (
            step("restart", "200", then="no_kernel"),
            step("run", "200", code="1 + 1"),
        ),
        "usable",
    ),
    Race(
        "two restarts at once",
        "tiny",
        (
            step("restart", "200", then="no_kernel"),
            step("restart", "200"),
        ),
        "usable",
    ),
]


async def send(client: httpx.AsyncClient, session: str, request: Step) -> httpx.Response:
    if request.action == "run":
        return await run(client, session, request.code)
    if request.action == "delete":
        return await client.delete(f"/sessions/{session}")
    return await client.post(f"/sessions/{session}/{request.action}")


def outcome(request: Step, response: httpx.Response) -> str:
    """The answer as the table writes it; error answers must have the one error shape."""
    if response.status_code >= 400:
        detail = response.json()["detail"]
        assert_error(response, response.status_code, detail["type"])
        if detail["type"] == "CANCELLED":
            return f"{response.status_code} CANCELLED:{detail['reason']}"
        return f"{response.status_code} {detail['type']}"
    if request.action == "interrupt":
        return f"200 interrupted:{response.json()['interrupted']}"
    return str(response.status_code)


@pytest.mark.parametrize("race", RACES, ids=[r.name for r in RACES])
async def test_every_request_of_a_race_gets_a_documented_answer(
    api: RunningServer, client: httpx.AsyncClient, session_id: str, race: Race
) -> None:
    pool = api.runtime.pools[race.pool]
    in_use_before = pool.in_use
    created = await client.post("/sessions", json={"session_id": session_id, "pool": race.pool})
    assert created.status_code == 201, created.text
    await ok(client, session_id, "x = 1")
    sent: list[asyncio.Task[httpx.Response]] = []
    for request in race.steps:
        sent.append(asyncio.ensure_future(send(client, session_id, request)))
        if request.then == "busy":
            await until_busy(client, session_id)
        elif request.then == "queued":
            waiting = sum(r.action == "run" for r in race.steps[: len(sent)]) - 1

            async def queued(n: int = waiting) -> bool:
                return (await state_of(client, session_id)).get("queued") == n

            await wait_for(queued)
        elif request.then == "no_kernel":

            async def replacing() -> bool:
                return (await state_of(client, session_id)).get("state") == "no_kernel"

            await wait_for(replacing)
    responses = await asyncio.gather(*sent)
    for request, response in zip(race.steps, responses, strict=True):
        assert outcome(request, response) in request.answers, (request, response.text)

    if race.after == "usable":
        assert await value_of(client, session_id, "1 + 1") == 2
        assert (await state_of(client, session_id))["state"] == "idle"
        return
    assert_error(await client.get(f"/sessions/{session_id}"), 404, "NOT_FOUND")

    async def kernels_back() -> bool:  # none left with the deleted session
        return pool.in_use == in_use_before

    await wait_for(kernels_back)


async def test_one_new_session_id_used_by_several_requests_at_once_is_one_session(
    api: RunningServer, client: httpx.AsyncClient, session_id: str
) -> None:
    """Requests racing to make the same session: one session, one kernel, no orphan. (Two
    creates that both looked in the store before either was remembered made two sessions
    under one id: the first kept a kernel no one could reach, and its requests answered
    CANCELLED as if the server were closing.)"""
    pool = api.runtime.pools["default"]
    in_use_before = pool.in_use
    creates = await asyncio.gather(
        *[client.post("/sessions", json={"session_id": session_id}) for _ in range(6)]
    )
    assert sorted(r.status_code for r in creates) == [201] + [409] * 5, [r.text for r in creates]
    assert pool.in_use == in_use_before + 1
    assert (await client.delete(f"/sessions/{session_id}")).status_code == 204

    fresh = session_id + "-first-use"
    steps = await asyncio.gather(*[run(client, fresh, "1 + 1") for _ in range(4)])
    for step in steps:  # each runs in turn (or finds the queue full): none is cancelled
        assert step.status_code == 200 or step.json()["detail"]["type"] == "SESSION_BUSY", step.text
    assert pool.in_use == in_use_before + 1
    assert (await client.delete(f"/sessions/{fresh}")).status_code == 204


# --- 2. output of a background thread ------------------------------------------------------

SPAMMER = """
import threading, time
def spam():
    while True:
        print('spam from the background')
        time.sleep(0.0001)  # a tight loop, yet under the output cap per flush
threading.Thread(target=spam, daemon=True).start()
time.sleep(0.2)
"""


def stdout_of(answer: dict[str, object]) -> str:
    outputs = answer["outputs"]
    assert isinstance(outputs, list)
    return "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")


async def test_a_background_threads_output_never_reaches_later_cells(
    client: httpx.AsyncClient, session_id: str
) -> None:
    """The bound: later cells get none of it (the kernel attributes a thread's output to
    the cell that started it, and the server drops output of a cell that has answered).
    A thread that escapes the attribution (started in an empty context) has its output
    counted as the running cell's: at most ``output_limit_bytes`` of it, then
    OUTPUT_TOO_LARGE and a fresh kernel, as for any flood."""
    started = await ok(client, session_id, SPAMMER)
    assert "spam from the background" in stdout_of(started)
    for _ in range(5):
        await asyncio.sleep(0.3)  # output piles up between cells too
        answer = await ok(client, session_id, "print('mine')\n1 + 1")
        assert answer["data"]["rows"] == [[2]]
        assert stdout_of(answer) == "mine\n"


# --- 3. cache keys a kernel forges -------------------------------------------------------


async def test_a_kernel_cannot_make_its_answers_name_another_tenants_key(
    api: RunningServer, client: httpx.AsyncClient, session_id: str
) -> None:
    async with api.client(token=TOKEN_B) as globex:
        victim = await ok(globex, session_id, "pd.DataFrame({'secret': [42]})")
        theirs = victim["cache_key"]
        assert theirs
        # The attacker's kernel reports their key for every frame it is asked to cache
        # (results and checkpoints), written backwards so that the cell does not hold it.
        forge = (
            "import dataexec_kernel.broker as b\n"
            f"b.put = lambda table, kind='result', name=None: {theirs[::-1]!r}[::-1]"
        )
        await ok(client, session_id, forge)
        answer = await ok(client, session_id, "forged = pd.DataFrame({'a': [1]})\nforged")
        assert answer["cache_key"] is None
        assert "did not make" in answer["metadata"]["cache_error"]
        assert answer["data"]["rows"] == [[1]]

        variables = await client.get(f"/sessions/{session_id}/variables")
        [frame] = [f for f in variables.json()["frames"] if f["name"] == "forged"]
        assert frame["cache_key"] is None and not frame["restorable"]
        session = await api.runtime.sessions.get(api.settings.tenants["acme"], session_id)
        history = await api.runtime.sessions.history(session)
        notebook = await client.get(f"/sessions/{session_id}/notebook")
        script = await client.get(f"/sessions/{session_id}/notebook", params={"format": "py"})
        for text in (variables.text, repr(history), notebook.text, script.text):
            assert theirs not in text

        assert_error(await client.get(f"/cache/{theirs}"), 404, "NOT_FOUND")
        loaded = await run(client, session_id, f"load({theirs[::-1]!r}[::-1])")
        assert_error(loaded, 404, "NOT_FOUND")
        assert (await globex.get(f"/cache/{theirs}", params={"format": "json"})).json()["rows"] == [
            [42]
        ]
