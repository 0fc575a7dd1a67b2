"""Helpers for the restricted backend's tests: a fake batcher, sandboxes, cells run.

The tests run the backend for real: RestrictedPython, worker threads, injected stops.
Sub-calls go through a real :class:`SessionBridge` to a small fake batcher, so the
bridge's validation and limits apply; the end-to-end tests elsewhere use the real
batcher and the offline model server over HTTP.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.to_thread

from rlm.backends.restricted import RestrictedSandbox
from rlm.bridge import SessionBridge
from rlm.session import SessionLimits, SessionState
from rlm.subcalls.batcher import SubResult

CANARY = "CANARY-5f1d0c2e-never-reachable"
MARK = "GOT" + "THROUGH"  # built here so no cell's source contains it


class FakeBatcher:
    """Answers prompts at once: ``fail:...`` fails, ``hang`` blocks, shielded, for a while."""

    def __init__(self) -> None:
        self.secret = CANARY
        self.calls: list[list[str]] = []
        self.hang_s = 3.0

    async def run(
        self,
        session: SessionState,
        model: str,
        prompts: list[str],
        max_concurrent: int | None,
        *,
        on_result: Any = None,
    ) -> list[SubResult]:
        self.calls.append(list(prompts))
        if "hang" in prompts:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(self.hang_s)
        if "slow" in prompts:
            await anyio.sleep(30)
        return [
            SubResult(error=p[5:], kind="provider")
            if p.startswith("fail:")
            else SubResult(text=f"echo:{p}")
            for p in prompts
        ]


def make_sandbox(**kwargs: Any) -> tuple[RestrictedSandbox, FakeBatcher, SessionBridge]:
    batcher = FakeBatcher()
    session = SessionState(sub_model="sub", limits=SessionLimits(max_batch_size=5))
    bridge = SessionBridge(batcher, session)  # type: ignore[arg-type]
    kwargs.setdefault("output_limit", 10_000)
    return RestrictedSandbox(bridge, **kwargs), batcher, bridge


def make_isolated(isolation: str, **kwargs: Any) -> tuple[Any, FakeBatcher, SessionBridge]:
    """A sandbox of the restricted backend in ``isolation`` mode (a worker process or not)."""
    if isolation == "inprocess":
        return make_sandbox(**kwargs)
    from rlm.backends.restricted.process import ProcessSandbox

    batcher = FakeBatcher()
    session = SessionState(sub_model="sub", limits=SessionLimits(max_batch_size=5))
    bridge = SessionBridge(batcher, session)  # type: ignore[arg-type]
    kwargs.setdefault("output_limit", 10_000)
    return ProcessSandbox(bridge, **kwargs), batcher, bridge


async def run(box: RestrictedSandbox, code: str, timeout: float = 10.0) -> Any:
    return await box.execute(code, timeout)


async def run_beside_a_ticker(
    box: RestrictedSandbox, code: str, timeout: float, every: float
) -> tuple[Any, int]:
    """Run a cell while a task ticks every ``every`` s: the ticks show the loop ran."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(every)
            ticks += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        result = await run(box, code, timeout=timeout)
        tg.cancel_scope.cancel()
    return result, ticks


async def refused(box: RestrictedSandbox, code: str, timeout: float = 10.0) -> str:
    """Run an attack: it must end in an error, without printing the marker."""
    result = await run(box, code, timeout)
    assert MARK not in result.stdout, result
    assert result.error, f"expected an error, got {result}"
    return str(result.error)
