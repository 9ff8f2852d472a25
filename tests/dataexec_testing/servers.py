"""What the external database servers share: names, logins, free ports, polling, leak checks.

The names are docs/databases.md's own (``analytics``, ``analytics_owner``,
``dataexec_reader``), so the doc's SQL runs unchanged. ``leftover_pids`` is how the tests
tell that a stopped server left nothing running: every server process names its directory
on its command line (``-D <dir>/data``, ``--defaults-file=<dir>/my.cnf``).
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

HOST = "127.0.0.1"
DATABASE = "analytics"
OWNER = "analytics_owner"
READER = "dataexec_reader"  # as docs/databases.md names it
CERTUSER = "dataexec_certuser"

T = TypeVar("T")


@dataclass(frozen=True)
class Login:
    """A role or user and its password (None: it logs in with a client certificate)."""

    user: str
    password: str | None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (a race: callers retry)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` (SO_REUSEADDR, as the servers set it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def poll(attempt: Callable[[], T | None], timeout: float, what: str) -> T:
    """Call ``attempt`` until it returns something other than None (every 20 ms, up to
    ``timeout`` seconds); ``attempt`` raises to give up early."""
    deadline = time.monotonic() + timeout
    while True:
        result = attempt()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.02)


def leftover_pids(directory: Path) -> list[int]:
    """Pids of processes with an argument naming ``directory`` or a path below it (a stopped
    server has none). Reads /proc rather than ``pgrep -f``: a regex over the whole command
    line would take ``.../mariadb1`` for ``.../mariadb10``."""
    names_it = re.compile(re.escape(str(directory.absolute())) + r"(?:/|$)")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if any(names_it.search(arg.decode(errors="replace")) for arg in args):
            found.append(int(entry.name))
    return sorted(found)
