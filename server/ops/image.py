"""Building the kernel image without a registry: what `dataexec build-image` runs.

No image registry can be reached on the machines we deploy to, so nothing here pulls:

1. wheels: ``pip download`` on the host, for the image's platform (manylinux, CPython
   3.11), of ``kernel_image/requirements.txt`` under the one ``constraints.txt``, into a
   wheelhouse under the state dir, keyed by what it was downloaded from so a rebuild with
   the same pins downloads nothing;
2. base: ``python:3.11-slim`` when the engine already has it, else ``dataexec-base:bookworm``
   made once with debootstrap and imported into the engine;
3. image: ``Dockerfile.kernel`` built with network mode ``none`` from a small context (the
   Dockerfile, the wheelhouse, the pins and the ``dataexec_kernel`` package, not the repo),
   installing from the wheelhouse only.

Docker is driven with docker-py; failures come out as ``SandboxUnavailable`` with what to
do about them.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import docker

from server.config import Settings
from server.errors import SandboxUnavailable
from server.kernels.engine import docker_client, map_docker_errors

Log = Callable[[str], Any]

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile.kernel"
REQUIREMENTS = REPO_ROOT / "kernel_image" / "requirements.txt"
CONSTRAINTS = REPO_ROOT / "constraints.txt"
KERNEL_PACKAGE = REPO_ROOT / "kernel_image" / "dataexec_kernel"

SLIM_BASE = "python:3.11-slim"
DEBOOTSTRAP_BASE = "dataexec-base:bookworm"
DEBOOTSTRAP_SUITE = "bookworm"
DEBOOTSTRAP_MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_PACKAGES = ("python3", "python3-venv", "tini", "ca-certificates")
SUPPORTED_MACHINES = ("x86_64", "amd64")

# Exactly these: with manylinux2014 alone pip silently settles on years-old pandas, since
# current releases ship manylinux_2_28 wheels only.
WHEEL_PLATFORM_ARGS = (
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux2014_x86_64",
    "--implementation",
    "cp",
    "--python-version",
    "3.11",
    "--abi",
    "cp311",
    "--only-binary=:all:",
)


def build_image(settings: Settings, *, log: Log = print, packages: Sequence[str] = ()) -> str:
    """Build the kernel image offline (wheels, base, build) and return its tag.

    ``packages`` are requirement lines added to ``kernel_image/requirements.txt``.
    """
    check_architecture()
    client = engine_client(settings)
    try:
        started = time.monotonic()
        wheelhouse = download_wheels(settings, packages, log=log)
        log(f"wheels ready in {time.monotonic() - started:.1f} s: {wheelhouse}")

        started = time.monotonic()
        base = ensure_base_image(client, settings, log=log)
        log(f"base image {base} ready in {time.monotonic() - started:.1f} s")

        started = time.monotonic()
        tag = build_kernel_image(client, settings, base, wheelhouse, packages, log=log)
        size = client.api.inspect_image(tag)["Size"]
        log(f"built {tag} ({size / 1e6:.0f} MB) in {time.monotonic() - started:.1f} s")
        return tag
    finally:
        client.close()


def check_architecture() -> None:
    """Refuse early on hosts the wheel platform flags do not fit."""
    machine = platform.machine().lower()
    if machine not in SUPPORTED_MACHINES:
        raise SandboxUnavailable(
            f"the kernel image can only be built for x86_64 for now (this host is {machine}): "
            "its wheels are downloaded for manylinux x86_64; use the bubblewrap sandbox here"
        )


def engine_client(settings: Settings) -> docker.DockerClient:
    """A client for the configured engine, with a timeout long enough for builds."""
    with map_docker_errors("connect to the Docker engine"):
        client = docker_client(settings, timeout=600)
        client.ping()
    return client


def _requirement_lines(packages: Sequence[str]) -> str:
    return REQUIREMENTS.read_text() + "".join(f"{p.strip()}\n" for p in packages if p.strip())


def download_wheels(settings: Settings, packages: Sequence[str] = (), *, log: Log = print) -> Path:
    """Download every wheel the image needs into the wheelhouse; return its directory.

    Each set of requirements and pins gets a directory of its own, so the build context
    holds no stale wheels and an unchanged set is not downloaded again.
    """
    requirements = _requirement_lines(packages)
    digest = hashlib.sha256(
        "\n".join([requirements, CONSTRAINTS.read_text(), *WHEEL_PLATFORM_ARGS]).encode()
    ).hexdigest()
    wheelhouse = settings.state_dir / "wheelhouse" / digest[:16]
    done = wheelhouse / ".complete"
    if done.exists():
        log(f"reusing wheelhouse {wheelhouse}")
        return wheelhouse
    wheelhouse.mkdir(parents=True, exist_ok=True)
    requirements_file = wheelhouse / "requirements.txt"
    requirements_file.write_text(requirements)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "--dest",
        str(wheelhouse),
        "-r",
        str(requirements_file),
        "-c",
        str(CONSTRAINTS),
        *WHEEL_PLATFORM_ARGS,
    ]
    log(f"downloading kernel wheels into {wheelhouse}")
    run_step(command, "pip download of the kernel wheels", log)
    done.touch()
    return wheelhouse


def run_step(command: list[str], what: str, log: Log) -> None:
    """Run a host command, streaming its output to log; raise SandboxUnavailable on failure."""
    try:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    except OSError as exc:
        raise SandboxUnavailable(f"{what} could not start: {exc}") from exc
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-20:]
        log(line)
    if process.wait():
        raise SandboxUnavailable(f"{what} failed (exit {process.returncode}):\n" + "\n".join(tail))


def _image_exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.api.inspect_image(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_base_image(client: docker.DockerClient, settings: Settings, *, log: Log = print) -> str:
    """The base image to build on: python:3.11-slim if present, else our debootstrapped one."""
    with map_docker_errors("look up the base image"):
        if _image_exists(client, SLIM_BASE):
            return SLIM_BASE
    return debootstrap_image(client, settings, DEBOOTSTRAP_BASE, DEBOOTSTRAP_PACKAGES, log=log)


def debootstrap_image(
    client: docker.DockerClient,
    settings: Settings,
    name: str,
    packages: Sequence[str],
    *,
    log: Log = print,
) -> str:
    """``name``: a minimal Debian with ``packages``, made once with debootstrap and imported
    (the server image's base is made this way too, see server_image.py)."""
    with map_docker_errors("look up the base image"):
        if _image_exists(client, name):
            log(f"reusing {name}")
            return name
    log(f"no registry is used: making {name} with debootstrap")
    _ensure_debootstrap(log)
    with tempfile.TemporaryDirectory(
        prefix="base-", dir=_scratch_dir(settings), ignore_cleanup_errors=True
    ) as scratch:
        root = Path(scratch) / "root"
        try:
            run_step(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=" + ",".join(packages),
                    DEBOOTSTRAP_SUITE,
                    str(root),
                    DEBOOTSTRAP_MIRROR,
                ],
                "debootstrap",
                log,
            )
        finally:
            _unmount_under(root)
        _trim_rootfs(root)
        tarball = Path(scratch) / "root.tar"
        run_step(
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."],
            "packing the base file system",
            log,
        )
        with map_docker_errors(f"import {name}"):
            repository, tag = name.split(":")
            client.api.import_image_from_file(
                str(tarball), repository=repository, tag=tag, changes=['CMD ["/bin/bash"]']
            )
    return name


