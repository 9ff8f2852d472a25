"""Sessions: a tenant's analysis, run step by step in a kernel of its own.

Owns the session manager (the one door for running code: in a session or once), the
execution of a step (the cell for SQL and execute-on-data, the run, the answer), the
checkpoints that let a session outlive its kernel, the session records in the store,
the history of steps and the replay of imported notebooks.

May import: kernels, broker, cache, notebook, store, sql (types only), config, errors, clock,
telemetry, and the kernel protocol (``dataexec_kernel.protocol``). Never tornado or HTTP.
"""
