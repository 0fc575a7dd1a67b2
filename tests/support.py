"""Helpers shared by the tests: model names, configs, a fake batcher, bridges.

Fixtures live in the ``conftest.py`` files; everything a test imports by name
lives here, so no test imports from a conftest.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import anyio

from rlm.bridge import SessionBridge
from rlm.config import RLMConfig
from rlm.session import SessionLimits, SessionState
from rlm.subcalls.batcher import SubResult
from rlm.testing import OfflineModelServer

ROOT_MODEL = "root-test"
SUB_MODEL = "sub-test"
RUNTIMES = ("runc", "runsc")
IMAGE = os.environ.get("RLM_TEST_IMAGE", "rlm-sandbox:latest")


def make_config(server: OfflineModelServer, **overrides: object) -> RLMConfig:
    """A config pointed at ``server``, on the restricted backend unless overridden."""
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


class FakeBatcher:
    """Answers every prompt at once; records what it was asked.

    Prompts starting with ``fail:`` come back as failed sub-calls, and ``boom``
    makes the batcher itself raise (a host-side bug the sandbox must not see);
    with ``faults=False`` every prompt is echoed (for prompts drawn at random).
    """

    def __init__(self, *, faults: bool = True) -> None:
        self.faults = faults
        self.calls: list[tuple[str, str, list[str], int | None]] = []

    async def run(
        self,
        session: SessionState,
        model: str,
        prompts: list[str],
        max_concurrent: int | None,
        *,
        on_result: Callable[[int, SubResult], None] | None = None,
    ) -> list[SubResult]:
        self.calls.append((session.session_id, model, list(prompts), max_concurrent))
        if self.faults and any(p == "boom" for p in prompts):
            raise RuntimeError("internal detail /etc/host-secret-path should not leak")
        results = [
            SubResult(error=p[5:], kind="provider")
            if self.faults and p.startswith("fail:")
            else SubResult(text=f"echo:{p}")
            for p in prompts
        ]
        if on_result is not None:
            for i, result in enumerate(results):
                on_result(i, result)
        return results


def make_bridge(
    batcher: FakeBatcher | None = None, *, limits: SessionLimits | None = None, tenant: str = "t1"
) -> SessionBridge:
    """A bridge for one new session (sub model ``sub-test``) over ``batcher``."""
    session = SessionState(sub_model=SUB_MODEL, limits=limits or SessionLimits(), tenant=tenant)
    return SessionBridge(batcher or FakeBatcher(), session)


async def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait until ``condition()`` holds; polling, because what it reads (a model
    server's stats, say) changes in another thread."""
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.005)
