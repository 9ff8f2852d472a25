"""A thread's output belongs to the cell that started it (DataExec kernels only).

ipykernel sends what a thread writes to ``sys.stdout`` or ``sys.stderr`` (and what it
displays) as the output of the request in the writing thread's context (a ContextVar), and
when that context has none, as the output of whichever request the kernel handles now. In
Python 3.11 a new thread starts with an empty context, so a daemon thread that goes on
printing after its cell answered had its output counted as the output of every later cell:
each of them answered the thread's text, or ``OUTPUT_TOO_LARGE``.

``install`` makes every thread start in a copy of its starter's context (what Python 3.14
does with ``thread_inherit_context``), so that output goes to the cell that started the
thread: the server drops it once that cell has answered. A thread started by a thread
inherits in turn. The cost: a worker thread started by one cell (a ``ThreadPoolExecutor``
kept in a variable) and given work by a later one prints as the first cell.

Two more bounds on that output (``_bounded_write``), since the server drops it anyway and a
thread printing in a loop could otherwise send a lot of it:

- once another request runs, text written in an earlier cell's context is dropped here,
  not sent;
- ipykernel sends all the text written for one request since its last send as one message
  (every 0.2 s): a loop printing fast made one message over the server's ``zmq.MAXMSGSIZE``,
  which drops the channel, and whatever cell ran then answered ``OUTPUT_TOO_LARGE`` and
  lost its kernel. A writer whose request has ``FLUSH_AT`` characters waiting now sends
  them and waits for the send, which also slows the loop to the pace of the socket.
"""

from __future__ import annotations

import _thread
import contextvars
import threading
from collections.abc import Callable
from typing import Any

Start = Callable[..., int]

# Characters of one request's text waiting to be sent before its writer sends them itself.
FLUSH_AT = 64 * 1024


def _in_starters_context(start: Start) -> Start:
    def start_new_thread(function: Callable[..., Any], args: tuple[Any, ...], *kwargs: Any) -> int:
        context = contextvars.copy_context()
        return start(context.run, (function, *args), *kwargs)

    return start_new_thread


def _bounded_write(write: Callable[[Any, str], int | None]) -> Callable[[Any, str], int | None]:
    def bounded(stream: Any, text: str) -> int | None:
        parent = stream.parent_header  # the writer's request (its context's)
        if parent.get("msg_id") != stream._parent_header_global.get("msg_id"):
            return len(text)  # a cell that has answered: the server would drop it
        written = write(stream, text)
        with stream._buffer_lock:
            waiting = stream._buffers[frozenset(parent.items())].tell()
        if waiting > FLUSH_AT:
            stream.flush()
        return written

    return bounded


def install() -> None:
    """Start every later thread in a copy of its starter's context; bound what threads print.

    Called once the kernel's own threads run (they keep their empty contexts).
    """
    from ipykernel.iostream import OutStream

    threading._start_new_thread = _in_starters_context(threading._start_new_thread)  # type: ignore[attr-defined]
    _thread.start_new_thread = _in_starters_context(_thread.start_new_thread)
    OutStream.write = _bounded_write(OutStream.write)  # type: ignore[method-assign]
