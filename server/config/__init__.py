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

``settings`` declares the settings (the tables and the Settings, PoolSettings and
TenantSettings they fill); ``loading`` reads them from file, environment and flags.

May import: errors, database_url (nothing else: every room stands on it).
"""

from server.config.loading import load_settings, with_default_tenant
from server.config.settings import (
    LEGACY_ENV,
    POOL_SETTINGS,
    SETTINGS,
    TENANT_SETTINGS,
    TOKEN_HASH,
    MiB,
    PoolSettings,
    Setting,
    Settings,
    TenantSettings,
    token_digest,
)

__all__ = [
    "LEGACY_ENV",
    "POOL_SETTINGS",
    "SETTINGS",
    "TENANT_SETTINGS",
    "TOKEN_HASH",
    "MiB",
    "PoolSettings",
    "Setting",
    "Settings",
    "TenantSettings",
    "load_settings",
    "token_digest",
    "with_default_tenant",
]
