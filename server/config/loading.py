"""Reading the settings: TOML file, environment, the replaced system's names and flags.

Every bad value is collected and raised as one ``ConfigError`` naming them all.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from server.config.settings import (
    LEGACY_ENV,
    POOL_NAME,
    POOL_SETTINGS,
    SETTINGS,
    TENANT_SETTINGS,
    TLS,
    TOKEN_HASH,
    PoolSettings,
    Setting,
    Settings,
    TenantSettings,
    token_digest,
)
from server.database_url import checked_database_url, legacy_database_url
from server.errors import ConfigError


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
    for name in (*("database_ssl_root_cert", "database_ssl_cert", "database_ssl_key"), *TLS):
        if values[name] and not Path(values[name]).expanduser().is_file():
            errors.append(f"{name}: no such file: {values[name]!r}")
    for pair in (("database_ssl_cert", "database_ssl_key"), TLS):
        if bool(values[pair[0]]) != bool(values[pair[1]]):
            errors.append(f"{pair[0]} and {pair[1]}: give both or neither")
    values["cors_origins"] = tuple(values["cors_origins"])
    for origin in values["cors_origins"]:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            errors.append(f"cors_origins: expected scheme://host[:port], got {origin!r}")
    if values["max_rows_default"] > values["max_rows_cap"]:
        errors.append("max_rows_default: larger than max_rows_cap")
    if values["max_queries_per_tenant"] > values["db_pool_size"]:
        errors.append("max_queries_per_tenant: larger than db_pool_size")
    if values["max_queries_per_kernel"] > values["max_queries_per_tenant"]:
        errors.append("max_queries_per_kernel: larger than max_queries_per_tenant")
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


# gVisor's Sentry runs in the container's pids cgroup: with 64 it exited with status 2 at
# random (a Go runtime that cannot make a thread), even on start; 128 held the adversarial
# suite's fork bomb.
RUNSC_MIN_PIDS = 128


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
        if values["docker_runtime"] == "runsc" and values["pids"] < RUNSC_MIN_PIDS:
            errors.append(
                f"pools.{name}.pids: gVisor's own threads count against it under runsc; "
                f"give at least {RUNSC_MIN_PIDS}, got {values['pids']}"
            )
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
    seen_tokens: dict[bytes, str] = {}
    for name, raw in sorted(tenants_raw.items()):
        if not POOL_NAME.match(name) or not isinstance(raw, dict):
            errors.append(f"tenants.{name}: must be a table named with letters, digits, '_', '-'")
            continue
        values = _section(TENANT_SETTINGS, raw, {}, "", f"tenants.{name}", errors)
        if not values["tokens"]:
            errors.append(f"tenants.{name}.tokens: at least one token is needed")
        for tok in values["tokens"]:
            if tok.startswith("sha256:") and not TOKEN_HASH.fullmatch(tok):
                errors.append(f"tenants.{name}.tokens: sha256: takes 64 hex digits")
            elif len(tok) < 16:
                errors.append(f"tenants.{name}.tokens: tokens must be at least 16 characters")
            digest = token_digest(tok)  # a token and its hash are the same token
            if digest in seen_tokens:
                errors.append(
                    f"tenants.{name}.tokens: a token is shared with tenant {seen_tokens[digest]!r}"
                )
            seen_tokens[digest] = name
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
            max_sessions=values["max_sessions"],
            max_concurrent_executions=values["max_concurrent_executions"],
            requests_per_minute=values["requests_per_minute"],
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
