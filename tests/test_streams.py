"""StreamTable: a real Batcher's answers handed over as they complete, over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from rlm.errors import BridgeRefusal
from rlm.provider.client import ModelClient
from rlm.session import SessionLimits, SessionState
from rlm.streams import Producer, StreamTable
from rlm.subcalls.batcher import Batcher, SubResult
from rlm.testing import OfflineModelServer
from tests.support import wait_until

SUB = "sub-test"


@contextlib.asynccontextmanager
async def served(latency: float = 0.0) -> AsyncIterator[tuple[OfflineModelServer, Batcher]]:
    with OfflineModelServer(latency=latency) as server:
        client = ModelClient(api_key="test", base_url=server.base_url, timeout=30)
        try:
            yield server, Batcher(client)
        finally:
            await client.aclose()


def new_session(events: list[dict[str, Any]] | None = None) -> SessionState:
    return SessionState(
        sub_model=SUB,
        limits=SessionLimits(max_concurrent=256),
        emit=events.append if events is not None else None,
    )


def batch(
    batcher: Batcher, session: SessionState, prompts: list[str], max_concurrent: int | None = None
) -> Producer:
    return lambda on_result: batcher.run(session, SUB, prompts, max_concurrent, on_result=on_result)


async def drain(table: StreamTable, stream: int) -> list[list[Any]]:
    items: list[list[Any]] = []
    while True:
        answer = await table.next(stream)
        items.extend(answer["items"])
        if answer["done"]:
            return items


async def test_answers_arrive_in_completion_order_and_the_table_lets_go() -> None:
    async with served() as (_server, batcher):
        table = StreamTable()
        # Later prompts answer sooner: completion order is the reverse of input order.
        prompts = [f"item {i} [[sleep:{(8 - i) * 0.06:.2f}]]" for i in range(8)]
        stream = table.open(len(prompts), batch(batcher, new_session(), prompts))
        items = await drain(table, stream)

    assert [i for i, _ in items] == list(range(7, -1, -1))
    assert all(item == {"text": f"echo: {prompts[i]}"} for i, item in items)
    # Read to the end, the stream is gone: the sandbox has no reason to close it.
    assert len(table) == 0
    with pytest.raises(BridgeRefusal):
        await table.next(stream)


async def test_next_waits_for_an_answer_and_returns_all_there_are() -> None:
    async with served() as (_server, batcher):
        table = StreamTable()
        prompts = [f"quick {i}" for i in range(5)] + ["slow [[sleep:0.5]]"]
        stream = table.open(len(prompts), batch(batcher, new_session(), prompts))
        await anyio.sleep(0.3)
        first = await table.next(stream)
        started = time.monotonic()
        second = await table.next(stream)
        waited = time.monotonic() - started

    assert sorted(i for i, _ in first["items"]) == [0, 1, 2, 3, 4] and not first["done"]
    assert second == {"items": [[5, {"text": "echo: slow [[sleep:0.5]]"}]], "done": True}
    assert 0.1 < waited < 0.5


async def test_dedup_copies_are_streamed_with_their_original() -> None:
    async with served() as (_server, batcher):
        table = StreamTable()
        prompts = ["same", "other", "same", "same"]
        items = await drain(table, table.open(4, batch(batcher, new_session(), prompts)))

    assert sorted(i for i, _ in items) == [0, 1, 2, 3]
    assert {i: item["text"] for i, item in items} == {
        i: f"echo: {p}" for i, p in enumerate(prompts)
    }


async def test_close_cancels_the_batch_at_once_without_failures_or_retries() -> None:
    async with served() as (server, batcher):
        events: list[dict[str, Any]] = []
        session = new_session(events)
        table = StreamTable()
        prompts = [f"chunk {i} [[sleep:2]]" for i in range(200)]
        prompts[23] = "chunk 23 has the needle [[sleep:0.05]]"
        stream = table.open(len(prompts), batch(batcher, session, prompts, 50))
        first = await table.next(stream)
        # The needle's worker has taken up the next prompt: 50 in flight again.
        await wait_until(lambda: server.stats.in_flight == 50)
        started = time.monotonic()
        await table.close(stream)
        closing = time.monotonic() - started
        # The batch has let go of its slots by the time close returns.
        stats = batcher.stats()
        await wait_until(lambda: server.stats.in_flight == 0)

    assert first == {"items": [[23, {"text": f"echo: {prompts[23]}"}]], "done": False}
    # The close returned once the batch had let go, well before any 2 s answer.
    # A liveness bound (the hung calls would wait for ever), not a speed claim.
    assert closing < 10, closing
    assert stats.in_flight == 0 and stats.waiting == 0
    assert server.stats.completed == 1
    assert server.stats.disconnects == 50, "every request in flight was dropped"
    assert server.stats.requests == 51, "queued prompts never reached the server"
    end = next(e for e in events if e["event"] == "batch_end")
    assert end["cancelled"] is True
    assert (end["done"], end["failures"], end["retries"]) == (1, 0, 0)
    usage = session.usage.model(SUB)
    assert (usage.calls, usage.failures, usage.retries, session.usage.sub_calls) == (1, 0, 0, 1)
    assert end["prompt_tokens"] == usage.prompt_tokens > 0
    assert len(table) == 0
    with pytest.raises(BridgeRefusal):
        await table.next(stream)
    await table.close(stream)  # twice: harmless


async def test_a_close_that_is_itself_cancelled_still_waits_for_the_batch() -> None:
    async with served() as (server, batcher):
        table = StreamTable()
        stream = table.open(
            10, batch(batcher, new_session(), [f"h{i} [[hang]]" for i in range(10)])
        )
        await wait_until(lambda: server.stats.in_flight == 10)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await table.close(stream)
        assert batcher.stats().in_flight == 0
        await wait_until(lambda: server.stats.disconnects == 10)


async def test_a_next_waiting_when_the_stream_closes_ends_it() -> None:
    async with served() as (_server, batcher):
        table = StreamTable()
        stream = table.open(3, batch(batcher, new_session(), ["h [[hang]]"] * 2 + ["x [[hang]]"]))
        waiting = asyncio.create_task(table.next(stream))
        await anyio.sleep(0.1)
        await table.close(stream)
        with anyio.fail_after(1):
            answer = await waiting

    assert answer == {"items": [], "done": True}


@pytest.mark.parametrize(
    "forged", [True, False, "1", -1, 0, 1.0, None, [1], {"stream": 1}, 2**60, 2]
)
async def test_ids_that_are_not_an_open_stream_are_refused(forged: object) -> None:
    async with served() as (_server, batcher):
        table = StreamTable()
        stream = table.open(1, batch(batcher, new_session(), ["real"]))
        assert stream == 1
        with pytest.raises(BridgeRefusal, match="no such open stream"):
            await table.next(forged)
        await table.close(forged)  # harmless, and the real stream is untouched
        assert await drain(table, stream) == [[0, {"text": "echo: real"}]]


async def test_a_stream_of_another_table_cannot_be_named() -> None:
    async with served() as (_server, batcher):
        mine, theirs = StreamTable(), StreamTable()
        stream = theirs.open(1, batch(batcher, new_session(), ["private"]))
        with pytest.raises(BridgeRefusal):
            await mine.next(stream)
        await mine.close(stream)
        assert await drain(theirs, stream) == [[0, {"text": "echo: private"}]]


async def test_a_failing_producer_ends_the_stream_with_errors_that_hide_the_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def produce(on_result: Callable[[int, SubResult], None]) -> None:
        on_result(2, SubResult(text="two"))
        on_result(0, SubResult(error="provider said no", kind="server"))
        await anyio.sleep(0.01)
        raise RuntimeError("secret detail /etc/host-path")

    table = StreamTable()
    items = await drain(table, table.open(4, produce))

    assert items[:2] == [[2, {"text": "two"}], [0, {"error": "provider said no", "kind": "server"}]]
    assert sorted(i for i, _ in items[2:]) == [1, 3]
    for _, item in items[2:]:
        assert item["kind"] == "error" and "internal error" in item["error"]
        assert "secret" not in item["error"] and "RuntimeError" not in item["error"]
    assert "secret detail" in caplog.text, "the cause is logged on the host"
    assert len(table) == 0


async def test_a_producer_that_only_returns_its_results_still_answers_every_index() -> None:
    async def produce(on_result: Callable[[int, SubResult], None]) -> list[SubResult]:
        on_result(1, SubResult(text="b"))
        on_result(1, SubResult(text="b again"))  # a second answer for an index is dropped
        return [SubResult(text="a"), SubResult(text="b"), SubResult(error="no", kind="timeout")]

    async def forgetful(on_result: Callable[[int, SubResult], None]) -> None:
        on_result(0, SubResult(text="only"))

    table = StreamTable()
    items = await drain(table, table.open(3, produce))
    assert items == [
        [1, {"text": "b"}],
        [0, {"text": "a"}],
        [2, {"error": "no", "kind": "timeout"}],
    ]
    items = await drain(table, table.open(2, forgetful))
    assert items[0] == [0, {"text": "only"}] and items[1][0] == 1
    assert items[1][1]["kind"] == "error"


async def test_close_all_cancels_every_stream() -> None:
    async with served() as (server, batcher):
        session = new_session()
        table = StreamTable()
        streams = [
            table.open(20, batch(batcher, session, [f"s{s} p{i} [[hang]]" for i in range(20)], 5))
            for s in range(3)
        ]
        done = table.open(1, batch(batcher, session, ["finished"]))
        await wait_until(lambda: server.stats.in_flight == 15 and server.stats.completed == 1)
        started = time.monotonic()
        await table.close_all()
        closing = time.monotonic() - started
        await wait_until(lambda: server.stats.disconnects == 15)
        await table.close_all()  # again: nothing left

    assert closing < 0.5, closing
    assert len(table) == 0 and server.stats.requests == 16
    for stream in [*streams, done]:
        with pytest.raises(BridgeRefusal):
            await table.next(stream)
    assert session.usage.model(SUB).failures == 0 and session.usage.sub_calls == 1


async def test_at_most_max_open_streams_at_once() -> None:
    async with served() as (_server, batcher):
        session = new_session()
        table = StreamTable(max_open=2)
        first = table.open(1, batch(batcher, session, ["a [[hang]]"]))
        second = table.open(1, batch(batcher, session, ["b"]))
        with pytest.raises(BridgeRefusal, match="limit is 2"):
            table.check_room()
        with pytest.raises(BridgeRefusal, match="limit is 2"):
            table.open(1, batch(batcher, session, ["c"]))
        await table.close(first)
        third = table.open(1, batch(batcher, session, ["c"]))
        # A stream read to the end frees its place too.
        assert await drain(table, second) == [[0, {"text": "echo: b"}]]
        fourth = table.open(1, batch(batcher, session, ["d"]))
        assert len(table) == 2
        assert await drain(table, third) == [[0, {"text": "echo: c"}]]
        assert await drain(table, fourth) == [[0, {"text": "echo: d"}]]


async def test_answers_are_not_kept_once_taken() -> None:
    async with served() as (_server, batcher):
        table = StreamTable()
        prompts = [f"p {i}" for i in range(300)] + ["last [[sleep:0.3]]"]
        stream = table.open(len(prompts), batch(batcher, new_session(), prompts, 50))
        await wait_until(lambda: table._streams[stream].items.__len__() == 300)
        taken = await table.next(stream)
        assert len(taken["items"]) == 300 and not taken["done"]
        assert table._streams[stream].items == []
        assert await table.next(stream) == {
            "items": [[300, {"text": "echo: last [[sleep:0.3]]"}]],
            "done": True,
        }


async def test_close_all_also_ends_a_batch_still_wrapping_up_after_its_last_answer() -> None:
    ended: list[str] = []

    async def produce(on_result: Callable[[int, SubResult], None]) -> None:
        on_result(0, SubResult(text="all there is"))
        try:
            await anyio.sleep(30)  # e.g. a child run closing its sandbox
        finally:
            ended.append("cleaned up")

    table = StreamTable()
    assert await drain(table, table.open(1, produce)) == [[0, {"text": "all there is"}]]
    assert len(table) == 0 and ended == []
    with anyio.fail_after(1):
        await table.close_all()
    assert ended == ["cleaned up"]
