"""``"stream": true``: an execution answered as Server-Sent Events, over a real socket.

What a client reads is held against the spec (server/handlers/stream.py): outputs arrive
while the cell runs (their arrival times are measured), in order and complete, stdout apart
from stderr, displays as ``display`` events, then exactly the answer the call gives without
stream, or the error shape; errors before the cell starts stay JSON; a client that goes
away interrupts its cell; a quiet cell gets keep-alive comments.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import orjson
import pytest
from dataexec_testing.api import (
    ONE_SERVER,
    TOKEN_A,
    RunningServer,
    assert_error,
    ok,
    run,
    wait_for,
)

from server.handlers import bodies
from server.handlers.stream import KEEPALIVE_S

# Fields of an answer that differ between two runs of the same code in two sessions.
VARYING = ("execution_time_ms", "session_id", "cache_key", "request_id")


@dataclass
class Event:
    """One event as the client read it; ``at``: seconds after the request was sent."""

    name: str  # "comment" for a comment line
    data: Any
    at: float


@dataclass
class Streamed:
    """A whole answer as read: status, headers and its events (or its JSON body);
    ``opened``: when its headers arrived (the cell had started), after the request was sent."""

    status: int
    headers: httpx.Headers
    events: list[Event] = field(default_factory=list)
    body: Any = None
    opened: float = 0.0

    def named(self, *names: str) -> list[Event]:
        return [e for e in self.events if e.name in names]

    def text(self, name: str) -> str:
        """Everything streamed to ``name`` (stdout or stderr), in order."""
        return "".join(e.data["text"] for e in self.named("stream") if e.data["name"] == name)

    @property
    def last(self) -> Event:
        return self.events[-1]


def parse_block(block: bytes, at: float) -> Event:
    """One SSE block (the lines before a blank line) as an Event."""
    name, data = "message", []
    for line in block.decode().split("\n"):
        if line.startswith(":"):
            return Event("comment", line[1:].strip(), at)
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)
    return Event(name, orjson.loads("\n".join(data)), at)


async def read_events(
    response: httpx.Response, sent: float, stop: Callable[[Event], bool] = lambda e: False
) -> list[Event]:
    """The events of ``response`` with their arrival times, until it ends or ``stop``."""
    events: list[Event] = []
    buffer = b""
    async for chunk in response.aiter_bytes():
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            events.append(parse_block(block, time.monotonic() - sent))
            if stop(events[-1]):
                return events
    assert buffer == b"", buffer
    return events


async def stream(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Streamed:
    """POST ``body`` with ``"stream": true`` and read the whole answer."""
    sent = time.monotonic()
    async with http.stream("POST", path, json={**body, "stream": True}) as response:
        if not response.headers["Content-Type"].startswith("text/event-stream"):
            await response.aread()
            return Streamed(response.status_code, response.headers, body=response.json())
        opened = time.monotonic() - sent
        events = await read_events(response, sent)
        return Streamed(response.status_code, response.headers, events, opened=opened)


def merged(events: list[Event]) -> list[dict[str, Any]]:
    """The outputs the streamed events add up to (consecutive chunks of a stream joined),
    as the answer's ``outputs`` lists them."""
    outputs: list[dict[str, Any]] = []
    for event in events:
        if event.name not in ("stream", "display"):
            continue
        output = dict(event.data)
        last = outputs[-1] if outputs else None
        if (
            output["output_type"] == "stream"
            and last is not None
            and last["output_type"] == "stream"
            and last["name"] == output["name"]
        ):
            last["text"] += output["text"]
        else:
            outputs.append(output)
    return outputs


def without_varying(answer: Any) -> Any:
    """``answer`` without the fields that differ from one session or run to the next."""
    if isinstance(answer, dict):
        return {k: without_varying(v) for k, v in answer.items() if k not in VARYING}
    if isinstance(answer, list):
        return [without_varying(v) for v in answer]
    return answer


def assert_sse(answer: Streamed) -> None:
    """A 200 event stream whose last event is the result or an error."""
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.last.name in ("result", "error")
    assert [e.name for e in answer.events].count(answer.last.name) == 1


def nodelay_connections(api: RunningServer) -> int:
    """How many of the server's open connections have TCP_NODELAY set (Tornado's own set
    of connections: the server runs in this process)."""
    sockets = [connection.stream.socket for connection in api.http._connections]
    return sum(
        bool(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)) for s in sockets if s is not None
    )


