"""One module per store migration, applied in order by Alembic."""
