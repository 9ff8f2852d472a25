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
"""

from __future__ import annotations

import _thread
import contextvars
import threading
from collections.abc import Callable
from typing import Any

Start = Callable[..., int]


def _in_starters_context(start: Start) -> Start:
    def start_new_thread(function: Callable[..., Any], args: tuple[Any, ...], *kwargs: Any) -> int:
        context = contextvars.copy_context()
        return start(context.run, (function, *args), *kwargs)

    return start_new_thread


def install() -> None:
    """Start every later thread in a copy of its starter's context.

    Called once the kernel's own threads run (they keep their empty contexts).
    """
    threading._start_new_thread = _in_starters_context(threading._start_new_thread)  # type: ignore[attr-defined]
    _thread.start_new_thread = _in_starters_context(_thread.start_new_thread)
