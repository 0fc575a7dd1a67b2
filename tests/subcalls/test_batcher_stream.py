"""Batcher.run's on_result (answers in completion order) and the ETA of its progress."""

from __future__ import annotations

import time
from typing import Any

import pytest

from rlm.subcalls.batcher import SubResult
from tests.subcalls.test_batcher import SUB, served, session, wait_until


async def test_on_result_gets_every_index_once_as_it_completes() -> None:
    async with served() as (_server, batcher):
        heard: list[tuple[int, SubResult]] = []
        # Later prompts answer sooner; 6 and 7 repeat 0 and 1 (answered with them).
        prompts = [f"item {i} [[sleep:{(6 - i) * 0.05:.2f}]]" for i in range(6)]
        prompts += [prompts[0], prompts[1], "fails [[fail:400]]"]
        results = await batcher.run(
            session(), SUB, prompts, 10, on_result=lambda i, r: heard.append((i, r))
        )

    order = [i for i, _ in heard]
    assert sorted(order) == list(range(9))
    assert order.index(8) < order.index(5) < order.index(4) < order.index(0)
    assert order[order.index(1) + 1] == 7 and order[order.index(0) + 1] == 6
    for i, result in heard:
        assert result is results[i]
    assert heard[order.index(8)][1].kind == "bad_request"


async def test_on_result_sees_the_batch_counted_so_far() -> None:
    async with served() as (_server, batcher):
        events: list[dict[str, Any]] = []
        s = session(events=events)
        seen: list[int] = []
        # One wide: the path without worker tasks.
        await batcher.run(
            s, SUB, ["a", "b", "c"], 1, on_result=lambda i, r: seen.append(s.usage.sub_calls)
        )

    assert seen == [1, 2, 3]


@pytest.mark.parametrize("width", [1, 5])
async def test_an_on_result_that_raises_cancels_the_batch(width: int) -> None:
    async with served() as (server, batcher):
        events: list[dict[str, Any]] = []
        prompts = ["quick"] + [f"slow {i} [[hang]]" for i in range(8)]

        def broken(index: int, result: SubResult) -> None:
            raise RuntimeError("callback broke")

        with pytest.raises((RuntimeError, ExceptionGroup)):
            await batcher.run(session(events=events), SUB, prompts, width, on_result=broken)
        await wait_until(lambda: server.stats.in_flight == 0)

    assert server.stats.disconnects == width - 1
    end = next(e for e in events if e["event"] == "batch_end")
    assert end["cancelled"] is True and end["failures"] == 0


async def test_progress_carries_an_eta_that_knows_the_concurrency() -> None:
    # 40 prompts, 10 at a time, 0.1 s each: four waves, 0.4 s in all.
    async with served(latency=0.1, progress_interval=0) as (_server, batcher):
        timed: list[tuple[float, dict[str, Any]]] = []
        s = session()
        s.emit = lambda e: timed.append((time.monotonic(), e))
        await batcher.run(s, SUB, [f"p {i}" for i in range(40)], 10)

    end = next(t for t, e in timed if e["event"] == "batch_end")
    progress = [(t, e) for t, e in timed if e["event"] == "batch_progress"]
    assert len(progress) == 40 and progress[-1][1]["eta_s"] == 0.0
    for t, event in progress:
        eta, left = event["eta_s"], end - t
        assert isinstance(eta, float)
        # Timing on a shared machine: generous, but far tighter than a rate-only
        # estimate, which at the first answer would say 39 / (1 / 0.1 s) = 3.9 s.
        assert abs(eta - left) <= 0.1 + 0.5 * left, (event["done"], eta, left)
    first = progress[0][1]["eta_s"]
    assert 0.15 < first < 0.8
