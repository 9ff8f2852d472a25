"""Live configuration: ``dataexec serve`` re-reads its TOML file on SIGHUP and on
``POST /config/reload`` (server/config/reload.py, ``Runtime.reload``).

One server, started as an operator starts it (its own process, ``DATAEXEC_CONFIG``), serves
the whole module; each test first puts the configuration it starts from in place through the
endpoint, so the tests do not depend on each other's order. Sessions hold kernels with
DataFrames across every reload.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dataexec_testing.api import OPERATOR_TOKEN, assert_error, ok, value_of, wait_for
from dataexec_testing.serve import ServeProcess, kernel_leftovers, serve_env, start_serve

from server.config import Settings
from server.config.reload import ConfigSource, describe_changes, reload_settings
from server.errors import ConfigError

OLD = "acme-old-token-" + "0" * 16
NEW = "acme-new-token-" + "1" * 16


def config(
    tokens: tuple[str, ...] = (OLD,),
    min_idle: int = 1,
    max_kernels: int = 4,
    memory_mb: int = 1024,
    wide: bool = False,
    warm_charts: bool = True,
) -> str:
    """A whole configuration file: pool default, maybe pool wide, tenant acme."""
    pools = '["default", "wide"]' if wide else '["default"]'
    text = f"""
cull_interval_s = 1.0
capacity_wait_s = 5.0

[pools.default]
min_idle = {min_idle}
max_kernels = {max_kernels}
memory_mb = {memory_mb}
warm_charts = {str(warm_charts).lower()}

