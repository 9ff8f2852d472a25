"""An asyncio client for one kernel's Jupyter channels over ZMQ ``ipc``.

Small on purpose: a kernel serves one session and its executions run one at a time, so the
client sends an ``execute_request`` and collects iopub and shell until the reply and the
idle status of that request have both arrived, ignoring messages of earlier requests.

Each socket is read by one reader the event loop calls when the socket's descriptor wakes
(``_readable``), for the socket's whole life: it hands each message to what waits now (the
running execution, a start's ``kernel_info``, an interrupt's reply) or drops it. Waiting
through ``zmq.asyncio`` instead (a poller over six sockets, made for every execution and
re-armed for every message) and decoding through ``jupyter_client`` and ``nbformat`` (dates
parsed, every output run through the notebook schema's validator) made a ``1+1`` take 0.9
ms longer than a plain blocking client on the same kernel; now it takes no longer (see
bench/README.md).

Output is bounded twice: every socket has ``zmq.MAXMSGSIZE`` (a larger message drops the
connection, which a monitor socket reports), and the bytes of one execution's messages are
counted; past the cap the execution ends with ``OutputTooLarge`` and the caller replaces the
kernel. So a flood cannot make the server buffer more than the cap. A caller that streams
the cell (``on_output``) is handed each output as it arrives, within the same cap.

Output that belongs to no running request (a background thread printing after its cell
answered: the kernel attributes it to the cell that started the thread) is dropped, never
buffered: between executions the readers discard every message, and during one a message
of another request is recognised by its parent id alone (no signature check, no decoding of
the rest) and skipped. So it costs neither memory (ZMQ would otherwise queue up to its
high-water mark of such messages, each up to the size cap) nor the next cell's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson
import zmq
from jupyter_client.session import Session
from zmq.utils.monitor import parse_monitor_message

from server.errors import KernelDied, OutputTooLarge

log = logging.getLogger(__name__)

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
JSON_MIMETYPE = re.compile(r"^application/(.*\+)?json$")
OUTPUT_MSG_TYPES = ("stream", "display_data", "execute_result", "error", "update_display_data")
DELIMITER = b"<IDS|MSG>"
MONITOR_EVENTS = zmq.EVENT_DISCONNECTED
# Called with each output (nbformat v4, stream chunks unmerged) as it arrives.
OnOutput = Callable[[dict[str, Any]], None]
RESEND_S = 0.25
UNANSWERED_RESEND_S = 1.0
READY_POLL_S = 0.05
ALIVE_CHECK_S = 1.0
# Messages a reader takes before it lets the loop run others (a flood must not hold it).
READ_BATCH = 64


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


@dataclass
class Message:
    """A kernel's message, signature checked, as far as the client reads it."""

    msg_type: str
    content: dict[str, Any]


class _Waiter:
    """What the readers hand messages to while a request waits for its answer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.error: BaseException | None = None
        self.finished = False
        self._wake: asyncio.Future[None] | None = None

    def take(self, on_shell: bool, frames: list[bytes], client: KernelClient) -> None:
        raise NotImplementedError

    def fail(self, error: BaseException) -> None:
        if not self.finished:
            self.error, self.finished = error, True
            self.wake()

    def wake(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until finished, failed, woken or ``timeout`` seconds passed."""
        if self.finished:
            return
        self._wake = self.loop.create_future()
        timer = self.loop.call_later(timeout, self.wake)
        try:
            await self._wake
        finally:
            timer.cancel()
            self._wake = None


