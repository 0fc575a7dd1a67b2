"""The Docker fixtures of the backend tests (the engine, an up-to-date image), shared."""

from tests.backends.conftest import IMAGE, docker_client

__all__ = ["IMAGE", "docker_client"]