[tenants.acme]
tokens = [{", ".join(f'"{t}"' for t in tokens)}]
pools = {pools}
"""
    if wide:
        text += "\n[pools.wide]\nmin_idle = 1\nmax_kernels = 2\n"
    return text


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServeProcess]:
    tmp_path = tmp_path_factory.mktemp("reload")
    env = serve_env(tmp_path)
    del env["DATAEXEC_POOLS__DEFAULT__MIN_IDLE"]  # the file decides, or a reload could not
    path = tmp_path / "dataexec.toml"
    path.write_text(config())
    env["DATAEXEC_CONFIG"] = str(path)
    server = await start_serve(env)
    yield server
    if server.process.returncode is None:
        server.process.send_signal(signal.SIGTERM)
    assert await server.process.wait() == 0
    assert kernel_leftovers(env) == []


def write(server: ServeProcess, text: str) -> None:
    Path(server.env["DATAEXEC_CONFIG"]).write_text(text)


def client(server: ServeProcess, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {token}"}
    )


async def pools(server: ServeProcess) -> dict[str, Any]:
    async with client(server, OPERATOR_TOKEN) as operator:
        answer = await operator.get("/pools")
    assert answer.status_code == 200, answer.text
    pools: dict[str, Any] = answer.json()["pools"]
    return pools


async def start_from(server: ServeProcess, text: str) -> None:
    """Put ``text`` in force (through the endpoint) and wait for its warm kernels."""
    write(server, text)
    async with client(server, OPERATOR_TOKEN) as operator:
        answer = await operator.post("/config/reload")
    assert answer.status_code == 200, answer.text

    async def warm() -> bool:
        return all(p["idle"] == p["idle_target"] for p in (await pools(server)).values())

    await wait_for(warm, timeout=60)


async def until_logged(server: ServeProcess, mark: int, text: str) -> str:
    """What the server logged since line ``mark``, once ``text`` is part of it."""

    async def logged() -> str:
        since = "".join(server.log[mark:])
        return since if text in since else ""

    result: str = await wait_for(logged, timeout=30)
    return result


async def sighup(server: ServeProcess, text: str, *outcome: str) -> str:
    """Write ``text``, send SIGHUP; what the server logged once it logged every ``outcome``."""
    write(server, text)
    mark = len(server.log)
    server.process.send_signal(signal.SIGHUP)
    for part in outcome:
        await until_logged(server, mark, part)
    return "".join(server.log[mark:])


async def test_sighup_resizes_pools_and_rotates_tokens_while_a_session_keeps_its_frame(
    served: ServeProcess,
) -> None:
    await start_from(served, config())
    async with client(served, OLD) as old:
        await ok(old, "kept", "df = pd.DataFrame({'x': range(5)})")
    assert (await pools(served))["default"]["max_kernels"] == 4

    await sighup(
        served,
        config(tokens=(NEW,), min_idle=2, max_kernels=3, wide=True),
        "configuration reloaded",
    )

    async def resized() -> dict[str, Any]:
        now = await pools(served)
        default, wide = now["default"], now.get("wide", {})
        done = (default["idle"], default["in_use"], wide.get("idle")) == (2, 1, 1)
        return now if done else {}

    after = await wait_for(resized, timeout=60)
    assert (after["default"]["min_idle"], after["default"]["max_kernels"]) == (2, 3)
    assert after["wide"]["max_kernels"] == 2
    async with client(served, OLD) as old:
        assert_error(await old.get("/sessions"), 401, "UNAUTHORIZED")
    async with client(served, NEW) as new:
        answer = await ok(new, "kept", "df['x'].sum()")
        assert answer["data"]["rows"] == [[10]] and answer["kernel_replaced"] is False
        created = await new.post("/sessions", json={"session_id": "in-wide", "pool": "wide"})
        assert created.status_code == 201, created.text
        assert await value_of(new, "in-wide", "6 * 7") == 42
        for name in ("kept", "in-wide"):
            assert (await new.delete(f"/sessions/{name}")).status_code == 204


async def test_turning_warm_charts_on_keeps_the_idle_kernels_and_they_draw(
    served: ServeProcess,
) -> None:
    await start_from(served, config(warm_charts=False))
    async with client(served, OLD) as tenant:  # the idle kernel now is one started without
        await ok(tenant, "used", "1")
        assert (await tenant.delete("/sessions/used")).status_code == 204
    await start_from(served, config(warm_charts=False))
    started = (await pools(served))["default"]["started_total"]
    await start_from(served, config(warm_charts=True))
    assert (await pools(served))["default"]["started_total"] == started  # none replaced
    charted = "import sys; str(['matplotlib.pyplot' in sys.modules, 'plt' in dir()])"
    async with client(served, OLD) as tenant:
        assert await value_of(tenant, "charted", charted) == "[True, False]"
        assert (await tenant.delete("/sessions/charted")).status_code == 204


async def test_max_kernels_lowered_below_the_kernels_in_use_keeps_them_and_waits(
    served: ServeProcess,
) -> None:
    await start_from(served, config(tokens=(NEW,), min_idle=0, max_kernels=3))
    async with client(served, NEW) as new:
        for name in ("a", "b"):
            await ok(new, name, f"name = {name!r}")
        await sighup(
            served, config(tokens=(NEW,), min_idle=1, max_kernels=1), "configuration reloaded"
        )
        default = (await pools(served))["default"]
        assert (default["in_use"], default["idle"], default["starting"]) == (2, 0, 0)
        for name in ("a", "b"):  # running sessions are not dropped
            assert await value_of(new, name, "name") == name
        refused = await new.post("/sessions", json={"session_id": "c"})
        assert_error(refused, 503, "CAPACITY")
        assert (await new.delete("/sessions/a")).status_code == 204
        assert (await new.delete("/sessions/b")).status_code == 204

    async def refilled() -> bool:
        default = (await pools(served))["default"]
        return (default["idle"], default["in_use"]) == (1, 0)

    await wait_for(refilled, timeout=60)


async def test_a_bad_file_is_refused_whole_on_sighup_and_the_old_configuration_stays(
    served: ServeProcess,
) -> None:
    await start_from(served, config(tokens=(NEW,)))
    async with client(served, NEW) as new:
        await ok(new, "stays", "df = pd.DataFrame({'y': [1, 2, 3]})")

    await sighup(served, "[pools.default\nmin_idle = 2\n", "refused", "dataexec.toml: ")
    # It loads, but would change what only a restart can: refused whole, tokens and pools too.
    bad = 'database_url = "postgresql://reader:secret-password@db.internal/analytics"\n'
    bad += config(tokens=(OLD,), min_idle=3, memory_mb=512)
    bad = bad.replace("cull_interval_s = 1.0", "cull_interval_s = 5.0")
    problems = await sighup(
        served,
        bad,
        "database_url: cannot change while the server runs",
        "cull_interval_s: cannot change while the server runs (1.0 -> 5.0)",
    )
    assert "secret-password" not in problems

    default = (await pools(served))["default"]
    assert (default["min_idle"], default["memory_mb"]) == (1, 1024)
    async with client(served, OLD) as old:  # the bad file's token was not taken either
        assert_error(await old.get("/sessions"), 401, "UNAUTHORIZED")
    async with client(served, NEW) as new:
        assert await value_of(new, "stays", "int(df['y'].sum())") == 6
        assert (await new.delete("/sessions/stays")).status_code == 204


async def test_the_endpoint_answers_the_changes_or_every_problem_of_a_refused_file(
    served: ServeProcess,
) -> None:
    await start_from(served, config(tokens=(NEW,), min_idle=2))
    async with client(served, NEW) as tenant:
        assert_error(await tenant.post("/config/reload"), 403, "FORBIDDEN")
    started = (await pools(served))["default"]["started_total"]

    write(served, "session_ttl_s = 60.0\n" + config(tokens=(NEW,), min_idle=-1))
    async with client(served, OPERATOR_TOKEN) as operator:
        refused = await operator.post("/config/reload")
    detail = assert_error(refused, 400, "VALIDATION_ERROR")
    assert detail["problems"] == [
        "pools.default.min_idle: must be at least 0, got -1",
    ]  # a file that does not load is not compared with the running one
    write(served, "session_ttl_s = 60.0\n" + config(tokens=(NEW,), min_idle=2))
    async with client(served, OPERATOR_TOKEN) as operator:
        refused = await operator.post("/config/reload")
    detail = assert_error(refused, 400, "VALIDATION_ERROR")
    assert detail["problems"] == [
        "session_ttl_s: cannot change while the server runs (86400.0 -> 60.0); restart to apply"
    ]
    assert detail["problems"][0] in detail["message"]

    # New limits: the idle kernels, started with the old ones, are replaced.
    write(served, config(tokens=(NEW, OLD), min_idle=1, memory_mb=768))
    async with client(served, OPERATOR_TOKEN) as operator:
        answer = await operator.post("/config/reload")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "status": "reloaded",
        "config_file": served.env["DATAEXEC_CONFIG"],
        "changes": [
            "pools.default.memory_mb: 1024 -> 768",
            "pools.default.min_idle: 2 -> 1",
            "tenants.acme.tokens: 1 added, 0 revoked",
        ],
    }

    async def replaced() -> bool:
        default = (await pools(served))["default"]
        return default["idle"] == 1 and default["started_total"] >= started + 1

    await wait_for(replaced, timeout=60)
    assert (await pools(served))["default"]["memory_mb"] == 768
    for token in (OLD, NEW):  # both work while the tenant rotates
        async with client(served, token) as tenant:
            assert (await tenant.get("/sessions")).status_code == 200


async def test_a_removed_pool_serves_its_sessions_on_and_takes_no_new_ones(
    served: ServeProcess,
) -> None:
    await start_from(served, config(tokens=(NEW,), wide=True))
    async with client(served, NEW) as new:
        created = await new.post("/sessions", json={"session_id": "w", "pool": "wide"})
        assert created.status_code == 201, created.text
        await ok(new, "w", "df = pd.DataFrame({'z': [7]})")
        await sighup(served, config(tokens=(NEW,)), "configuration reloaded")
        assert "wide" not in await pools(served)
        answer = await ok(new, "w", "df['z'].iloc[0] * 6")
        assert answer["data"]["rows"] == [[42]] and answer["kernel_replaced"] is False
        assert (await new.get("/sessions/w")).json()["pool"] == "wide"
        refused = await new.post("/sessions", json={"pool": "wide"})
        assert_error(refused, 400, "VALIDATION_ERROR")
        assert (await new.delete("/sessions/w")).status_code == 204


def loaded(tmp_path: Path, text: str, **env: str) -> tuple[ConfigSource, Settings]:
    path = tmp_path / "c.toml"
    path.write_text(text)
    source = ConfigSource(path, {"DATAEXEC_STATE_DIR": str(tmp_path / "state"), **env})
    return source, source.load()


def refused(source: ConfigSource, running: Settings) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        reload_settings(source, running)
    return caught.value.problems


def test_a_pools_docker_runtime_needs_a_restart_even_for_a_new_pool(tmp_path: Path) -> None:
    source, running = loaded(tmp_path, config())
    Path(source.config_file or "").write_text(
        config() + '\n[pools.gvisor]\ndocker_runtime = "runsc"\n'
    )
    assert refused(source, running) == [
        "pools.gvisor.docker_runtime: cannot change while the server runs (the sandbox checks "
        "it at start); restart to apply"
    ]


def test_the_agent_token_the_platform_knows_is_not_rotated_live(tmp_path: Path) -> None:
    platform = {
        "DATAEXEC_CORE_LOGIC_URL": "http://127.0.0.1:9",
        "DATAEXEC_AGENT_ID": "agent-1",
        "DATAEXEC_AGENT_PUBLIC_URL": "http://127.0.0.1:8001",
    }
    text = 'token = "agent-token-0123456789"\n'
    source, running = loaded(tmp_path, text, **platform)
    Path(source.config_file or "").write_text('token = "agent-token-9876543210"\n')
    problems = refused(source, running)
    assert len(problems) == 1 and problems[0].startswith("token: cannot change")
    assert "agent-token" not in problems[0]
    # Without a platform, the default tenant's token rotates.
    source, running = loaded(tmp_path, text)
    Path(source.config_file or "").write_text('token = "agent-token-9876543210"\n')
    new = reload_settings(source, running)
    assert new.tenants["default"].tokens == ("agent-token-9876543210",)
    assert describe_changes(running, new) == [
        "tenants.default.tokens: 1 added, 1 revoked",
        "token: changed",
    ]
