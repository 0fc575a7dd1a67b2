"""The Docker engine connection: where it is and how to open it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from docker import DockerClient


def engine_address() -> str:
    """The engine this process talks to (``DOCKER_HOST`` or the local socket)."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def connect(docker_client: DockerClient | None = None) -> DockerClient:
    """``docker_client`` if given, else a new client for the engine of the environment.

    Blocking (it asks the engine for its API version): call it off the event loop.
    """
    if docker_client is not None:
        return docker_client
    import docker

    # from_env honours DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH.
    return docker.from_env(timeout=120)