class _Collection(_Waiter):
    """One execution's messages: its outputs (within the byte cap), reply and idle status."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        msg_id: str,
        output_limit: int,
        on_output: OnOutput | None,
    ) -> None:
        super().__init__(loop)
        self.msg_id = msg_id
        self.output_limit = output_limit
        self.on_output = on_output
        self.outputs: list[dict[str, Any]] = []
        self.reply: Message | None = None
        self.idle = False
        self.used = 0

    def take(self, on_shell: bool, frames: list[bytes], client: KernelClient) -> None:
        parts = _parts(frames)
        if parts is not None and _parent_id(parts) != self.msg_id:
            return  # an earlier request's: skipped unread, uncounted
        self.used += sum(len(f) for f in frames)
        if self.used > self.output_limit:
            limit = self.output_limit
            self.fail(OutputTooLarge(f"the cell produced more than {limit} bytes of output"))
            return
        msg = client.decoded(parts)
        if msg is None:
            return
        if on_shell:
            self.reply = msg
        elif msg.msg_type == "status":
            self.idle = msg.content.get("execution_state") == "idle"
        elif msg.msg_type in OUTPUT_MSG_TYPES:
            output = _append_output(self.outputs, msg)
            if output is not None and self.on_output is not None:
                try:
                    self.on_output({**output})  # a copy: later chunks merge into the first
                except Exception as exc:
                    self.fail(exc)
                    return
        if self.reply is not None and self.idle:
            self.finished = True
            self.wake()


class _Ready(_Waiter):
    """A start: a ``kernel_info_reply`` on shell, and any message on iopub (it subscribed)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.replied = self.published = False

    def take(self, on_shell: bool, frames: list[bytes], client: KernelClient) -> None:
        msg = client.decoded(_parts(frames))
        if msg is None:
            return
        if on_shell and msg.msg_type == "kernel_info_reply":
            self.replied = True
        elif not on_shell:
            # Any message proves the subscription works (the kernel publishes a status for
            # each of our requests).
            self.published = True
        if self.replied and self.published:
            self.finished = True
            self.wake()


class _Reply(_Waiter):
    """After an interrupt: the ``execute_reply`` of the running cell."""

    def take(self, on_shell: bool, frames: list[bytes], client: KernelClient) -> None:
        if on_shell:
            msg = client.decoded(_parts(frames))
            if msg is not None and msg.msg_type == "execute_reply":
                self.finished = True
                self.wake()


