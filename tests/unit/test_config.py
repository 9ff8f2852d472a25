"""Configuration: precedence, the replaced system's names, validation, and the docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.config import (
    POOL_SETTINGS,
    SETTINGS,
    TENANT_SETTINGS,
    load_settings,
    with_default_tenant,
)
from server.errors import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def problems(
    env: dict[str, str] | None = None,
    text: str | None = None,
    tmp_path: Path | None = None,
    **overrides: object,
) -> list[str]:
    config = None
    if text is not None:
        assert tmp_path is not None
        config = tmp_path / "c.toml"
        config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env or {}, config_file=config, overrides=overrides)
    return caught.value.problems


def test_defaults_need_no_configuration() -> None:
    settings = load_settings(env={})
    assert (settings.host, settings.port) == ("127.0.0.1", 8001)
    assert settings.sandbox == "auto" and settings.db_dialect == "postgresql"
    default = settings.pools["default"]
    assert (default.memory_mb, default.cpus, default.pids, default.timeout_s, default.tmp_mb) == (
        1024,
        1.0,
        256,
        100.0,
        256,
    )
    assert str(settings.state_dir).endswith(".local/state/dataexec")


def test_precedence_is_flags_env_legacy_file_defaults(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('port = 1111\ntoken = "from-file"\nhost = "0.0.0.0"\n')
    assert load_settings(env={}, config_file=config).port == 1111
    env = {"DATAEXEC_PORT": "2222", "AGENT_SECRET_TOKEN": "from-legacy"}
    settings = load_settings(env=env, config_file=config)
    assert (settings.port, settings.token, settings.host) == (2222, "from-legacy", "0.0.0.0")
    assert (
        load_settings(env={**env, "DATAEXEC_TOKEN": "from-legacy"}, config_file=config).token
        == "from-legacy"
    )
    flagged = load_settings(env=env, config_file=config, overrides={"port": 3333})
    assert flagged.port == 3333
    assert load_settings(env={"DATAEXEC_CONFIG": str(config)}).port == 1111


def test_replaced_systems_database_names_build_a_url() -> None:
    env = {
        "DB_DIALECT": "postgresql",
        "DB_HOST": "db.internal",
        "DB_PORT": "5433",
        "DB_USER": "reader",
        "DB_PASSWORD": "p@ss:word",
        "DB_NAME": "analytics",
        "DB_SSL_MODE": "require",
    }
    settings = load_settings(env=env)
    # psycopg2, the driver DataExec ships (SQLAlchemy 2.1 would pick psycopg 3 for a bare URL)
    assert settings.database_url == (
        "postgresql+psycopg2://reader:p%40ss%3Aword@db.internal:5433/analytics"
    )
    assert settings.database_ssl_mode == "require"
    assert settings.db_dialect == "postgresql"
    assert load_settings(env={"DATAEXEC_DATABASE_URL": "sqlite:///x.db", **env}).db_dialect == (
        "sqlite"
    )


def test_every_bad_value_is_named_in_one_error(tmp_path: Path) -> None:
    found = problems(
        {
            "DATAEXEC_PORT": "http",
            "DATAEXEC_SANDBOX": "chroot",
            "DATAEXEC_POOLS__DEFAULT__MEMORY_MB": "12",
            "DB_HOST": "h",
            "DB_SSL_MODE": "maybe",
            "CORE_LOGIC_URL": "ftp:/x",
            "DATAEXEC_INTERRUPT_ON_DISCONNECT": "perhaps",
        }
    )
    text = "\n".join(found)
    for name in (
        "DATAEXEC_PORT",
        "DATAEXEC_SANDBOX",
        "DATAEXEC_POOLS__DEFAULT__MEMORY_MB",
        "DB_USER",
        "core_logic_url",
        "DATAEXEC_INTERRUPT_ON_DISCONNECT",
    ):
        assert name in text, name
    assert len(found) >= 6


def test_file_problems_are_named(tmp_path: Path) -> None:
    assert (
        "not found"
        in problems(
            tmp_path=tmp_path, text=None, env={"DATAEXEC_CONFIG": str(tmp_path / "missing.toml")}
        )[0]
    )
    assert "c.toml" in problems(tmp_path=tmp_path, text="port = = 1")[0]
    found = problems(
        tmp_path=tmp_path,
        text="prot = 1\n[pools.default]\nmin_idel = 2\n"
        "[pools.big]\nmin_idle = 9\nmax_kernels = 2\n",
    )
    assert any("'prot'" in p for p in found)
    assert any("pools.default.min_idel" in p for p in found)
    assert any("pools.big.min_idle" in p for p in found)


def test_tokens_that_conflict_refuse_to_start(tmp_path: Path) -> None:
    assert any(
        "differ" in p
        for p in problems({"AGENT_SECRET_TOKEN": "a" * 20, "DATAEXEC_TOKEN": "b" * 20})
    )
    tenants = '[tenants.acme]\ntokens = ["acme-token-0123456789"]\n'
    assert any(
        "one or the other" in p
        for p in problems({"AGENT_SECRET_TOKEN": "x" * 20}, tmp_path=tmp_path, text=tenants)
    )
    shared = tenants + '[tenants.other]\ntokens = ["acme-token-0123456789"]\n'
    assert any("shared" in p for p in problems(tmp_path=tmp_path, text=shared))
    short = '[tenants.acme]\ntokens = ["short"]\npools = ["nope"]\n'
    found = problems(tmp_path=tmp_path, text=short)
    assert any("16 characters" in p for p in found)
    assert any("unknown pool 'nope'" in p for p in found)


def test_no_sandbox_needs_the_explicit_insecure_setting() -> None:
    assert any("insecure_no_sandbox" in p for p in problems({"DATAEXEC_SANDBOX": "none"}))
    settings = load_settings(
        env={"DATAEXEC_SANDBOX": "none", "DATAEXEC_INSECURE_NO_SANDBOX": "true"}
    )
    assert settings.sandbox == "none"


def test_pools_come_from_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[pools.large]\nmemory_mb = 8192\nmax_kernels = 2\nmin_idle = 0\n")
    settings = load_settings(env={"DATAEXEC_POOLS__LARGE__CPUS": "4"}, config_file=config)
    assert settings.pools["large"].memory_mb == 8192 and settings.pools["large"].cpus == 4.0
    assert "default" in settings.pools


def test_a_gvisor_pool_needs_room_for_gvisors_own_threads() -> None:
    env = {
        "DATAEXEC_POOLS__GUARDED__DOCKER_RUNTIME": "runsc",
        "DATAEXEC_POOLS__GUARDED__PIDS": "64",
    }
    assert problems(env) == [
        "pools.guarded.pids: gVisor's own threads count against it under runsc; "
        "give at least 128, got 64"
    ]
    env["DATAEXEC_POOLS__GUARDED__PIDS"] = "128"
    assert load_settings(env=env).pools["guarded"].pids == 128


def test_generated_token_is_kept_private_in_the_state_dir(tmp_path: Path) -> None:
    settings = with_default_tenant(load_settings(env={"DATAEXEC_STATE_DIR": str(tmp_path)}))
    token = settings.tenants["default"].tokens[0]
    assert len(token) >= 32
    assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600
    again = with_default_tenant(load_settings(env={"DATAEXEC_STATE_DIR": str(tmp_path)}))
    assert again.tenants["default"].tokens == (token,)


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text()
    for setting in SETTINGS:
        assert f"`{setting.name}`" in text and f"`{setting.env}`" in text, setting.name
    for setting in (*POOL_SETTINGS, *TENANT_SETTINGS):
        assert f"`{setting.name}`" in text, setting.name
    for legacy in ("AGENT_SECRET_TOKEN", "DB_HOST", "DB_SSL_MODE", "CORE_LOGIC_URL"):
        assert legacy in text
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.M))
    declared = {s.name for s in (*SETTINGS, *POOL_SETTINGS, *TENANT_SETTINGS)}
    assert documented == declared, documented ^ declared


@pytest.mark.parametrize(
    ("dialect", "url"),
    [
        ("mysql", "mysql+mysqldb://reader:pw@db.internal:3306/analytics"),
        ("mariadb", "mariadb+mysqldb://reader:pw@db.internal:3306/analytics"),
        ("postgres", "postgresql+psycopg2://reader:pw@db.internal:3306/analytics"),
    ],
)
def test_each_shipped_dialect_gets_the_driver_we_ship(dialect: str, url: str) -> None:
    env = {
        "DB_DIALECT": dialect,
        "DB_HOST": "db.internal",
        "DB_PORT": "3306",
        "DB_USER": "reader",
        "DB_PASSWORD": "pw",
        "DB_NAME": "analytics",
    }
    assert load_settings(env=env).database_url == url
    bare = url.replace("+psycopg2", "").replace("+mysqldb", "")
    assert load_settings(env={"DATAEXEC_DATABASE_URL": bare}).database_url == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql+psycopg://u:secret@h/d", "driver of 'postgresql+psycopg' is not installed"),
        ("mysql+pymysql://u:secret@h/d", "driver of 'mysql+pymysql' is not installed"),
        ("nosuchdb://u:secret@h/d", "no dialect 'nosuchdb'"),
        ("not a url", "expected a SQLAlchemy URL"),
    ],
)
def test_a_url_whose_driver_cannot_load_is_one_line_of_the_config_error(
    url: str, says: str
) -> None:
    found = "\n".join(problems({"DATAEXEC_DATABASE_URL": url}))
    assert says in found
    assert "secret" not in found


def test_tls_files_must_exist_and_come_in_pairs(tmp_path: Path) -> None:
    cert = tmp_path / "client.crt"
    cert.write_text("x")
    found = "\n".join(
        problems(
            {
                "DB_SSL_MODE": "verify-full",
                "DB_SSL_ROOT_CERT": str(tmp_path / "missing-ca.crt"),
                "DB_SSL_CERT": str(cert),
            }
        )
    )
    assert "database_ssl_root_cert: no such file" in found
    assert "database_ssl_cert and database_ssl_key: give both or neither" in found
    assert "DB_SSL_MODE: must be one of" in "\n".join(problems({"DB_SSL_MODE": "sometimes"}))
