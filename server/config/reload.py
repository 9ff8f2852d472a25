"""Reading the configuration again while the server runs (SIGHUP, ``POST /config/reload``).

``ConfigSource`` is what the running server's settings were read from: the TOML file, the
environment and the command-line flags. ``reload_settings`` reads them again and checks
the result against the running settings: only ``LIVE`` settings (pools, tenants and their
tokens, the operator token) may differ. A parse error, a bad value or a change to anything
else (``database_url``, ``host``/``port``, ``sandbox``, ``state_dir``, ...) raises one
``ConfigError`` naming every problem, and nothing is applied: a reload takes the whole new
file or none of it. Applying the new settings is ``Runtime.reload``'s job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.config.loading import load_settings, with_default_tenant
from server.config.settings import SETTINGS, PoolSettings, Settings, TenantSettings
from server.errors import ConfigError

# Top-level settings a reload applies; every other one is fixed for the server's life.
LIVE = frozenset({"token", "operator_token"})
# Pool settings a running server cannot take: the sandbox checked the runtime at start.
FIXED_POOL = frozenset({"docker_runtime"})
# Settings whose values never go into a message (a database URL may carry a password).
SECRET = frozenset({"database_url", "store_url", "token", "operator_token", "platform_token"})


@dataclass(frozen=True)
class ConfigSource:
    """Where the server's settings came from, to be read again the same way."""

    config_file: str | Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Settings:
        """The settings as they read now (the default tenant resolved); ConfigError if bad."""
        settings = load_settings(
            env=self.env, config_file=self.config_file, overrides=self.overrides
        )
        return with_default_tenant(settings)


def reload_settings(source: ConfigSource, current: Settings) -> Settings:
    """The new settings, if they only differ from ``current`` where a reload may apply
    them; otherwise ConfigError naming every problem (the file's own ones included)."""
    new = source.load()
    problems = fixed_changes(current, new)
    if problems:
        raise ConfigError(problems)
    return new


def fixed_changes(old: Settings, new: Settings) -> list[str]:
    """Each difference between ``old`` and ``new`` that cannot be applied while running."""
    problems = []
    for setting in SETTINGS:
        name = setting.name
        before, after = getattr(old, name), getattr(new, name)
        if name in LIVE or before == after:
            continue
        shown = "" if name in SECRET else f" ({before!r} -> {after!r})"
        problems.append(f"{name}: cannot change while the server runs{shown}; restart to apply")
    if old.core_logic_url and not old.platform_token and old.token != new.token:
        problems.append(
            "token: cannot change while the server runs, since it is the agent token the "
            "platform knows (set platform_token to rotate it live); restart to apply"
        )
    for name, pool in new.pools.items():
        running = old.pools.get(name)
        for attr in sorted(FIXED_POOL):
            before = getattr(running, attr) if running else getattr(PoolSettings(name=name), attr)
            if getattr(pool, attr) != before:
                problems.append(
                    f"pools.{name}.{attr}: cannot change while the server runs (the sandbox "
                    "checks it at start); restart to apply"
                )
    return problems


def describe_changes(old: Settings, new: Settings) -> list[str]:
    """What a reload from ``old`` to ``new`` changes, one line each, without any secret."""
    changes = []
    for name in LIVE:
        if getattr(old, name) != getattr(new, name):
            changes.append(f"{name}: changed")
    changes += _table_changes("pools", old.pools, new.pools, _pool_changes)
    changes += _table_changes("tenants", old.tenants, new.tenants, _tenant_changes)
    return sorted(changes)


def _table_changes(
    section: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    compare: Any,
) -> list[str]:
    changes = [f"{section}.{name}: added" for name in new if name not in old]
    changes += [f"{section}.{name}: removed" for name in old if name not in new]
    for name in new:
        if name in old and old[name] != new[name]:
            changes += compare(f"{section}.{name}", old[name], new[name])
    return changes


def _pool_changes(where: str, old: PoolSettings, new: PoolSettings) -> list[str]:
    return [
        f"{where}.{f.name}: {getattr(old, f.name)!r} -> {getattr(new, f.name)!r}"
        for f in dataclasses.fields(PoolSettings)
        if getattr(old, f.name) != getattr(new, f.name)
    ]


def _tenant_changes(where: str, old: TenantSettings, new: TenantSettings) -> list[str]:
    changes = []
    for f in dataclasses.fields(TenantSettings):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before == after:
            continue
        if f.name == "tokens":
            added = len(set(after) - set(before))
            revoked = len(set(before) - set(after))
            changes.append(f"{where}.tokens: {added} added, {revoked} revoked")
        else:
            changes.append(f"{where}.{f.name}: {before!r} -> {after!r}")
    return changes
