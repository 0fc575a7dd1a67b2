"""Shared fixtures: the offline model server over real HTTP, and configs pointing at it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from rlm.config import RLMConfig
from rlm.testing import OfflineModelServer

ROOT_MODEL = "root-test"
SUB_MODEL = "sub-test"


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
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture
def server() -> Iterator[OfflineModelServer]:
    with OfflineModelServer() as srv:
        yield srv


def make_config(server: OfflineModelServer, **overrides: object) -> RLMConfig:
    settings: dict[str, object] = {
        "api_key": "test-key",
        "base_url": server.base_url,
        "model": ROOT_MODEL,
        "sub_model": SUB_MODEL,
        "backend": "restricted",
        "cell_timeout": 10.0,
        "request_timeout": 10.0,
    }
    settings.update(overrides)
    return RLMConfig(**settings).checked()  # type: ignore[arg-type]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under RLM_NO_SKIP (set by scripts/test.sh, so in CI) a skipped test fails."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("RLM_NO_SKIP") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped where nothing may skip (RLM_NO_SKIP): {report.longrepr}"
