"""The compose deployment, brought up for real: docker-compose.yml with the demo database
override (docker-compose.demo-db.yml), the Dockerfile, .env.example.

One stack for the module (``stack``): the images are prepared by the documented command
(``dataexec build-image --server``, which reuses what exists), then
``docker-compose up --build`` builds the server image again from the repository (network
none, from the layer cache when nothing changed), with an env file as an operator writes it
(``AGENT_SECRET_TOKEN``, a port, a state dir and runtime dir of the test's own, the demo
database's port and password). The server reaches the demo PostgreSQL service through the
replaced system's ``DB_*`` names. Kernels are sibling containers on the host's engine,
labelled with the runtime dir, which is how the test finds them and proves ``down`` leaves
none.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import yaml
from dataexec_testing.api import docker_missing, docker_ready, make_settings

from server.config import load_settings
from server.kernels.docker import LABEL_RUNTIME_DIR
from server.ops.image import REPO_ROOT

pytestmark = pytest.mark.docker

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DEMO_DB_FILE = REPO_ROOT / "docker-compose.demo-db.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
UP_TIMEOUT_S = 900  # a first build of the server image; later ones come from the cache
READY_TIMEOUT_S = 180


def compose_command() -> list[str]:
    """``docker-compose`` (1.29, Debian's) or ``docker compose`` (v2), whichever is here."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    if shutil.which("docker") and probe.returncode == 0:
        return ["docker", "compose"]
    docker_missing("neither docker-compose nor `docker compose` (scripts/install --test)")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines as compose reads them (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """A compose project of the test's own: its name, env file and where it lives."""

    command: list[str]
    project: str
    env_file: Path
    env: dict[str, str]
    url: str
    token: str

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        files = ["-f", str(COMPOSE_FILE), "-f", str(DEMO_DB_FILE)]
        argv = [*self.command, *files, "--env-file", str(self.env_file)]
        return subprocess.run(
            [*argv, "-p", self.project, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO_ROOT,
        )

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def containers(self, label: str) -> list[dict[str, Any]]:
        with closing(docker.from_env()) as engine:
            return list(engine.api.containers(all=True, filters={"label": label}))

    def project_containers(self) -> list[dict[str, Any]]:
        return self.containers(f"com.docker.compose.project={self.project}")

    def kernel_containers(self) -> list[dict[str, Any]]:
        return self.containers(f"{LABEL_RUNTIME_DIR}={self.env['DATAEXEC_RUNTIME_DIR']}")


def prepare_images(kernel_image: str) -> None:
    """What compose's build needs from the host: the server base and wheels (and the kernel
    image), made by the documented command; each is reused when it exists."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAEXEC_")}
    env["DATAEXEC_DOCKER_IMAGE"] = kernel_image
    result = subprocess.run(
        [sys.executable, "-m", "server", "build-image", "--server"],
        capture_output=True,
        text=True,
        env=env,
        timeout=UP_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The compose stack up (built once), its server answering; torn down after."""
    if os.geteuid() != 0:
        docker_missing("the compose stack binds host paths and mounts as root")
    settings = make_settings(tmp_path_factory.mktemp("compose-probe"), DATAEXEC_SANDBOX="docker")
    if not docker_ready(settings):
        docker_missing("no Docker engine with the kernel image (scripts/docker-engine)")
    command = compose_command()
    prepare_images(settings.docker_image)

    tag = secrets.token_hex(3)
    home = tmp_path_factory.mktemp("compose")
    token = "compose-token-" + secrets.token_hex(8)
    env = {
        "AGENT_SECRET_TOKEN": token,  # the replaced system's name, as in .env.example
        "DEMO_DB_PORT": str(free_port()),
        "DEMO_DB_PASSWORD": secrets.token_hex(12),
        "DATAEXEC_HOST": "127.0.0.1",
        "DATAEXEC_PORT": str(free_port()),
        "DATAEXEC_STATE_DIR": str(home / "state"),
        "DATAEXEC_RUNTIME_DIR": f"/run/dxc-{tag}",
        "DATAEXEC_DOCKER_IMAGE": settings.docker_image,
    }
    env_file = home / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    stack = Stack(
        command=command,
        project=f"dxtest{tag}",
        env_file=env_file,
        env=env,
        url=f"http://127.0.0.1:{env['DATAEXEC_PORT']}",
        token=token,
    )
    try:
        up = stack.compose("up", "--build", "-d", timeout=UP_TIMEOUT_S)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        wait_until_healthy(stack)
        yield stack
    finally:
        stack.compose("down", "--volumes", "--timeout", "30", timeout=180)
        with closing(docker.from_env()) as engine:
            for container in stack.kernel_containers():  # only if down failed to
                engine.api.remove_container(container["Id"], force=True)
        runtime_dir = env["DATAEXEC_RUNTIME_DIR"]
        subprocess.run(["umount", "--recursive", "--lazy", runtime_dir], capture_output=True)
        shutil.rmtree(runtime_dir, ignore_errors=True)
        shutil.rmtree(env["DATAEXEC_STATE_DIR"], ignore_errors=True)


def wait_until_healthy(stack: Stack) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(stack.url + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    logs = stack.compose("logs", "--no-color", "dataexec").stdout
    raise AssertionError(f"the server did not answer /health in time:\n{logs[-5000:]}")


def compose_config(*files: Path) -> dict[str, Any]:
    """What `config` makes of ``files`` with .env.example (it fails on an invalid file)."""
    argv = [*compose_command(), *(f"--file={file}" for file in files)]
    result = subprocess.run(
        [*argv, "--env-file", str(ENV_EXAMPLE), "config"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_compose_file_is_valid_and_binds_host_paths_one_to_one() -> None:
    """`config` accepts the file with .env.example; the runtime and state dirs are bound at
    the same path inside and out, and only the server sees the engine's socket."""
    config = compose_config(COMPOSE_FILE)
    server = config["services"]["dataexec"]
    example = read_env_file(ENV_EXAMPLE)
    volumes = [
        str(v) if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in server["volumes"]
    ]
    for name in ("DATAEXEC_STATE_DIR", "DATAEXEC_RUNTIME_DIR"):
        path = example[name]
        assert any(v.startswith(f"{path}:{path}") for v in volumes), (name, volumes)
        assert server["environment"][name] == path
    assert any("docker.sock" in v for v in volumes)
    others = [s for name, s in config["services"].items() if name != "dataexec"]
    assert not any("docker.sock" in str(s.get("volumes")) for s in others)
    assert server["build"]["network"] == "none"


def test_demo_database_override_points_the_db_names_at_its_postgres() -> None:
    config = compose_config(COMPOSE_FILE, DEMO_DB_FILE)
    server, postgres = config["services"]["dataexec"], config["services"]["postgres"]
    assert server["environment"]["DB_HOST"] == "127.0.0.1"
    assert server["environment"]["DB_PORT"] == postgres["command"][-1]
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "docker.sock" not in str(postgres.get("volumes"))


def test_env_example_is_a_valid_configuration(tmp_path: Path) -> None:
    """.env.example as copied, with its empty values, is accepted by the server's config."""
    env = read_env_file(ENV_EXAMPLE)
    env["DATAEXEC_STATE_DIR"] = str(tmp_path / "state")
    settings = load_settings(env=env)
    assert settings.port == int(read_env_file(ENV_EXAMPLE)["DATAEXEC_PORT"])
    assert settings.database_url == ""  # the embedded PostgreSQL with the demo tables


def test_health_answers_without_a_token(stack: Stack) -> None:
    answer = httpx.get(stack.url + "/health", timeout=10)
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok" and answer.json()["db_dialect"] == "postgresql"
    assert httpx.get(stack.url + "/sessions", timeout=10).status_code == 401


def test_sql_and_python_run_in_a_session_in_a_locked_down_sibling_container(
    stack: Stack,
) -> None:
    with stack.client() as http:
        sql = http.post(
            "/sessions/compose-s1/execute",
            json={
                "language": "sql",
                "code": "SELECT carrier, count(*) AS n FROM flights GROUP BY carrier",
                "result_name": "by_carrier",
            },
        )
        assert sql.status_code == 200, sql.text
        assert sql.json()["metadata"]["row_count"] == 16
        python = http.post(
            "/sessions/compose-s1/execute",
            json={"code": "int(by_carrier['n'].sum())"},
        )
        assert python.status_code == 200, python.text
        assert python.json()["data"]["rows"] == [[336776]]

    kernels = stack.kernel_containers()
    assert kernels, "no kernel container labelled with the stack's runtime dir"
    with closing(docker.from_env()) as engine:
        host_config = engine.api.inspect_container(kernels[0]["Id"])["HostConfig"]
    assert host_config["NetworkMode"] == "none"
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host_config["SecurityOpt"]
    binds = host_config["Binds"]
    assert all(b.startswith(stack.env["DATAEXEC_RUNTIME_DIR"] + "/") for b in binds), binds
    assert not any("docker.sock" in b for b in binds)


def test_a_session_downloads_as_a_notebook(stack: Stack) -> None:
    with stack.client() as http:
        step = http.post("/sessions/compose-nb/execute", json={"code": "x = 6 * 7\nx"})
        assert step.status_code == 200, step.text
        notebook = http.get("/sessions/compose-nb/notebook")
    assert notebook.status_code == 200, notebook.text
    cells = notebook.json()["cells"]
    assert any("x = 6 * 7" in "".join(cell["source"]) for cell in cells)
    assert notebook.json()["nbformat"] == 4


def test_down_leaves_no_container_and_no_kernel(stack: Stack) -> None:
    """Runs last in this module: the stack goes down here."""
    assert stack.project_containers() and stack.kernel_containers()
    down = stack.compose("down", "--volumes", "--timeout", "30", timeout=180)
    assert down.returncode == 0, down.stderr
    assert stack.project_containers() == []
    assert stack.kernel_containers() == []
