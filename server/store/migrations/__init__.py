"""Alembic migrations of the store (run by ``server.store.database.StoreDatabase.upgrade``)."""
