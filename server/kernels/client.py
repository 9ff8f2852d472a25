"""An asyncio client for one kernel's Jupyter channels over ZMQ ``ipc``.

Small on purpose: a kernel serves one session and its executions run one at a time, so the
client sends an ``execute_request`` and reads iopub and shell until the reply and the idle
status of that request have both arrived, ignoring messages of earlier requests.

Output is bounded twice: every socket has ``zmq.MAXMSGSIZE`` (a larger message drops the
connection, which a monitor socket reports), and the bytes of one execution's messages are
counted; past the cap the execution ends with ``OutputTooLarge`` and the caller replaces the
kernel. So a flood cannot make the server buffer more than the cap. A caller that streams
the cell (``on_output``) is handed each output as it arrives, within the same cap.

Output that belongs to no running request (a background thread printing after its cell
answered: the kernel attributes it to the cell that started the thread) is dropped, never
buffered: between executions a drain task reads iopub and discards every message unread,
and during one a message of another request is recognised by its parent id alone (no
signature check, no decoding of its content) and skipped. So it costs neither memory (ZMQ
would otherwise queue up to its high-water mark of such messages, each up to the size
cap) nor the next cell's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nbformat
import orjson
import zmq
import zmq.asyncio
from jupyter_client.session import Session
from zmq.utils.monitor import parse_monitor_message

from server.errors import KernelDied, OutputTooLarge

log = logging.getLogger(__name__)

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
OUTPUT_MSG_TYPES = ("stream", "display_data", "execute_result", "error", "update_display_data")
MONITOR_EVENTS = zmq.EVENT_DISCONNECTED
# Called with each output (nbformat v4, stream chunks unmerged) as it arrives.
OnOutput = Callable[[dict[str, Any]], None]
RESEND_S = 0.25
UNANSWERED_RESEND_S = 1.0


def strip_ansi(text: str) -> str:
    return ANSI_ESCAPE.sub("", text)


@dataclass
class Execution:
    """What one execute_request produced."""

    status: str  # ok | error | aborted
    outputs: list[dict[str, Any]] = field(default_factory=list)
    user_expressions: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    elapsed_ms: float = 0.0


class ExecutionTimedOut(Exception):
    """The execution did not finish in time; the caller decides interrupt or kill."""


class ChannelLost(Exception):
    """A channel dropped: the kernel died, or sent a message over ``zmq.MAXMSGSIZE``."""


class KernelClient:
    """Shell, iopub and control channels of one kernel."""

    def __init__(
        self, connection_info: dict[str, Any], context: zmq.asyncio.Context, max_message_bytes: int
    ) -> None:
        self.session = Session(
            key=connection_info["key"].encode(),
            signature_scheme=connection_info["signature_scheme"],
            username="dataexec",
        )
        base = f"ipc://{connection_info['ip']}"
        self.sockets: list[zmq.asyncio.Socket] = []
        self.monitors: list[zmq.asyncio.Socket] = []

        def connect(kind: int, channel: str) -> zmq.asyncio.Socket:
            sock = context.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
            if kind == zmq.SUB:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            self.monitors.append(sock.get_monitor_socket(MONITOR_EVENTS))
            sock.connect(f"{base}-{connection_info[f'{channel}_port']}")
            self.sockets.append(sock)
            return sock

        self.shell = connect(zmq.DEALER, "shell")
        self.iopub = connect(zmq.SUB, "iopub")
        self.control = connect(zmq.DEALER, "control")
        self.closed = False
        self.lost = False  # a channel dropped (kernel died, or a message over the size cap)
        self._drain: asyncio.Task[None] | None = None  # reads iopub between executions

    def _start_draining(self) -> None:
        """Between executions: drop whatever iopub brings (it answers no request of ours)."""
        if not self.closed and self._drain is None:
            self._drain = asyncio.ensure_future(self._discard_iopub())

    def _stop_draining(self) -> None:
        # Cancelling the task cancels its pending receive at once (pyzmq then leaves the
        # message queued), so nothing of the request sent next can be lost to it.
        drain, self._drain = self._drain, None
        if drain is not None:
            drain.cancel()

    async def _discard_iopub(self) -> None:
        with contextlib.suppress(zmq.ZMQError):  # closed under us: the kernel is gone
            while True:
                await self.iopub.recv_multipart(copy=False)

    async def _recv(self, sock: zmq.asyncio.Socket) -> dict[str, Any] | None:
        """The next message on ``sock``, or None if it is not a well-formed message."""
        frames = await sock.recv_multipart(copy=True)
        return self._decoded(frames)

    async def _recv_reply_to(
        self, sock: zmq.asyncio.Socket, msg_id: str
    ) -> tuple[dict[str, Any] | None, int]:
        """The next message on ``sock`` if it answers request ``msg_id`` (None otherwise),
        and its size. Another request's message is skipped unverified and undecoded."""
        frames = await sock.recv_multipart(copy=True)
        size = sum(len(f) for f in frames)
        try:
            _, parts = self.session.feed_identities(frames, copy=True)
        except ValueError:  # no delimiter: not a Jupyter message
            return None, size
        if _parent_id(parts) != msg_id:
            return None, 0
        return self._decoded(frames), size

    def _decoded(self, frames: list[bytes]) -> dict[str, Any] | None:
        # The tenant's code runs in the kernel and holds its signing key, so a signed
        # message proves nothing: whatever does not decode into the fields we read is
        # dropped (it counts against the output budget all the same).
        try:
            _, parts = self.session.feed_identities(frames, copy=True)
            msg = self.session.deserialize(parts, content=True, copy=True)
        except Exception:  # jupyter_client raises ValueError, KeyError, TypeError, ...
            log.debug("dropped a malformed message from a kernel")
            return None
        well_formed = isinstance(msg.get("content"), dict) and isinstance(msg.get("msg_type"), str)
        return msg if well_formed else None

    def channels_lost(self) -> bool:
        """Whether a channel has dropped since we last looked (cheap: no system call waits).

        A kernel that died while idle shows here first; the sandbox is asked only then.
        """
        if not self.closed and not self.lost:
            for monitor in self.monitors:
                peek: zmq.Socket[bytes] = zmq.Socket.shadow(monitor.underlying)  # synchronous
                while peek.poll(0):
                    frames = peek.recv_multipart(zmq.NOBLOCK)
                    if parse_monitor_message(frames)["event"] == zmq.EVENT_DISCONNECTED:
                        self.lost = True
        return self.closed or self.lost

    async def wait_ready(self, timeout: float, alive: Any) -> None:
        """Return once the kernel answers kernel_info and its iopub reaches us."""
        deadline = time.monotonic() + timeout
        poller = zmq.asyncio.Poller()
        poller.register(self.shell, zmq.POLLIN)
        poller.register(self.iopub, zmq.POLLIN)
        replied = published = False
        self.session.send(self.shell, "kernel_info_request", {})
        last_sent = time.monotonic()
        while not (replied and published):
            if time.monotonic() > deadline:
                stage = "its iopub channel" if replied else "kernel_info"
                raise KernelDied(f"the kernel did not become ready in time (no answer on {stage})")
            if not await alive():
                raise KernelDied("the kernel exited while starting")
            if time.monotonic() - last_sent > (RESEND_S if replied else UNANSWERED_RESEND_S):
                # Ask again: a request that reaches a starting kernel can go unanswered (as
                # jupyter_client, which asks every second), and the iopub subscription
                # propagates asynchronously, so a status of an early request may be lost.
                # Extra replies are ignored later (they answer no execute request).
                self.session.send(self.shell, "kernel_info_request", {})
                last_sent = time.monotonic()
            for sock, _ in await poller.poll(50):
                msg = await self._recv(sock)
                if msg is None:
                    continue
                if sock is self.shell and msg["msg_type"] == "kernel_info_reply":
                    replied = True
                elif sock is self.iopub:
                    # Any message proves the subscription works (the kernel publishes a
                    # status for each of our requests).
                    published = True
        self._start_draining()

    async def execute(
        self,
        code: str,
        user_expressions: dict[str, str],
        timeout: float,
        output_limit: int,
        alive: Any,
        silent: bool = False,
        on_output: OnOutput | None = None,
    ) -> Execution:
        """Run ``code``; raise ExecutionTimedOut or OutputTooLarge, else return the Execution.

        ``on_output`` is called with each output the Execution keeps, as it arrives.
        """
        self._stop_draining()
        try:
            return await self._execute(
                code, user_expressions, timeout, output_limit, alive, silent, on_output
            )
        finally:
            self._start_draining()

    async def _execute(
        self,
        code: str,
        user_expressions: dict[str, str],
        timeout: float,
        output_limit: int,
        alive: Any,
        silent: bool,
        on_output: OnOutput | None,
    ) -> Execution:
        started = time.perf_counter()
        content = {
            "code": code,
            "silent": silent,
            "store_history": not silent,
            "user_expressions": user_expressions,
            "allow_stdin": False,
            "stop_on_error": True,
        }
        sent = self.session.send(self.shell, "execute_request", content)
        assert sent is not None
        msg_id = sent["header"]["msg_id"]
        poller = zmq.asyncio.Poller()
        for sock in (self.shell, self.iopub, *self.monitors):
            poller.register(sock, zmq.POLLIN)
        reply: dict[str, Any] | None = None
        idle = False
        outputs: list[dict[str, Any]] = []
        used = 0
        deadline = time.monotonic() + timeout
        while reply is None or not idle:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ExecutionTimedOut()
            events = await poller.poll(min(remaining, 1.0) * 1000)
            if not events and not await alive():
                raise ChannelLost()
            for sock, _ in events:
                if sock in self.monitors:
                    frames = await sock.recv_multipart()
                    if parse_monitor_message(frames)["event"] == zmq.EVENT_DISCONNECTED:
                        self.lost = True
                        raise ChannelLost()
                    continue
                msg, size = await self._recv_reply_to(sock, msg_id)
                used += size
                if used > output_limit:
                    raise OutputTooLarge(
                        f"the cell produced more than {output_limit} bytes of output"
                    )
                if msg is None:
                    continue
                if sock is self.shell:
                    reply = msg
                elif msg["msg_type"] == "status":
                    idle = msg["content"].get("execution_state") == "idle"
                elif msg["msg_type"] in OUTPUT_MSG_TYPES:
                    output = _append_output(outputs, msg)
                    if output is not None and on_output is not None:
                        on_output({**output})  # a copy: later chunks merge into the first
        assert reply is not None
        return _execution(reply["content"], outputs, (time.perf_counter() - started) * 1000)

    async def wait_idle(self, timeout: float) -> bool:
        """After an interrupt: wait for the kernel's execute_reply of the running cell."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not await self.shell.poll(remaining * 1000):
                return False
            msg = await self._recv(self.shell)
            if msg is not None and msg["msg_type"] == "execute_reply":
                return True
        return False

    def interrupt(self) -> None:
        """Ask the kernel to interrupt its running cell (message mode: works in every sandbox)."""
        if self.closed:
            return
        self.session.send(self.control, "interrupt_request", {})

    def close(self) -> None:
        self.closed = True
        self._stop_draining()
        # Stop each monitor first: a monitor's inproc endpoint is named after its socket's fd,
        # and one left bound makes a later socket on the same fd fail or stall.
        for sock in self.sockets:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
        for sock in (*self.monitors, *self.sockets):
            sock.close(linger=0)


def _parent_id(parts: list[Any]) -> str | None:
    """The parent msg_id of a message's parts (signature, header, parent header, ...), read
    without checking the signature: only to skip messages that answer no request of ours."""
    try:
        parent = orjson.loads(parts[2])
    except (IndexError, orjson.JSONDecodeError):
        return None
    return parent.get("msg_id") if isinstance(parent, dict) else None


def _execution(result: dict[str, Any], outputs: list[dict[str, Any]], ms: float) -> Execution:
    """The Execution an execute_reply's content describes; fields a kernel got wrong read as
    an error of the cell (its code may have forged the reply)."""
    status = result.get("status")
    expressions = result.get("user_expressions")
    execution = Execution(
        status=status if status in ("ok", "error", "aborted") else "error",
        outputs=outputs,
        user_expressions=expressions if isinstance(expressions, dict) else {},
        elapsed_ms=ms,
    )
    if execution.status == "error":
        traceback = result.get("traceback")
        execution.error = {
            "ename": str(result.get("ename", "")) if status == "error" else "MalformedReply",
            "evalue": str(result.get("evalue", "")) if status == "error" else repr(status)[:200],
            "traceback": [strip_ansi(str(t)) for t in traceback]
            if isinstance(traceback, list)
            else [],
        }
    return execution


def _append_output(outputs: list[dict[str, Any]], msg: dict[str, Any]) -> dict[str, Any] | None:
    """Add an iopub output as an nbformat v4 output, merging consecutive stream chunks;
    return it as it came (a chunk stays a chunk), or None if it was dropped."""
    if msg["msg_type"] == "update_display_data":
        return None
    try:
        output = nbformat.v4.output_from_msg(msg)
        if output["output_type"] == "error":
            output["traceback"] = [strip_ansi(str(t)) for t in output["traceback"]]
        if output["output_type"] == "stream" and not isinstance(output["text"], str):
            raise TypeError("stream text")
    except (KeyError, TypeError, ValueError):
        log.debug("dropped a malformed %s message from a kernel", msg["msg_type"])
        return None
    if (
        output["output_type"] == "stream"
        and outputs
        and outputs[-1]["output_type"] == "stream"
        and outputs[-1]["name"] == output["name"]
    ):
        outputs[-1]["text"] += output["text"]
        return output
    outputs.append(output)
    return output
