"""A MariaDB server playing "the client's own database", from Debian's ``mariadb-server``.

``start_external_mariadb(directory, tls)`` initialises a data dir with
``mariadb-install-db``, starts ``mariadbd`` and returns an ``ExternalMariaDB``; ``stop()``
shuts it down. What it is:

- everything under ``directory``: ``my.cnf`` (the only option file read: the host's
  /etc/mysql is never consulted), ``data/``, the unix socket ``mysqld.sock``, ``error.log``
  and ``client.cnf`` (root's login, for the ``mariadb`` command line);
- run as the system user of ``server.embedded.os_access.os_user()`` when we are root (the
  same unprivileged account as the PostgreSQL clusters; ``grant_search`` lets it reach the
  pytest tmp dir), otherwise as ourselves;
- TCP on 127.0.0.1 only, on a free port, ``skip-name-resolve``; InnoDB without flushing or
  doublewrite (test data: start-up and loads stay fast); ``time_zone`` UTC by name (the
  zone tables hold UTC only), ``utf8mb4`` as Debian's own config sets it;
- TLS on with the test certificates (``ssl_ca``/``ssl_cert``/``ssl_key``) and not required,
  so a client chooses: plain, or TLS verified with ``ssl_mode=VERIFY_CA``/
  ``VERIFY_IDENTITY`` and ``ssl_ca`` (the server certificate names 127.0.0.1 and localhost);
- users: ``root`` (``localhost`` over the socket and ``127.0.0.1`` over TCP, a generated
  password; install-db's other root accounts are dropped); ``analytics_owner`` (ALL on
  ``analytics``: made its tables and views, ``sample_tables.MARIADB_DDL``);
  ``dataexec_reader`` made by executing docs/databases.md's SQL (``role_sql``); and
  ``dataexec_certuser`` (SELECT on ``analytics``, ``REQUIRE SUBJECT '/CN=dataexec_reader'
  AND ISSUER`` the test CA: it logs in only with the test client certificate).
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import MySQLdb
import sqlalchemy as sa

from dataexec_testing import role_sql
from dataexec_testing.sample_tables import MARIADB_DDL, mariadb_inserts
from dataexec_testing.servers import (
    CERTUSER,
    DATABASE,
    HOST,
    OWNER,
    READER,
    Login,
    free_port,
    poll,
    port_free,
)
from dataexec_testing.tls import TlsFiles
from server.embedded.os_access import give, grant_search, os_user

ROOT = "root"
DRIVER = "mysql+mysqldb"  # mysqlclient, the driver DataExec ships for MariaDB/MySQL
START_TIMEOUT_S = 60.0

# Only what the tests need differs from a stock server; each line says why.
_SERVER_CNF = """\
[mariadbd]
datadir = {data}
socket = {socket}
pid-file = {directory}/mariadbd.pid
log-error = {directory}/error.log
port = {port}
bind-address = 127.0.0.1
# grants name IPs and '%' only; no DNS lookups on connect
skip-name-resolve
default-time-zone = UTC
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci
ssl-ca = {directory}/ca.crt
ssl-cert = {directory}/server.crt
ssl-key = {directory}/server.key
# test data: never wait for the disk
innodb_flush_log_at_trx_commit = 0
innodb_doublewrite = 0
innodb_flush_method = nosync
innodb_buffer_pool_size = 64M
innodb_log_file_size = 32M
performance_schema = OFF
skip-log-bin
"""


@dataclass
class ExternalMariaDB:
    """A started MariaDB server (see the module docstring).

    URLs are SQLAlchemy ``mysql+mysqldb://`` URLs over TCP; ``ssl_mode`` (``REQUIRED``,
    ``VERIFY_CA``, ``VERIFY_IDENTITY``) adds ``ssl_ca`` (the test CA, or ``ca=...``, e.g.
    ``tls.wrong_ca_cert``) when it verifies; ``client_cert=True`` adds ``ssl_cert``/
    ``ssl_key``. Render with ``url.render_as_string(hide_password=False)``.
    """

    host: str
    port: int
    socket: Path
    database: str
    root: Login
    owner: Login
    reader: Login
    certuser: Login
    tls: TlsFiles
    directory: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "error.log"

    @property
    def client_cnf(self) -> Path:
        """An option file with root's login over the socket (``mariadb --defaults-file=``)."""
        return self.directory / "client.cnf"

    def url(
        self,
        login: Login,
        *,
        database: str | None = None,
        ssl_mode: str | None = None,
        ca: Path | None = None,
        client_cert: bool = False,
        drivername: str = DRIVER,
    ) -> sa.URL:
        """A SQLAlchemy URL for ``login`` over TCP (see the class docstring for the TLS)."""
        query: dict[str, str] = {}
        if ssl_mode:
            query["ssl_mode"] = ssl_mode
        if ca is not None or (ssl_mode or "").upper().startswith("VERIFY"):
            query["ssl_ca"] = str(ca or self.tls.ca_cert)
        if client_cert:
            query["ssl_cert"] = str(self.tls.client_cert)
            query["ssl_key"] = str(self.tls.client_key)
        return sa.URL.create(
            drivername,
            username=login.user,
            password=login.password,
            host=self.host,
            port=self.port,
            database=database or self.database,
            query=query,
        )

    def reader_url(self, ssl_mode: str | None = None, **kwargs: Any) -> sa.URL:
        """The SELECT-only user made by docs/databases.md (see ``url`` for the options)."""
        return self.url(self.reader, ssl_mode=ssl_mode, **kwargs)

    def owner_url(self, ssl_mode: str | None = None, **kwargs: Any) -> sa.URL:
        """``analytics_owner``: ALL on ``analytics`` (writes rows, makes tables)."""
        return self.url(self.owner, ssl_mode=ssl_mode, **kwargs)

    def admin_url(self, ssl_mode: str | None = None, **kwargs: Any) -> sa.URL:
        """``root`` over TCP (every privilege)."""
        return self.url(self.root, ssl_mode=ssl_mode, **kwargs)

    def certuser_url(self, ssl_mode: str = "VERIFY_IDENTITY", **kwargs: Any) -> sa.URL:
        """``dataexec_certuser`` with the test client certificate (and its password)."""
        kwargs.setdefault("client_cert", True)
        return self.url(self.certuser, ssl_mode=ssl_mode, **kwargs)

    def reader_env(self, ssl_mode: str | None = None) -> dict[str, str]:
        """The reader as the replaced system's ``DB_*`` variables (``DB_DIALECT=mysql``);
        ``ssl_mode`` goes into ``DB_SSL_MODE`` as given, and a verifying mode (``verify-*``
        or ``VERIFY_*``) adds ``DB_SSL_ROOT_CERT``."""
        env = {
            "DB_DIALECT": "mysql",
            "DB_HOST": self.host,
            "DB_PORT": str(self.port),
            "DB_USER": self.reader.user,
            "DB_PASSWORD": self.reader.password or "",
            "DB_NAME": self.database,
        }
        if ssl_mode:
            env["DB_SSL_MODE"] = ssl_mode
            if ssl_mode.lower().startswith("verify"):
                env["DB_SSL_ROOT_CERT"] = str(self.tls.ca_cert)
        return env

    @contextlib.contextmanager
    def connect(
        self, login: Login | None = None, *, database: str | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        """A MySQLdb connection, closed on exit. Default: root over the unix socket; with
        ``login``, over TCP, kwargs going to ``url()`` (``ssl_mode``, ``ca``,
        ``client_cert``)."""
        if login is None:
            conn = MySQLdb.connect(
                unix_socket=str(self.socket),
                user=self.root.user,
                password=self.root.password or "",
                database=database or self.database,
                charset="utf8mb4",
                connect_timeout=10,
            )
        else:
            url = self.url(login, database=database, **kwargs)
            args: dict[str, Any] = {}
            keys = ("ssl_ca", "ssl_cert", "ssl_key")
            ssl = {key[4:]: str(url.query[key]) for key in keys if key in url.query}
            if ssl:
                args["ssl"] = ssl
            if "ssl_mode" in url.query:
                args["ssl_mode"] = url.query["ssl_mode"]
            conn = MySQLdb.connect(
                host=url.host,
                port=url.port,
                user=url.username,
                password=url.password or "",
                database=url.database,
                charset="utf8mb4",
                connect_timeout=10,
                **args,
            )
        try:
            yield conn
        finally:
            conn.close()

    def admin(
        self, sql: str, params: Any = None, *, database: str | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement as root (autocommit, in ``analytics`` unless told); its rows."""
        with self.connect(database=database) as conn:
            conn.autocommit(True)
            cur = conn.cursor()
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    def processlist(self, user: str | None = None) -> list[dict[str, Any]]:
        """The server's process list (of ``user`` if given), this query's own thread left
        out: id, user, host, db, command, time, state, info (the statement)."""
        rows = self.admin(
            "SELECT id, user, host, db, command, time, state, info"
            " FROM information_schema.processlist"
            " WHERE id <> connection_id() AND (%s IS NULL OR user = %s)",
            (user, user),
        )
        keys = ("id", "user", "host", "db", "command", "time", "state", "info")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def mariadb_cli(self, *args: str, stdin: Path | None = None, timeout: float = 300) -> str:
        """Run the ``mariadb`` command line as root over the socket; its output."""
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(stdin.open("rb")) if stdin else subprocess.DEVNULL
            result = subprocess.run(
                ["mariadb", f"--defaults-file={self.client_cnf}", *args],
                stdin=source,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        if result.returncode:
            what = f"< {stdin.name}" if stdin else " ".join(args)
            raise RuntimeError(f"mariadb {what}: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode(errors="replace")

    def open_to_reader(self, database: str) -> None:
        """The doc's way to give the reader another database: its GRANT, for ``database``."""
        statements = role_sql.doc_role_sql("mariadb")
        for statement in role_sql.database_grants(statements, database):
            self.admin(statement)

    def stop(self) -> None:
        """Shut the server down (SIGTERM: a clean shutdown) and wait for it to exit."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_external_mariadb(directory: Path, tls: TlsFiles) -> ExternalMariaDB:
    """Initialise, configure and start the server; make the users, tables and the reader."""
    t0 = time.perf_counter()
    uid, gid = os_user()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    give(directory, uid, gid)
    if uid is not None:
        grant_search(directory, uid, gid)
    for source, name in (
        (tls.server_cert, "server.crt"),
        (tls.server_key, "server.key"),
        (tls.ca_cert, "ca.crt"),
    ):
        shutil.copyfile(source, directory / name)
        (directory / name).chmod(0o600)
        give(directory / name, uid, gid)
    # The UTC zone only (mariadb-tzinfo-to-sql over all of /usr/share/zoneinfo takes
    # seconds): `default-time-zone = UTC` and `SET time_zone = 'UTC'` work by name.
    zones = directory / "zones.sql"
    zones.write_bytes(
        subprocess.run(
            ["mariadb-tzinfo-to-sql", "/usr/share/zoneinfo/UTC", "UTC"],
            capture_output=True,
            check=True,
        ).stdout
    )
    give(zones, uid, gid)
    cnf = directory / "my.cnf"
    _write_cnf(cnf, directory, free_port(), uid, gid)
    _run_as(
        uid,
        gid,
        ["mariadb-install-db", f"--defaults-file={cnf}", "--auth-root-authentication-method=normal",
         "--skip-test-db", f"--extra-file={zones}"],
        directory,
    )  # fmt: skip
    zones.unlink()
    initdb_s = time.perf_counter() - t0
    process, port = _start_server(directory, cnf, uid, gid)
    passwords = {user: secrets.token_hex(16) for user in (ROOT, OWNER, READER, CERTUSER)}
    db = ExternalMariaDB(
        host=HOST,
        port=port,
        socket=directory / "mysqld.sock",
        database=DATABASE,
        root=Login(ROOT, ""),  # install-db's root has no password until _secure_root
        owner=Login(OWNER, passwords[OWNER]),
        reader=Login(READER, passwords[READER]),
        certuser=Login(CERTUSER, passwords[CERTUSER]),
        tls=tls,
        directory=directory,
        process=process,
    )
    db.timings["initdb_s"] = initdb_s
    db.timings["running_s"] = time.perf_counter() - t0
    try:
        _secure_root(db, passwords[ROOT])
        _make_database(db)
    except BaseException:
        db.stop()
        raise
    db.timings["ready_s"] = time.perf_counter() - t0
    return db


def _write_cnf(cnf: Path, directory: Path, port: int, uid: int | None, gid: int | None) -> None:
    cnf.write_text(
        _SERVER_CNF.format(
            directory=directory,
            data=directory / "data",
            socket=directory / "mysqld.sock",
            port=port,
        )
    )
    give(cnf, uid, gid)


def _start_server(
    directory: Path, cnf: Path, uid: int | None, gid: int | None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start mariadbd and wait until it answers on its socket; on a port taken meanwhile
    (free_port is a race) another free port."""
    for attempt in range(3):
        port = int(_cnf_value(cnf, "port"))
        with (directory / "mariadbd.out").open("ab") as out:
            process = subprocess.Popen(
                ["mariadbd", f"--defaults-file={cnf}"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=directory,
                user=uid,
                group=gid,
                extra_groups=[] if uid is not None else None,
                umask=0o077,
                env={"PATH": "/usr/sbin:/usr/bin:/bin", "LC_ALL": "C", "TZ": "UTC"},
            )
        try:
            poll(
                functools.partial(_answers, directory / "mysqld.sock", process),
                START_TIMEOUT_S,
                "mariadbd",
            )
            return process, port
        except BaseException as exc:
            if process.poll() is None:
                process.kill()
                process.wait()
            if not isinstance(exc, RuntimeError | TimeoutError):
                raise
            if attempt == 2 or port_free(port):
                raise RuntimeError(f"{exc}\n{_log_tail(directory)}") from exc
            _write_cnf(cnf, directory, free_port(), uid, gid)
    raise AssertionError("unreachable")


def _answers(sock: Path, process: subprocess.Popen[bytes]) -> bool | None:
    """True once the server takes a connection on its socket; raises if it has exited."""
    if process.poll() is not None:
        raise RuntimeError(f"mariadbd exited with {process.returncode}")
    if not sock.exists():
        return None
    try:
        MySQLdb.connect(unix_socket=str(sock), user=ROOT, connect_timeout=2).close()
    except MySQLdb.OperationalError:
        return None
    return True


def _secure_root(db: ExternalMariaDB, password: str) -> None:
    """Root keeps ``localhost`` (the socket) and ``127.0.0.1`` (TCP) with a password; the
    other accounts install-db made (``root@<hostname>``, ``root@::1``) go."""
    # one session: after the first ALTER, root no longer logs in without the password
    with db.connect(database="mysql") as conn:
        cur = conn.cursor()
        cur.execute("SELECT host FROM mysql.user WHERE user = 'root'")
        for (host,) in cur.fetchall():
            if host in ("localhost", HOST):
                cur.execute(f"ALTER USER 'root'@'{host}' IDENTIFIED BY %s", (password,))
            else:
                cur.execute("DROP USER 'root'@%s", (host,))
    db.root = Login(ROOT, password)
    db.client_cnf.write_text(
        f"[client]\nuser = {ROOT}\npassword = {password}\nsocket = {db.socket}\n"
        "default-character-set = utf8mb4\n"
    )
    db.client_cnf.chmod(0o600)


def _make_database(db: ExternalMariaDB) -> None:
    """Owner, database and tables; then the reader from the doc; then the certificate user."""
    owner = f"'{OWNER}'@'%'"
    db.admin(f"CREATE DATABASE `{db.database}`", database="mysql")
    # with parameters, MySQLdb %-formats the statement: '%%' is the host '%'
    db.admin(f"CREATE USER '{OWNER}'@'%%' IDENTIFIED BY %s", (db.owner.password,))
    db.admin(f"GRANT ALL ON `{db.database}`.* TO {owner}")
    with db.connect(db.owner) as conn:
        cur = conn.cursor()
        # one multi-statement script (mysqlclient allows them by default); nextset() runs
        # to the end and raises on the first failing statement
        cur.execute(MARIADB_DDL + mariadb_inserts())
        while cur.nextset():
            pass
        conn.commit()
        cur.execute("ANALYZE TABLE customers, products, `Orders`")
        cur.fetchall()
    statements = role_sql.doc_role_sql("mariadb")
    for statement in role_sql.with_password(statements, db.reader.password or ""):
        db.admin(statement)
    ca_subject = _subject(db.tls.ca_cert)
    db.admin(
        f"CREATE USER '{CERTUSER}'@'%%' IDENTIFIED BY %s"
        f" REQUIRE SUBJECT '/CN={db.tls.client_cn}' AND ISSUER '{ca_subject}'"
        " WITH MAX_USER_CONNECTIONS 20",
        (db.certuser.password,),
    )
    db.admin(f"GRANT SELECT, SHOW VIEW ON `{db.database}`.* TO '{CERTUSER}'@'%'")


def _subject(cert: Path) -> str:
    """A certificate's subject as MariaDB compares it (``/CN=...``)."""
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-nameopt", "compat", "-in", str(cert)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().removeprefix("subject=")


def _cnf_value(cnf: Path, key: str) -> str:
    for line in cnf.read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip() == key:
            return value.strip()
    raise KeyError(key)


def _log_tail(directory: Path) -> str:
    parts = []
    for name in ("error.log", "mariadbd.out"):
        path = directory / name
        if path.exists():
            parts.append(f"{name}:\n{path.read_text(errors='replace')[-2000:]}")
    return "\n".join(parts)


def _run_as(uid: int | None, gid: int | None, args: list[str], cwd: Path) -> None:
    """Run a MariaDB program as the server's OS user; its output in the error."""
    result = subprocess.run(
        args,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        cwd=cwd,
        env={"PATH": "/usr/sbin:/usr/bin:/bin", "LC_ALL": "C", "TZ": "UTC"},
        user=uid,
        group=gid,
        extra_groups=[] if uid is not None else None,
        umask=0o077,
        timeout=120,
        check=False,
    )
    if result.returncode:
        output = (result.stdout + result.stderr).decode(errors="replace")
        raise RuntimeError(f"{args[0]} failed ({result.returncode}): {output[-2000:]}")
