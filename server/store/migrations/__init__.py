"""Alembic migrations of the store (run by ``server.store.Store.upgrade``)."""