class KernelClient:
    """Shell, iopub and control channels of one kernel (made in the running event loop)."""

    def __init__(
        self, connection_info: dict[str, Any], context: zmq.Context[Any], max_message_bytes: int
    ) -> None:
        key = connection_info["key"].encode()
        if connection_info["signature_scheme"] != "hmac-sha256":
            raise ValueError(f"unsupported signature scheme {connection_info['signature_scheme']}")
        # Sends go through jupyter_client's Session (one message per request); what comes
        # back is read here (``decoded``).
        self.session = Session(key=key, signature_scheme="hmac-sha256", username="dataexec")
        self._auth = hmac.new(key, digestmod=hashlib.sha256) if key else None
        self._loop = asyncio.get_running_loop()
        base = f"ipc://{connection_info['ip']}"
        self.sockets: list[zmq.Socket[bytes]] = []
        self.monitors: list[zmq.Socket[bytes]] = []

        def connect(kind: int, channel: str) -> zmq.Socket[bytes]:
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
        self.control = connect(zmq.DEALER, "control")  # requests only: its replies stay unread
        self.closed = False
        self.lost = False  # a channel dropped (kernel died, or a message over the size cap)
        self._waiter: _Waiter | None = None
        for sock in self._read_sockets():
            self._loop.add_reader(sock.FD, self._readable, sock)
            # A socket's descriptor wakes for a message only once a read has found it empty:
            # until then the first message (a monitor's only event) would wait unseen.
            self._readable(sock)

    # --- reading -------------------------------------------------------------------------

    def _readable(self, sock: zmq.Socket[bytes]) -> None:
        """Take what ``sock`` has (a batch at a time), handing each message on."""
        if self.closed:
            return
        for _ in range(READ_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:  # closed under us: the kernel is gone
                return
            if sock in self.monitors:
                if parse_monitor_message(frames)["event"] == zmq.EVENT_DISCONNECTED:
                    self.lost = True
                    if self._waiter is not None:
                        self._waiter.fail(ChannelLost())
            elif self._waiter is not None and not self._waiter.finished:
                self._waiter.take(sock is self.shell, frames, self)
        # More may wait: read on after the loop has run whatever else is ready.
        self._loop.call_soon(self._readable, sock)

    def _read_sockets(self) -> tuple[zmq.Socket[bytes], ...]:
        """The sockets with a reader on the loop (control's replies stay unread)."""
        return (self.shell, self.iopub, *self.monitors)

    def _read_all(self) -> None:
        for sock in self._read_sockets():
            self._readable(sock)

    def _send(self, sock: zmq.Socket[bytes], msg_type: str, content: dict[str, Any]) -> str:
        sent = self.session.send(sock, msg_type, content)
        assert sent is not None
        # A send lets ZMQ take in what arrived meanwhile without waking the descriptor: look.
        self._loop.call_soon(self._readable, sock)
        return str(sent["header"]["msg_id"])

    def decoded(self, parts: list[bytes] | None) -> Message | None:
        """The message of ``parts`` (signature, header, parent, metadata, content), or None
        if it is not a well-formed, correctly signed one.

        The tenant's code runs in the kernel and holds its signing key, so a signed message
        proves nothing: whatever does not decode into the fields we read is dropped (it
        counts against the output budget all the same).
        """
        if parts is None or len(parts) < 5:
            return None
        signature, header, parent, metadata, content = parts[:5]
        if self._auth is not None:
            mac = self._auth.copy()
            for part in (header, parent, metadata, content):
                mac.update(part)
            if not hmac.compare_digest(mac.hexdigest().encode(), signature):
                log.debug("dropped a message with a wrong signature from a kernel")
                return None
        head, body = _json(header), _json(content)
        if not (isinstance(head, dict) and isinstance(body, dict)):
            log.debug("dropped a malformed message from a kernel")
            return None
        msg_type = head.get("msg_type")
        return Message(msg_type, body) if isinstance(msg_type, str) else None

    def channels_lost(self) -> bool:
        """Whether a channel has dropped since we last looked (cheap: no system call waits).

        A kernel that died while idle shows here first; the sandbox is asked only then.
        """
        if not self.closed and not self.lost:
            for monitor in self.monitors:
                self._readable(monitor)
        return self.closed or self.lost

    # --- requests ------------------------------------------------------------------------

    async def wait_ready(self, timeout: float, alive: Any) -> None:
        """Return once the kernel answers kernel_info and its iopub reaches us."""
        deadline = time.monotonic() + timeout
        ready = self._waiter = _Ready(self._loop)
        try:
            self._send(self.shell, "kernel_info_request", {})
            last_sent = time.monotonic()
            while not ready.finished:
                if time.monotonic() > deadline:
                    stage = "its iopub channel" if ready.replied else "kernel_info"
                    raise KernelDied(
                        f"the kernel did not become ready in time (no answer on {stage})"
                    )
                if not await alive():
                    raise KernelDied("the kernel exited while starting")
                if time.monotonic() - last_sent > (
                    RESEND_S if ready.replied else UNANSWERED_RESEND_S
                ):
                    # Ask again: a request that reaches a starting kernel can go unanswered
                    # (as jupyter_client, which asks every second), and the iopub
                    # subscription propagates asynchronously, so a status of an early
                    # request may be lost. Extra replies answer no later request.
                    self._send(self.shell, "kernel_info_request", {})
                    last_sent = time.monotonic()
                await ready.wait(READY_POLL_S)
        finally:
            self._waiter = None
        if ready.error is not None:
            raise KernelDied("a channel dropped while the kernel started")

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
        """Run ``code``; raise ExecutionTimedOut, OutputTooLarge or ChannelLost, else return
        the Execution. ``on_output`` is called with each output the Execution keeps, as it
        arrives."""
        started = time.perf_counter()
        if self.lost:
            raise ChannelLost()
        content = {
            "code": code,
            "silent": silent,
            "store_history": not silent,
            "user_expressions": user_expressions,
            "allow_stdin": False,
            "stop_on_error": True,
        }
        msg_id = self._send(self.shell, "execute_request", content)
        collection = self._waiter = _Collection(self._loop, msg_id, output_limit, on_output)
        deadline = time.monotonic() + timeout
        try:
            while not collection.finished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ExecutionTimedOut()
                await collection.wait(min(remaining, ALIVE_CHECK_S))
                if not collection.finished:
                    self._read_all()  # what a descriptor did not wake for (see __init__)
                    if not collection.finished and not await alive():
                        raise ChannelLost()
        finally:
            self._waiter = None
        if collection.error is not None:
            raise collection.error
        assert collection.reply is not None
        elapsed = (time.perf_counter() - started) * 1000
        return _execution(collection.reply.content, collection.outputs, elapsed)

    async def wait_idle(self, timeout: float) -> bool:
        """After an interrupt: wait for the kernel's execute_reply of the running cell."""
        waiter = self._waiter = _Reply(self._loop)
        try:
            deadline = time.monotonic() + timeout
            while not waiter.finished and (remaining := deadline - time.monotonic()) > 0:
                await waiter.wait(remaining)
        finally:
            self._waiter = None
        return waiter.finished and waiter.error is None

    def interrupt(self) -> None:
        """Ask the kernel to interrupt its running cell (message mode: works in every sandbox)."""
        if self.closed:
            return
        self.session.send(self.control, "interrupt_request", {})

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._waiter is not None:
            self._waiter.fail(ChannelLost())
        for sock in self._read_sockets():
            with contextlib.suppress(ValueError, zmq.ZMQError):
                self._loop.remove_reader(sock.FD)
        # Stop each monitor first: a monitor's inproc endpoint is named after its socket's fd,
        # and one left bound makes a later socket on the same fd fail or stall.
        for sock in self.sockets:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
        for sock in (*self.monitors, *self.sockets):
            sock.close(linger=0)


def _parts(frames: list[bytes]) -> list[bytes] | None:
    """A message's parts after its routing identities, or None if it has no delimiter."""
    try:
        return frames[frames.index(DELIMITER) + 1 :]
    except ValueError:
        return None


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:  # what orjson refuses and Python's json reads (integers over 64 bits, say)
            return json.loads(data)
        except ValueError:
            return None


def _parent_id(parts: list[bytes]) -> str | None:
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


def _output(msg: Message) -> dict[str, Any] | None:
    """The nbformat v4 output of an iopub output message, or None if its content does not
    fit the notebook schema (checked by hand: the schema's validator cost 0.2 ms an output)."""
    c, kind = msg.content, msg.msg_type
    if kind == "stream":
        name, text = c.get("name"), c.get("text")
        if isinstance(name, str) and isinstance(text, str):
            return {"output_type": "stream", "name": name, "text": text}
        return None
    if kind == "error":
        ename, evalue, traceback = c.get("ename"), c.get("evalue"), c.get("traceback")
        if not (isinstance(ename, str) and isinstance(evalue, str) and _strings(traceback)):
            return None
        lines = [strip_ansi(t) for t in traceback]
        return {"output_type": "error", "ename": ename, "evalue": evalue, "traceback": lines}
    data, metadata = c.get("data"), c.get("metadata")
    if not (_mimebundle(data) and isinstance(metadata, dict)):
        return None
    if kind == "display_data":
        return {"output_type": "display_data", "data": data, "metadata": metadata}
    count = c.get("execution_count")
    if count is not None and not (type(count) is int and count >= 0):
        return None
    return {"output_type": kind, "data": data, "metadata": metadata, "execution_count": count}


def _strings(value: Any) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _mimebundle(data: Any) -> bool:
    """Whether ``data`` is a notebook mimebundle: text (or lines) under each mimetype, any
    JSON value under a JSON one."""
    return isinstance(data, dict) and all(
        isinstance(v, str) or _strings(v) or JSON_MIMETYPE.match(k) for k, v in data.items()
    )


def _append_output(outputs: list[dict[str, Any]], msg: Message) -> dict[str, Any] | None:
    """Add an iopub output as an nbformat v4 output, merging consecutive stream chunks;
    return it as it came (a chunk stays a chunk), or None if it was dropped."""
    if msg.msg_type == "update_display_data":
        return None
    output = _output(msg)
    if output is None:
        log.debug("dropped a malformed %s message from a kernel", msg.msg_type)
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
