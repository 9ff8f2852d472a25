"""The real embedded PostgreSQL, started once per test run, with the demo data (a plugin).

This module owns the session fixtures ``embedded_pg`` (the cluster), ``query_engine`` (its
SELECT-only role) and ``admin_engine`` (its owner role). ``tests/conftest.py`` registers it
as a plugin rather than importing it, so that each session fixture exists once however many
modules use it; nothing starts until a test asks for one of them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from server.embedded.postgres import EmbeddedPostgres


@pytest.fixture(scope="session")
def embedded_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A started cluster under a fresh state dir, demo data loaded; stopped at the end."""
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("pg-state"), demo_data=True)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def query_engine(embedded_pg: EmbeddedPostgres) -> Iterator[sa.Engine]:
    """The SELECT-only role on the analysed database."""
    engine = sa.create_engine(embedded_pg.query_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def admin_engine(embedded_pg: EmbeddedPostgres) -> Iterator[sa.Engine]:
    """The owner role on the analysed database (makes schemas and tables)."""
    engine = sa.create_engine(embedded_pg.admin_url)
    yield engine
    engine.dispose()