def _ensure_debootstrap(log: Log) -> None:
    if shutil.which("debootstrap"):
        return
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            "debootstrap is needed to make a base image without a registry:"
            " install it (apt-get install debootstrap) or run as root"
        )
    log("installing debootstrap with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode:
            raise SandboxUnavailable(f"{' '.join(command)} failed: {result.stderr.strip()}")


def _unmount_under(root: Path) -> None:
    """Unmount what an interrupted debootstrap left mounted in the new root (/proc, /sys),
    so that removing the scratch directory cannot reach into the host's file systems."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True)


def _trim_rootfs(root: Path) -> None:
    """Drop what a kernel never reads (package caches, docs) before the base is imported."""
    for pattern in (
        "var/cache/apt/archives/*.deb",
        "var/lib/apt/lists/*",
        "usr/share/doc/*",
        "usr/share/man/*",
        "usr/share/info/*",
        "var/log/*.log",
    ):
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _scratch_dir(settings: Settings) -> Path:
    """Temporary space on the wheelhouse's file system, so wheels can be hard-linked."""
    scratch = settings.state_dir / "build"
    scratch.mkdir(parents=True, exist_ok=True)
    return scratch


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def build_kernel_image(
    client: docker.DockerClient,
    settings: Settings,
    base: str,
    wheelhouse: Path,
    packages: Sequence[str] = (),
    *,
    log: Log = print,
) -> str:
    """Build Dockerfile.kernel with network mode none from a context of its own; return the tag."""
    with tempfile.TemporaryDirectory(prefix="context-", dir=_scratch_dir(settings)) as scratch:
        context = Path(scratch)
        shutil.copy2(DOCKERFILE, context / "Dockerfile")
        (context / "requirements.txt").write_text(_requirement_lines(packages))
        shutil.copy2(CONSTRAINTS, context / "constraints.txt")
        shutil.copytree(
            KERNEL_PACKAGE,
            context / "dataexec_kernel",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        wheels = context / "wheels"
        wheels.mkdir()
        for wheel in wheelhouse.glob("*.whl"):
            _link_or_copy(wheel, wheels / wheel.name)
        log(f"building {settings.docker_image} from {base} (network none)")
        with map_docker_errors(f"build {settings.docker_image}"):
            stream = client.api.build(
                path=str(context),
                dockerfile="Dockerfile",
                tag=settings.docker_image,
                buildargs={"BASE": base, "KERNEL_UID": str(settings.kernel_uid)},
                network_mode="none",
                pull=False,
                rm=True,
                forcerm=True,
                decode=True,
                labels={"dataexec.base": base},
            )
            follow_build(stream, log)
    return settings.docker_image


def follow_build(stream: Iterator[dict[str, Any]], log: Log) -> None:
    """Pass the build log on; raise on the first error the engine reports."""
    for chunk in stream:
        if "error" in chunk:
            detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
            raise docker.errors.BuildError(detail.strip(), build_log=[])
        text = chunk.get("stream", "").rstrip()
        if text:
            log(text)
