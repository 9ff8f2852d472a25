"""The analysed database: the SQL guard, read-only queries streamed as Arrow, the
schema and column profiles, and the one translator of driver errors.

May import: config, errors, telemetry, and ``dataexec_kernel.errors`` (the driver messages
that mean "unreachable", shared with the analysts' client). Nothing of sessions, kernels or
the cache.
"""
