"""Fixtures for the backend tests: runtimes, a fake batcher, sandboxes closed after use."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rlm.bridge import SessionBridge
from tests.support import IMAGE, RUNTIMES, FakeBatcher, make_bridge


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def batcher() -> FakeBatcher:
    return FakeBatcher()


@pytest.fixture
async def sandbox_factory(docker_client: Any) -> AsyncIterator[Any]:
    """Makes DockerSandboxes that are closed (containers removed) after the test.

    Keyword arguments that are :class:`ContainerSpec` fields (runtime, memory, ...)
    make the spec (image: the test image); the rest go to DockerSandbox.
    """
    from rlm.backends.docker import ColdStart, ContainerSpec, DockerSandbox

    made: list[DockerSandbox] = []
    spec_fields = {f.name for f in dataclasses.fields(ContainerSpec)}

    def make(bridge: SessionBridge | None = None, **kwargs: Any) -> DockerSandbox:
        spec = {"image": IMAGE} | {k: kwargs.pop(k) for k in spec_fields & set(kwargs)}
        source = ColdStart(ContainerSpec(**spec), docker_client=docker_client)
        kwargs.setdefault("output_limit", 10_000)
        box = DockerSandbox(bridge or make_bridge(), source, **kwargs)
        made.append(box)
        return box

    yield make
    for box in made:
        await box.close()
