"""The package that lives inside every DataExec kernel, and the client for notebooks outside.

Inside DataExec it warms the kernel (``python -m dataexec_kernel`` imports pandas, numpy and
pyarrow before the kernel answers), and, loaded as an IPython extension, captures each cell's
result for the server: ``result_df`` if the cell set it, else the value of its last
expression, next to ``sql()``, ``load()``, ``save()``, ``conn`` and ``%%sql`` (through the
broker).

Outside DataExec (``pip install`` it into any Jupyter), ``%load_ext dataexec_kernel`` gives
the same helpers, talking to a DataExec server (``DATAEXEC_URL`` and ``DATAEXEC_TOKEN``) or to
a database (``DATAEXEC_DATABASE_URL``), or to what ``dataexec_kernel.connect()`` was given;
``from dataexec_kernel import sql, load, connect`` works in scripts too.

Importing this package stays cheap: the server copies it into kernels without importing
anything heavy, and the helpers are imported when first used.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

# Public names, each imported from its module on first use.
_LAZY = {
    "connect": "client",
    "disconnect": "client",
    "sql": "data",
    "load": "data",
    "save": "data",
    "make_conn": "data",
    "DataExecError": "data",
    "SqlNotAllowed": "data",
    "QueryTimeout": "data",
    "ResultTooLarge": "data",
    "DatabaseUnavailable": "data",
    "DatabaseError": "data",
    "CacheKeyNotFound": "data",
    "QuotaExceeded": "data",
    "AuthenticationFailed": "data",
    "PermissionDenied": "data",
    "InvalidRequest": "data",
    "ServerUnavailable": "data",
    "NotConfigured": "data",
    "Unsupported": "data",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dataexec_kernel' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dataexec_kernel.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


def load_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    """``%load_ext dataexec_kernel``: the helpers, plus result capture in DataExec kernels.

    A DataExec kernel (``$DATAEXEC_BROKER`` set) gets result capture, the helpers through
    the broker and the pip refusal; any other IPython gets ``sql``, ``load``, ``save``,
    ``conn`` and ``%%sql`` only, going where ``dataexec_kernel.client`` says.
    """
    if os.environ.get("DATAEXEC_BROKER"):
        from dataexec_kernel.extension import install

        install(ipython)
    else:
        from dataexec_kernel.data import install_helpers

        install_helpers(ipython)
