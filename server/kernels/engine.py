"""The Docker engine, as the sandbox and the image build both reach it: one client, one
translation of docker-py and transport errors into ours (``map_docker_errors``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import docker
import docker.errors
import requests.exceptions

from server.config import Settings
from server.errors import SandboxUnavailable


@contextmanager
def map_docker_errors(action: str, image: str = "") -> Iterator[None]:
    """Translate docker-py and transport errors raised while doing ``action``."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise SandboxUnavailable(
            f"the kernel image {image or '(unknown)'} is not in the Docker engine: "
            "build it with `dataexec build-image`"
        ) from exc
    except docker.errors.BuildError as exc:
        raise SandboxUnavailable(f"{action} failed: {exc.msg}") from exc
    except docker.errors.APIError as exc:
        raise SandboxUnavailable(
            f"the Docker engine refused to {action}: {exc.explanation or exc}"
        ) from exc
    except requests.exceptions.Timeout as exc:
        raise SandboxUnavailable(f"the Docker engine did not answer in time to {action}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise SandboxUnavailable(
            f"no Docker engine answers (needed to {action}): {exc}; start one, e.g. with "
            'scripts/docker-engine, or choose sandbox = "bubblewrap"'
        ) from exc


def docker_client(settings: Settings, timeout: int) -> docker.DockerClient:
    """A client for the configured engine; ``version="auto"`` asks the engine, so this blocks."""
    if settings.docker_url:
        return docker.DockerClient(base_url=settings.docker_url, version="auto", timeout=timeout)
    return docker.from_env(version="auto", timeout=timeout)
