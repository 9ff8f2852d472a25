"""The broker: the only door from a kernel to data.

Owns the per-kernel unix socket server that answers ``sql()``, ``load()`` and ``put``
(results, ``save()``, checkpoints) with Arrow, and the ``Caller`` that says which tenant,
session and step a kernel serves. Frames are the kernel protocol's
(``dataexec_kernel.protocol``).

May import: sql, cache, config, errors, telemetry, and the kernel protocol.
"""