@pytest.fixture
async def sessions(api: RunningServer) -> AsyncIterator[Callable[[], str]]:
    """Fresh session ids (in tenant A); each session ends with the test."""
    made: list[str] = []

    def new() -> str:
        made.append("stream-" + secrets.token_hex(6))
        return made[-1]

    yield new
    for name in made:
        for settings in api.settings.tenants.values():
            if (settings.name, name) in api.runtime.sessions.sessions:
                await api.runtime.sessions.delete(settings, name)


PRINTS_FOR_SECONDS = """\
import sys, time
for i in range(8):
    print(f"out {i}", flush=True)
    print(f"err {i}", file=sys.stderr, flush=True)
    time.sleep(0.5)
'done'
"""


async def test_a_cell_that_prints_for_seconds_streams_each_line_as_it_is_printed(
    client: httpx.AsyncClient, sessions: Callable[[], str]
) -> None:
    session = sessions()
    answer = await stream(client, f"/sessions/{session}/execute", {"code": PRINTS_FOR_SECONDS})
    assert_sse(answer)
    assert answer.last.name == "result"
    assert answer.text("stdout") == "".join(f"out {i}\n" for i in range(8))
    assert answer.text("stderr") == "".join(f"err {i}\n" for i in range(8))

    def arrival(text: str) -> float:
        [event] = [e for e in answer.named("stream") if text in e.data["text"]]
        return event.at

    # Spread over the cell's 4 s as printed (0.5 s apart), not all at the end.
    stdout_times = [arrival(f"out {i}\n") for i in range(8)]
    assert stdout_times == sorted(stdout_times)
    assert stdout_times[-1] - stdout_times[0] > 2.5, stdout_times
    assert answer.last.at - stdout_times[0] > 3.0, (stdout_times, answer.last.at)
    gaps = [b - a for a, b in zip(stdout_times, stdout_times[1:], strict=False)]
    assert sum(gap > 0.25 for gap in gaps) >= 5, gaps
    # Each line of stderr comes after its line of stdout and before the next.
    for i in range(7):
        assert arrival(f"out {i}\n") <= arrival(f"err {i}\n") <= arrival(f"out {i + 1}\n")
    result = answer.last.data
    msgspec.convert(result, bodies.ExecutionResult)
    assert result["data"] == {"columns": ["value"], "rows": [["done"]]}
    [shown] = answer.named("display")
    assert shown.data["output_type"] == "execute_result"
    assert shown.data["data"]["text/plain"] == "'done'"
    assert result["outputs"] == merged(answer.events)


@ONE_SERVER
async def test_the_result_event_is_the_answer_the_call_gives_without_stream(
    client: httpx.AsyncClient, sessions: Callable[[], str]
) -> None:
    code = (
        "import sys\n"
        "print('hello', flush=True)\n"
        "print('oops', file=sys.stderr, flush=True)\n"
        "pd.DataFrame({'x': [1, 2, 3]})"
    )
    plain = await ok(client, sessions(), code)
    answer = await stream(client, f"/sessions/{sessions()}/execute", {"code": code})
    assert_sse(answer)
    result = answer.last.data
    assert without_varying(result) == without_varying(plain)
    assert result["cache_key"] and result["cache_key"] != plain["cache_key"]
    assert [e.name for e in answer.events] == ["stream", "stream", "display", "result"]
    assert result["outputs"] == merged(answer.events)


