"""The store database: DataExec's own tables (sessions, executions, cache index).

Owns the SQLAlchemy models, the engine of the store database and its Alembic migrations
(``server/store/migrations``). The store is not the data: the query role cannot reach it.

May import: errors. Nothing else of the server.
"""
