"""The analysts' client: ``sql()``, ``load()`` and ``save()`` outside DataExec kernels.

A package of its own, installed into an analyst's Jupyter (``GET /client`` of a DataExec
server hands out the wheel, with ``dataexec_kernel`` beside it) and never into kernels: it
holds the HTTP client (``remote``) and the database client (``database``, which brings a
database driver). Importing it plugs it into ``dataexec_kernel.helpers``, which the
notebook's ``%load_ext dataexec_kernel`` and ``from dataexec_kernel import sql`` use.

Where a call goes is decided at every call, first match wins:

1. ``connect(url, token)`` or ``connect(database_url=...)`` in this process;
2. ``$DATAEXEC_BROKER``: a DataExec kernel, the broker answers (``current()`` is None);
3. ``$DATAEXEC_URL`` (with ``$DATAEXEC_TOKEN``): a DataExec server over HTTP;
4. ``$DATAEXEC_DATABASE_URL``: a database, queried directly.

Otherwise every call raises NotConfigured, saying how to configure one. Importing this module
is cheap: the HTTP and database clients are imported when first used.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from dataexec_kernel import broker, helpers
from dataexec_kernel.errors import NotConfigured

DEFAULT_TIMEOUT_S = 300.0
SETUP_HELP = (
    "sql(), load() and save() have nothing to talk to: this is not a DataExec kernel and no "
    "connection is configured. Set DATAEXEC_URL and DATAEXEC_TOKEN (a DataExec server, e.g. "
    "http://127.0.0.1:8001) or DATAEXEC_DATABASE_URL (a database, e.g. "
    "postgresql://user:password@host:5432/db), or call dataexec_kernel.connect(url, token) or "
    "dataexec_kernel.connect(database_url=...)."
)

_lock = threading.Lock()
_explicit: Any = None  # what connect() made, if it was called
_from_env: tuple[tuple[str, ...], Any] | None = None  # the environment's client, and its source


def connect(
    url: str | None = None,
    token: str | None = None,
    *,
    database_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Any:
    """Send ``sql()``, ``load()`` and ``save()`` to a DataExec server or to a database.

    ``connect("http://host:8001", token)`` uses DataExec's HTTP API (the token defaults to
    ``$DATAEXEC_TOKEN``); ``connect(database_url="postgresql://...")`` queries the database
    directly. It replaces any earlier ``connect()`` and wins over the environment; returns
    the client.
    """
    global _explicit
    if (url is None) == (database_url is None):
        raise TypeError("connect() takes a DataExec url (and token), or a database_url: one")
    if url is not None:
        from dataexec_client.remote import RemoteClient

        client: Any = RemoteClient(url, token or os.environ.get("DATAEXEC_TOKEN"), timeout)
    else:
        if token is not None:
            raise TypeError("connect(): a token goes with a DataExec url, not a database_url")
        from dataexec_client.database import DatabaseClient

        client = DatabaseClient(str(database_url))
    with _lock:
        previous, _explicit = _explicit, client
    if previous is not None:
        previous.close()
    return client


def disconnect() -> None:
    """Forget what ``connect()`` set: the environment decides again."""
    global _explicit, _from_env
    with _lock:
        previous, _explicit = _explicit, None
        cached, _from_env = _from_env, None
    for client in (previous, cached[1] if cached else None):
        if client is not None:
            client.close()


def current() -> Any:
    """The client to use now, or None inside a DataExec kernel (the broker answers)."""
    global _from_env
    if _explicit is not None:
        return _explicit
    if broker.available():
        return None
    url = os.environ.get("DATAEXEC_URL", "").strip()
    database_url = os.environ.get("DATAEXEC_DATABASE_URL", "").strip()
    if url:
        source: tuple[str, ...] = ("url", url, os.environ.get("DATAEXEC_TOKEN", "").strip())
    elif database_url:
        source = ("database", database_url)
    else:
        raise NotConfigured(SETUP_HELP)
    with _lock:
        if _from_env is not None and _from_env[0] == source:
            return _from_env[1]
        stale = _from_env[1] if _from_env is not None else None
        if source[0] == "url":
            from dataexec_client.remote import RemoteClient

            client: Any = RemoteClient(url, source[2] or None, DEFAULT_TIMEOUT_S)
        else:
            from dataexec_client.database import DatabaseClient

            client = DatabaseClient(database_url)
        _from_env = (source, client)
    if stale is not None:
        stale.close()
    return client


helpers.use_client(current)
