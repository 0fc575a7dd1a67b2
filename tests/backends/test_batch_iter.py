"""llm_batch_iter end to end: model code, the bridge, the real batcher, real HTTP.

On both backends a cell reads answers as they complete and stops at the first that
has what it wants; the offline server then shows the rest of the batch cancelled
(dropped while in flight, or never sent) rather than answered, and the cell ends
long before they would have. A stream the cell leaves open is cancelled when the
cell ends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rlm.backends.base import CellResult
from rlm.backends.docker import ColdStart, ContainerSpec, DockerSandbox
from rlm.backends.restricted import RestrictedSandbox
from rlm.bridge import SessionBridge
from rlm.provider.client import ModelClient
from rlm.session import SessionLimits, SessionState
from rlm.subcalls.batcher import Batcher
from rlm.testing import OfflineModelServer
from tests.support import IMAGE, RUNTIMES, wait_until

SUB = "sub-test"
#: Long enough that an answer the cell did not wait for cannot have come in time.
SLOW_S = 2.0

NEEDLE = f"""
prompts = [f"chunk {{i}}: nothing here [[sleep:{SLOW_S}]]" for i in range(200)]
prompts[37] = "chunk 37: the needle [[sleep:0.01]]"
found = None
for i, answer in llm_batch_iter(prompts):
    if "needle" in answer:
        found = (i, answer)
        break
print(found)
"""

LEFT_OPEN = f"""
prompts = [f"chunk {{i}} [[sleep:{SLOW_S}]]" for i in range(200)]
prompts[5] = "chunk 5 [[sleep:0.01]]"
answers = llm_batch_iter(prompts)
print(next(answers))
"""

IN_ORDER = """
prompts = [f"item {i} [[sleep:{(6 - i) * 0.05:.2f}]]" for i in range(6)]
print([i for i, answer in llm_batch_iter(prompts, max_concurrent=6)])
"""


class Setup:
    """One session over the real batcher and the offline server, on one backend."""

    def __init__(
        self,
        server: OfflineModelServer,
        bridge: SessionBridge,
        box: RestrictedSandbox | DockerSandbox,
        events: list[dict[str, Any]],
    ) -> None:
        self.server = server
        self.bridge = bridge
        self.box = box
        self.events = events

    @property
    def session(self) -> SessionState:
        return self.bridge.session

    async def cell(self, code: str) -> tuple[CellResult, float]:
        """Run a cell as the root loop does (streams closed as it ends); its wall time."""
        started = time.monotonic()
        try:
            result = await self.box.execute(code, 30.0)
        finally:
            await self.bridge.cell_finished()
        return result, time.monotonic() - started


@pytest.fixture(
    params=["restricted", *(pytest.param(r, marks=pytest.mark.docker) for r in RUNTIMES)]
)
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    with OfflineModelServer() as server:
        client = ModelClient(api_key="test", base_url=server.base_url, timeout=30)
        events: list[dict[str, Any]] = []
        session = SessionState(
            sub_model=SUB, limits=SessionLimits(max_batch_size=1000), emit=events.append
        )
        bridge = SessionBridge(Batcher(client), session)
        box: RestrictedSandbox | DockerSandbox
        if request.param == "restricted":
            box = RestrictedSandbox(bridge, output_limit=10_000)
        else:
            spec = ContainerSpec(image=IMAGE, runtime=request.param)
            docker_client = request.getfixturevalue("docker_client")
            box = DockerSandbox(bridge, ColdStart(spec, docker_client=docker_client))
        try:
            await box.start()
            yield Setup(server, bridge, box, events)
        finally:
            await box.close()
            await bridge.aclose()
            await client.aclose()


def assert_cancelled_not_answered(setup: Setup) -> None:
    stats = setup.server.stats
    assert stats.completed == 1, "only the needle was answered"
    # Everything else that reached the server was dropped in flight; the rest of the
    # 200 never left the host.
    assert stats.disconnects == stats.requests - 1
    # As wide as the session's limit (its default), and the needle's refill, +1.
    assert stats.requests <= SessionLimits().max_concurrent + 2, stats.requests
    end = [e for e in setup.events if e["event"] == "batch_end"]
    assert len(end) == 1 and end[0]["cancelled"] is True
    assert (end[0]["done"], end[0]["failures"], end[0]["retries"]) == (1, 0, 0)
    usage = setup.session.usage
    assert (usage.sub_calls, usage.model(SUB).calls, usage.model(SUB).failures) == (1, 1, 0)
    [subcalls] = [e for e in setup.events if e["event"] == "subcall_end"]
    assert subcalls["cancelled"] == 199 and subcalls["failures"] == 0


async def test_break_at_the_first_answer_cancels_the_rest(setup: Setup) -> None:
    result, seconds = await setup.cell(NEEDLE)

    assert result.error is None, result
    assert result.stdout.strip() == "(37, 'echo: chunk 37: the needle [[sleep:0.01]]')"
    assert seconds < SLOW_S / 2, seconds
    await wait_until(lambda: setup.server.stats.in_flight == 0, timeout=SLOW_S / 2)
    assert_cancelled_not_answered(setup)
    assert len(setup.bridge.streams) == 0


async def test_a_stream_left_open_is_cancelled_when_the_cell_ends(setup: Setup) -> None:
    result, seconds = await setup.cell(LEFT_OPEN)

    assert result.error is None, result
    assert result.stdout.strip() == "(5, 'echo: chunk 5 [[sleep:0.01]]')"
    assert seconds < SLOW_S / 2, seconds
    assert len(setup.bridge.streams) == 0
    await wait_until(lambda: setup.server.stats.in_flight == 0, timeout=SLOW_S / 2)
    assert_cancelled_not_answered(setup)
    # The iterator outlives its stream: reading on says so, and the session goes on.
    result, _ = await setup.cell("print(next(answers))")
    assert result.error is not None and "RLMCallError" in result.error, result
    result, _ = await setup.cell(IN_ORDER)
    assert result.error is None and result.stdout.strip() == "[5, 4, 3, 2, 1, 0]", result


async def test_rlm_batch_iter_streams_too(setup: Setup) -> None:
    # No child runner on this bridge: the prompts go to the sub model with their
    # contexts, through the same stream.
    code = """
for i, answer in rlm_batch_iter(["first", "second [[sleep:0.2]]"], contexts=["c1", "c2"]):
    print(i, answer.splitlines()[0])
"""
    result, _ = await setup.cell(code)

    assert result.error is None, result
    assert result.stdout.splitlines() == ["0 echo: first", "1 echo: second [[sleep:0.2]]"]
