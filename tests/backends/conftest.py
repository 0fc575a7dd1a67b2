"""Fixtures for the Docker backend tests: the engine, an up-to-date image, a fake batcher.

Nothing here skips: without a working engine and image the Docker tests fail with
what to run (scripts/setup-docker.sh), as they must in CI.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from rlm.batcher import SubResult
from rlm.dispatch import SessionBridge
from rlm.session import SessionLimits, SessionState

RUNTIMES = ("runc", "runsc")
IMAGE = os.environ.get("RLM_TEST_IMAGE", "rlm-sandbox:latest")


class FakeBatcher:
    """Answers every prompt at once; records what it was asked.

    Prompts starting with ``fail:`` come back as failed sub-calls, and ``boom``
    makes the batcher itself raise (a host-side bug the sandbox must not see).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[str], int | None]] = []

    async def run(
        self, session: SessionState, model: str, prompts: list[str], max_concurrent: int | None
    ) -> list[SubResult]:
        self.calls.append((session.session_id, model, list(prompts), max_concurrent))
        if any(p == "boom" for p in prompts):
            raise RuntimeError("internal detail /etc/host-secret-path should not leak")
        return [
            SubResult(error=p[5:], kind="provider")
            if p.startswith("fail:")
            else SubResult(text=f"echo:{p}")
            for p in prompts
        ]


def make_bridge(
    batcher: Any | None = None, *, limits: SessionLimits | None = None, tenant: str = "t1"
) -> SessionBridge:
    session = SessionState(sub_model="sub-test", limits=limits or SessionLimits(), tenant=tenant)
    return SessionBridge(batcher or FakeBatcher(), session)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """The engine, with the sandbox image built from this checkout's runner."""
    import docker

    from rlm.image import OFFLINE_BASE, build_image, image_is_current

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        pytest.fail(
            f"the Docker tests need a running engine ({exc}); run scripts/setup-docker.sh",
            pytrace=False,
        )
    if not image_is_current(IMAGE, client):
        # Rebuilding is cheap (cached layers) and keeps the tests on this runner.
        try:
            client.images.get(OFFLINE_BASE)
            offline = True
        except docker.errors.ImageNotFound:
            offline = False
        build_image(IMAGE, offline=offline, docker_client=client, log=lambda _line: None)
    yield client
    client.close()


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def batcher() -> FakeBatcher:
    return FakeBatcher()


@pytest.fixture
async def sandbox_factory(docker_client: Any) -> AsyncIterator[Any]:
    """Makes DockerSandboxes that are closed (containers removed) after the test."""
    from rlm.backends.docker import DockerSandbox

    made: list[DockerSandbox] = []

    def make(bridge: SessionBridge | None = None, **kwargs: Any) -> DockerSandbox:
        kwargs.setdefault("docker_client", docker_client)
        kwargs.setdefault("image", IMAGE)
        kwargs.setdefault("output_limit", 10_000)
        box = DockerSandbox(bridge or make_bridge(), **kwargs)
        made.append(box)
        return box

    yield make
    for box in made:
        await box.close()
