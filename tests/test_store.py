"""The store: migrations build it, match the models, and the query role cannot reach it.

Each test runs against the real embedded store database (owner role) and a SQLite file.
The PostgreSQL store is shared by the whole run, so tests write rows under a fresh tenant
name and delete them afterwards, and never downgrade.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.orm import Session

from server.embedded.postgres import STORE_DATABASE, EmbeddedPostgres
from server.store.database import StoreDatabase
from server.store.models import Base, CacheEntry, CacheEviction, ExecutionRow, SessionRow

TABLES = {
    *("sessions", "executions", "session_frames", "cache_entries", "cache_evictions"),
    "audit_executions",
}


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StoreDatabase]:
    """An upgraded store on the embedded PostgreSQL's store database, or on a SQLite file."""
    if request.param == "postgresql":
        pg: EmbeddedPostgres = request.getfixturevalue("embedded_pg")
        store = StoreDatabase(pg.store_url)
    else:
        path: Path = tmp_path_factory.mktemp("store") / "store.db"
        store = StoreDatabase(f"sqlite:///{path}")
    store.upgrade()
    yield store
    store.close()


@pytest.fixture
def tenant(store: StoreDatabase) -> Iterator[str]:
    """A tenant name no other test uses; its rows are deleted afterwards."""
    name = "test-" + secrets.token_hex(6)
    yield name
    with Session(store.engine) as db, db.begin():
        for model in (CacheEviction, CacheEntry):
            db.execute(sa.delete(model).where(model.tenant == name))
        db.execute(sa.delete(SessionRow).where(SessionRow.tenant == name))


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def same_time(stored: datetime, expected: datetime) -> bool:
    """SQLite gives timestamps back without their zone (stored as UTC here)."""
    if stored.tzinfo is None:
        return stored == expected.replace(tzinfo=None)
    return stored == expected


def new_session(tenant: str, client_id: str = "s1") -> SessionRow:
    at = now()
    return SessionRow(
        id=str(uuid.uuid4()),
        tenant=tenant,
        client_id=client_id,
        pool="default",
        created=at,
        last_activity=at,
        execution_count=0,
        state="active",
    )


def test_upgrade_creates_the_tables(store: StoreDatabase) -> None:
    assert TABLES | {"alembic_version"} <= set(sa.inspect(store.engine).get_table_names())


def test_alembic_version_is_at_head(store: StoreDatabase) -> None:
    head = ScriptDirectory.from_config(store.alembic_config()).get_current_head()
    with store.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head == "0003"


def test_second_upgrade_changes_nothing(store: StoreDatabase) -> None:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        statements.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        store.upgrade()
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)
    ddl = [s for s in statements if s.lstrip().upper().startswith(("CREATE", "ALTER", "DROP"))]
    assert ddl == []
    assert not any("INSERT INTO alembic_version" in s for s in statements)


def test_models_match_the_migrated_schema(store: StoreDatabase) -> None:
    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == []


def test_each_model_round_trips(store: StoreDatabase, tenant: str) -> None:
    session = new_session(tenant)
    session_id, at = session.id, session.created
    key = str(uuid.uuid4())
    lineage = {"sql": "SELECT 1", "code": None, "inputs": [str(uuid.uuid4())]}
    schema = [{"name": "a", "type": "int64"}]
    with Session(store.engine) as db, db.begin():
        db.add(session)
        db.flush()
        db.add_all(
            [
                ExecutionRow(
                    session_id=session_id,
                    execution_count=1,
                    language="sql",
                    code="SELECT 1",
                    result_name="df_1",
                    status="ok",
                    started=at,
                    elapsed_ms=12,
                    row_count=1,
                    cache_key=key,
                    kernel_replaced="OUT_OF_MEMORY",
                ),
                CacheEntry(
                    key=key,
                    tenant=tenant,
                    session_id=session_id,
                    status="ready",
                    rows=1,
                    columns=["a"],
                    schema=schema,
                    bytes=1024,
                    path=f"{key[:2]}/{key}.parquet",
                    created=at,
                    last_used=at,
                    expires=at + timedelta(days=1),
                    lineage=lineage,
                ),
                CacheEviction(key=str(uuid.uuid4()), tenant=tenant, reason="ttl", at=at),
            ]
        )
    with Session(store.engine) as db:
        got = db.scalars(sa.select(SessionRow).where(SessionRow.tenant == tenant)).one()
        assert (got.id, got.client_id, got.pool) == (session_id, "s1", "default")
        assert got.state == "active"
        assert same_time(got.created, at) and got.execution_count == 0
        run = db.scalars(sa.select(ExecutionRow).where(ExecutionRow.session_id == got.id)).one()
        assert (run.execution_count, run.status, run.cache_key) == (1, "ok", key)
        assert run.error_type is None and run.kernel_replaced == "OUT_OF_MEMORY"
        assert same_time(run.started, at)
        entry = db.get(CacheEntry, key)
        assert entry is not None
        assert (entry.status, entry.rows, entry.bytes) == ("ready", 1, 1024)
        assert (entry.columns, entry.schema, entry.lineage) == (["a"], schema, lineage)
        assert same_time(entry.expires, at + timedelta(days=1))
        eviction = db.scalars(sa.select(CacheEviction).where(CacheEviction.tenant == tenant)).one()
        assert eviction.reason == "ttl"


def test_client_id_is_unique_within_a_tenant(store: StoreDatabase, tenant: str) -> None:
    with Session(store.engine) as db, db.begin():
        db.add(new_session(tenant, "same"))
        db.add(new_session(tenant + "-other", "same"))  # another tenant may use the id
        db.execute(sa.delete(SessionRow).where(SessionRow.tenant == tenant + "-other"))
    with pytest.raises(sa.exc.IntegrityError):
        with Session(store.engine) as db, db.begin():
            db.add(new_session(tenant, "same"))


def test_cache_status_is_one_of_three(store: StoreDatabase, tenant: str) -> None:
    at = now()
    entry = CacheEntry(
        key=str(uuid.uuid4()),
        tenant=tenant,
        status="gone",
        path="x.parquet",
        created=at,
        last_used=at,
        expires=at,
        lineage={},
    )
    with pytest.raises(sa.exc.IntegrityError):
        with Session(store.engine) as db, db.begin():
            db.add(entry)


def test_query_role_cannot_connect_to_the_store(embedded_pg: EmbeddedPostgres) -> None:
    engine = sa.create_engine(embedded_pg.query_url.set(database=STORE_DATABASE))
    try:
        with pytest.raises(sa.exc.OperationalError, match="permission denied"):
            engine.connect().close()
    finally:
        engine.dispose()
