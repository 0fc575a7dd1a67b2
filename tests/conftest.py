"""Shared fixtures: no ambient configuration, the offline model server over real HTTP,
and the Docker engine with an up-to-date sandbox image."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from rlm.testing import OfflineModelServer
from tests.support import IMAGE


@pytest.fixture(autouse=True)
def _no_ambient_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Tests never read the developer's own keys, .env or settings."""
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "RLM_MODEL",
        "RLM_SUB_MODEL",
        "RLM_BACKEND",
        "RLM_CELL_TIMEOUT",
        "RLM_MAX_ITERATIONS",
        "RLM_OUTPUT_LIMIT",
        "RLM_REQUEST_TIMEOUT",
        "RLM_MAX_DEPTH",
        "RLM_CHILD_MODEL",
        "RLM_PRICES",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture
def server() -> Iterator[OfflineModelServer]:
    with OfflineModelServer() as srv:
        yield srv


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """A backend name, for ``parametrize("backend", [...], indirect=True)``: Docker
    tests get the engine and a current image first."""
    name: str = request.param
    if name == "docker":
        request.getfixturevalue("docker_client")
    return name


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """The engine, with the sandbox image built from this checkout's runner.

    Nothing skips: without a working engine the Docker tests fail with what to run
    (scripts/setup-docker.sh), as they must in CI.
    """
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under RLM_NO_SKIP (set by scripts/test.sh, so in CI) a skipped test fails."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("RLM_NO_SKIP") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped where nothing may skip (RLM_NO_SKIP): {report.longrepr}"
