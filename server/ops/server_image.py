"""Building the server image without a registry: what `dataexec build-image --server` runs.

The compose deployment (docker-compose.yml) runs the server in a container of its own and
its kernels as sibling containers on the same engine, so it needs two images, and neither
may come from a registry:

1. the kernel image, exactly as ``dataexec build-image`` makes it (``image.build_image``);
2. the server's wheels: ``pip wheel`` on this host (CPython 3.11 on Debian bookworm, as in
   the image) of every requirement of the server under the one ``constraints.txt``, into
   ``.cache/server-wheels/`` of the repository, which is inside the compose build context.
   Binary packages come as their manylinux wheels; the few without one (mysqlclient) are
   built here against Debian's libraries, which the base image carries too. The directory
   is keyed by what it was made from, so an unchanged set is not made again;
3. the base ``dataexec-server-base:bookworm``, made once with debootstrap (a minimal
   bookworm with Python, tini, CA certificates and MariaDB Connector/C);
4. the top-level ``Dockerfile`` built from the repository with network mode ``none``:
   the same build ``docker-compose up --build`` then repeats (the server's code is copied
   from the repository and installed from the wheelhouse only).
"""

from __future__ import annotations

import configparser
import hashlib
import shutil
import sys
import time
from pathlib import Path

from server.config import Settings
from server.errors import SandboxUnavailable
from server.kernels.engine import map_docker_errors
from server.ops.image import (
    CONSTRAINTS,
    DEBOOTSTRAP_PACKAGES,
    REPO_ROOT,
    Log,
    build_image,
    check_architecture,
    debootstrap_image,
    engine_client,
    follow_build,
    run_step,
)

SERVER_IMAGE = "dataexec-server:latest"
SERVER_BASE = "dataexec-server-base:bookworm"
# libmariadb3: the MariaDB/MySQL driver (mysqlclient) is built against it.
SERVER_BASE_PACKAGES = (*DEBOOTSTRAP_PACKAGES, "libmariadb3")
DOCKERFILE = REPO_ROOT / "Dockerfile"
SETUP_CFG = REPO_ROOT / "setup.cfg"
# Inside the build context (the repository); .dockerignore lets only this part of .cache in.
WHEELHOUSE = REPO_ROOT / ".cache" / "server-wheels"
# What building the server's own package from source needs, in the wheelhouse too.
BUILD_REQUIREMENTS = ("setuptools>=68", "wheel")


def build_server_image(settings: Settings, *, log: Log = print) -> str:
    """Build the kernel image, then the server image, offline; return the server's tag."""
    check_architecture()
    check_host_python()
    build_image(settings, log=log)
    started = time.monotonic()
    wheelhouse = make_wheelhouse(log=log)
    log(f"server wheels ready in {time.monotonic() - started:.1f} s: {wheelhouse}")
    client = engine_client(settings)
    try:
        started = time.monotonic()
        base = debootstrap_image(client, settings, SERVER_BASE, SERVER_BASE_PACKAGES, log=log)
        log(f"base image {base} ready in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        log(f"building {SERVER_IMAGE} from {base} (network none)")
        with map_docker_errors(f"build {SERVER_IMAGE}"):
            stream = client.api.build(
                path=str(REPO_ROOT),
                dockerfile=DOCKERFILE.name,
                tag=SERVER_IMAGE,
                buildargs={"BASE": base},
                network_mode="none",
                pull=False,
                rm=True,
                forcerm=True,
                decode=True,
            )
            follow_build(stream, log)
        size = client.api.inspect_image(SERVER_IMAGE)["Size"]
        log(f"built {SERVER_IMAGE} ({size / 1e6:.0f} MB) in {time.monotonic() - started:.1f} s")
    finally:
        client.close()
    return SERVER_IMAGE


def check_host_python() -> None:
    """Wheels built here must fit the image's Python: CPython 3.11."""
    if sys.version_info[:2] != (3, 11):
        raise SandboxUnavailable(
            "the server image's wheels are built with this Python and must fit the image's "
            f"CPython 3.11; this is {sys.version.split()[0]}: run it from a 3.11 environment"
        )


def server_requirements() -> list[str]:
    """The server's install_requires (setup.cfg), plus what building it from source needs."""
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    lines = parser.get("options", "install_requires").splitlines()
    return [line.strip() for line in lines if line.strip()] + list(BUILD_REQUIREMENTS)


def make_wheelhouse(*, log: Log = print) -> Path:
    """Every wheel the server image installs, in ``.cache/server-wheels``; return it."""
    requirements = "\n".join(server_requirements()) + "\n"
    digest = hashlib.sha256(
        "\n".join([requirements, CONSTRAINTS.read_text(), sys.version]).encode()
    ).hexdigest()[:16]
    done = WHEELHOUSE / ".complete"
    if done.exists() and done.read_text() == digest:
        log(f"reusing the server wheelhouse {WHEELHOUSE}")
        return WHEELHOUSE
    # Another set of pins: start afresh, so no stale wheel is offered to the build.
    shutil.rmtree(WHEELHOUSE, ignore_errors=True)
    WHEELHOUSE.mkdir(parents=True)
    requirements_file = WHEELHOUSE / "requirements.txt"
    requirements_file.write_text(requirements)
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "--wheel-dir",
        str(WHEELHOUSE),
        "-r",
        str(requirements_file),
        "-c",
        str(CONSTRAINTS),
    ]
    log(f"making the server wheels in {WHEELHOUSE}")
    run_step(command, "pip wheel of the server's requirements", log)
    done.write_text(digest)
    return WHEELHOUSE