@ONE_SERVER
async def test_displays_stream_as_display_events(
    client: httpx.AsyncClient, sessions: Callable[[], str]
) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "from IPython.display import HTML, display\n"
        "display(HTML('<b>before the plot</b>'))\n"
        "plt.plot([1, 3, 2])\n"
        "plt.show()\n"
        "print('after')\n"
    )
    answer = await stream(client, f"/sessions/{sessions()}/execute", {"code": code})
    assert_sse(answer)
    html, png = answer.named("display")
    assert html.data["output_type"] == "display_data"
    assert html.data["data"]["text/html"] == "<b>before the plot</b>"
    assert base64.b64decode(png.data["data"]["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")
    assert [e.name for e in answer.events] == ["display", "display", "stream", "result"]
    assert answer.last.data["outputs"] == merged(answer.events)


@ONE_SERVER
async def test_an_error_cell_ends_the_stream_with_the_error_shape(
    client: httpx.AsyncClient, sessions: Callable[[], str]
) -> None:
    code = "print('before', flush=True)\n1 / 0"
    plain = assert_error(await run(client, sessions(), code), 400, "EXECUTION_ERROR")
    answer = await stream(client, f"/sessions/{sessions()}/execute", {"code": code})
    assert_sse(answer)
    assert [e.name for e in answer.events] == ["stream", "error"]
    assert answer.text("stdout") == "before\n"
    detail = answer.last.data["detail"]
    msgspec.convert(answer.last.data, bodies.ErrorAnswer)
    assert detail["request_id"] == answer.headers["X-Request-Id"]
    assert detail["ename"] == "ZeroDivisionError"
    assert without_varying(detail) == without_varying(plain)


@ONE_SERVER
async def test_a_timeout_ends_the_stream_with_timeout(
    client: httpx.AsyncClient, sessions: Callable[[], str]
) -> None:
    session = sessions()
    made = await client.post("/sessions", json={"session_id": session, "pool": "small"})
    assert made.status_code == 201, made.text
    code = "import time\nprint('started', flush=True)\ntime.sleep(60)"
    answer = await stream(client, f"/sessions/{session}/execute", {"code": code})
    assert_sse(answer)
    assert [e.name for e in answer.events] == ["stream", "error"]
    started, timed_out = answer.events
    assert started.data["text"] == "started\n" and started.at - answer.opened < 2.0
    assert timed_out.data["detail"]["type"] == "TIMEOUT"
    assert timed_out.at - answer.opened > 4.0  # the small pool's timeout_s
    again = await ok(client, session, "'still here'")
    assert again["kernel_replaced"] is False


@ONE_SERVER
async def test_output_past_the_limit_ends_the_stream_with_output_too_large(
    api: RunningServer, client: httpx.AsyncClient, sessions: Callable[[], str]
) -> None:
    session = sessions()
    code = "import time\nfor i in range(2048):\n    print('x' * 1023)\n    time.sleep(0.001)"
    answer = await stream(client, f"/sessions/{session}/execute", {"code": code})
    assert_sse(answer)
    assert answer.last.data["detail"]["type"] == "OUTPUT_TOO_LARGE"
    streamed = len(answer.text("stdout"))
    assert 0 < streamed <= api.settings.output_limit_bytes
    assert set(answer.text("stdout")) == {"x", "\n"}
    assert (await ok(client, session, "1"))["replaced_reason"] == "output_too_large"


@ONE_SERVER
async def test_a_client_that_disconnects_mid_cell_interrupts_it(
    api: RunningServer, client: httpx.AsyncClient, sessions: Callable[[], str]
) -> None:
    session = sessions()
    await ok(client, session, "kept = 3")
    assert nodelay_connections(api) == 0  # Tornado's default between requests: Nagle on
    code = "import time\nprint('tick', flush=True)\nwhile True:\n    time.sleep(0.01)"
    sent = time.monotonic()
    async with client.stream(
        "POST", f"/sessions/{session}/execute", json={"code": code, "stream": True}
    ) as response:
        assert response.status_code == 200
        events = await read_events(response, sent, stop=lambda e: e.name == "stream")
        assert nodelay_connections(api) == 1  # this answer's, while its events flow
    assert events[-1].data["text"] == "tick\n"
    gone = time.monotonic()

    async def idle() -> bool:
        return (await client.get(f"/sessions/{session}")).json()["state"] == "idle"

    await wait_for(idle, timeout=5.0)
    answer = await ok(client, session, "kept")
    # Promptly: the interrupt grace is 1 s; a keep-alive (15 s) never had to find it out.
    assert time.monotonic() - gone < 5.0
    assert answer["data"]["rows"] == [[3]] and answer["kernel_replaced"] is False


async def test_a_sql_step_streams_its_result(
    client: httpx.AsyncClient, sessions: Callable[[], str]
) -> None:
    body = {
        "language": "sql",
        "code": "SELECT carrier, count(*) AS n FROM flights GROUP BY 1 ORDER BY 1",
    }
    plain = await ok(client, sessions(), **body)
    session = sessions()
    answer = await stream(client, f"/sessions/{session}/execute", body)
    assert_sse(answer)
    assert answer.last.name == "result"
    result = answer.last.data
    assert without_varying(result) == without_varying(plain)
    assert result["result_name"] == "df_1" and result["metadata"]["row_count"] == 16
    assert result["outputs"] == merged(answer.events)
    kept = await ok(client, session, "len(df_1)")
    assert kept["data"]["rows"] == [[16]]


@ONE_SERVER
async def test_a_sessionless_execute_streams_too(client: httpx.AsyncClient) -> None:
    sql = await stream(client, "/execute", {"language": "sql", "code": "SELECT 1 AS one"})
    assert_sse(sql)
    assert [e.name for e in sql.events] == ["result"]
    assert sql.last.data["data"] == {"columns": ["one"], "rows": [[1]]}
    python = await stream(client, "/execute", {"code": "print('once')\n2 + 2"})
    assert_sse(python)
    assert python.text("stdout") == "once\n" and python.last.data["session_id"] is None
    assert python.last.data["data"]["rows"] == [[4]]


@ONE_SERVER
async def test_openapi_declares_the_event_stream(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    for path in ("/sessions/{session_id}/execute", "/execute"):
        answer = document["paths"][path]["post"]["responses"]["200"]["content"]
        assert set(answer) == {"application/json", "text/event-stream"}
        assert "`result`" in answer["text/event-stream"]["schema"]["description"]
    body = document["components"]["schemas"]["ExecuteBody"]["properties"]["stream"]
    assert body["type"] == "boolean" and body["default"] is False


@ONE_SERVER
async def test_errors_before_the_cell_starts_answer_json_with_their_status(
    api: RunningServer, client: httpx.AsyncClient, sessions: Callable[[], str]
) -> None:
    session = sessions()
    path = f"/sessions/{session}/execute"
    for body, status, kind in [
        ({"code": "1", "stream": "yes"}, 400, "VALIDATION_ERROR"),
        ({"code": "  ", "stream": True}, 400, "VALIDATION_ERROR"),
        ({"code": "1", "stream": True, "max_rows": -1}, 400, "VALIDATION_ERROR"),
    ]:
        response = await client.post(path, json=body)
        assert response.headers["Content-Type"] == "application/json"
        assert_error(response, status, kind)
    async with api.client(token=None) as anonymous:
        assert_error(
            await anonymous.post(path, json={"code": "1", "stream": True}), 401, "UNAUTHORIZED"
        )
    async with api.client(token="wrong-" + TOKEN_A) as stranger:
        assert_error(
            await stranger.post(path, json={"code": "1", "stream": True}), 401, "UNAUTHORIZED"
        )
    # SESSION_BUSY: one cell runs, session_queue_size (2) wait, the next is refused.
    running = asyncio.ensure_future(stream(client, path, {"code": "import time\ntime.sleep(30)"}))

    async def busy() -> bool:
        return (await client.get(f"/sessions/{session}")).json().get("state") == "busy"

    await wait_for(busy)
    queued = [asyncio.ensure_future(run(client, session, "1")) for _ in range(2)]

    async def full() -> bool:
        return (await client.get(f"/sessions/{session}")).json()["queued"] == 2

    await wait_for(full)
    refused = await stream(client, path, {"code": "1"})
    assert refused.status == 409 and refused.headers["Content-Type"] == "application/json"
    assert refused.body["detail"]["type"] == "SESSION_BUSY"
    assert (await client.post(f"/sessions/{session}/interrupt")).json()["interrupted"] is True
    interrupted = await running
    assert interrupted.last.data["detail"]["ename"] == "KeyboardInterrupt"
    assert [r.status_code for r in await asyncio.gather(*queued)] == [200, 200]


@ONE_SERVER
async def test_a_quiet_cell_gets_keep_alive_comments(
    client: httpx.AsyncClient, sessions: Callable[[], str]
) -> None:
    code = f"import time\ntime.sleep({KEEPALIVE_S + 4})\nprint('awake')"
    answer = await stream(client, f"/sessions/{sessions()}/execute", {"code": code})
    assert_sse(answer)
    assert [e.name for e in answer.events] == ["comment", "stream", "result"]
    comment = answer.events[0]
    assert comment.data == "keep-alive"
    assert KEEPALIVE_S - 0.5 < comment.at - answer.opened < KEEPALIVE_S + 3
