"""The package that lives inside every DataExec kernel, and the protocol the server shares.

Inside DataExec it warms the kernel (``python -m dataexec_kernel`` imports pandas, numpy and
pyarrow before the kernel answers), and, loaded as an IPython extension, captures each cell's
result for the server (``capture``): ``result_df`` if the cell set it, else the value of its
last expression, next to ``sql()``, ``load()``, ``save()``, ``conn`` and ``%%sql``
(``helpers``, through the broker: ``broker``). ``protocol`` is the one protocol between the
server and its kernels; the server imports it from here.

Outside DataExec, the analysts' client package (``dataexec_client``, installed from the
server's ``GET /client``) plugs into the same helpers: ``%load_ext dataexec_kernel`` and
``from dataexec_kernel import sql, load, connect`` work in any Jupyter or script.

Importing this package stays cheap: the server copies it into kernels without importing
anything heavy, and the helpers are imported when first used.

Modules and their arrows (each imports only those to its right):
    __main__ -> capture -> helpers, frames -> broker, placeholders -> protocol -> errors
    __main__ -> threads (a thread's output goes to the cell that started it)
    __main__ -> flushes (a flush with nothing to send costs nothing)
    zygote -> __main__ (the zygote sandbox's template: forks kernels, each confining itself)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names, each imported from its module on first use. ``connect`` and ``disconnect``
# are the analysts' client package's (not installed inside kernels), reached through helpers.
_LAZY = {
    "connect": "dataexec_kernel.helpers",
    "disconnect": "dataexec_kernel.helpers",
    "sql": "dataexec_kernel.helpers",
    "load": "dataexec_kernel.helpers",
    "save": "dataexec_kernel.helpers",
    "make_conn": "dataexec_kernel.helpers",
    **{
        name: "dataexec_kernel.errors"
        for name in (
            "DataExecError",
            "SqlNotAllowed",
            "QueryTimeout",
            "ResultTooLarge",
            "DatabaseUnavailable",
            "DatabaseError",
            "CacheKeyNotFound",
            "QuotaExceeded",
            "TooManyQueries",
            "AuthenticationFailed",
            "PermissionDenied",
            "InvalidRequest",
            "ServerUnavailable",
            "NotConfigured",
            "Unsupported",
        )
    },
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dataexec_kernel' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


def load_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    """``%load_ext dataexec_kernel``: the helpers, plus result capture in DataExec kernels.

    A DataExec kernel (it has a broker) gets result capture, the helpers through the broker
    and the pip refusal; any other IPython gets ``sql``, ``load``, ``save``, ``conn`` and
    ``%%sql`` only, going where the client package says.
    """
    from dataexec_kernel import broker

    if broker.available():
        from dataexec_kernel.capture import install

        install(ipython)
    else:
        from dataexec_kernel.helpers import install_helpers

        install_helpers(ipython)
