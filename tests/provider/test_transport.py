"""The HTTP pool under the model client, over real HTTP to the offline server."""

from __future__ import annotations

import asyncio
import gc
import threading
import warnings

import anyio
import pytest

from rlm.provider.client import ModelClient
from rlm.provider.transport import HTTPPool
from rlm.testing import OfflineModelServer


def ask(i: int | str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"q{i}"}]


async def test_a_wide_burst_is_not_capped_by_the_pool() -> None:
    # aiohttp's own default is 100 connections; a batch of 150 must not queue behind it.
    # A second at the server, so all 150 arrive before the first answers, however
    # slowly a loaded machine opens the connections.
    with OfflineModelServer(latency=1.0) as server:
        client = ModelClient(api_key="test", base_url=server.base_url)
        try:
            async with anyio.create_task_group() as tg:
                for i in range(150):
                    tg.start_soon(client.chat, "sub", ask(i))
            assert client._http.in_flight == 0
        finally:
            await client.aclose()
    assert server.stats.completed == 150
    assert server.stats.max_in_flight == 150


async def test_calls_one_at_a_time_reuse_one_connection() -> None:
    with OfflineModelServer() as server:
        client = ModelClient(api_key="test", base_url=server.base_url)
        try:
            for i in range(5):
                assert (await client.chat("sub", ask(i))).text == f"echo: q{i}"
        finally:
            await client.aclose()
    assert server.stats.completed == 5
    assert len(server.stats.connections) == 1


async def test_completions_carry_the_sdk_headers_and_key() -> None:
    with OfflineModelServer(api_key="sk-right") as server:
        right = ModelClient(api_key="sk-right", base_url=server.base_url)
        wrong = ModelClient(api_key="sk-wrong", base_url=server.base_url)
        try:
            assert (await right.chat("sub", ask(1))).text == "echo: q1"
            streamed = [p async for p in right.chat_stream("sub", ask(2))]
            assert streamed[-1].text == "echo: q2"  # type: ignore[union-attr]
            with pytest.raises(Exception, match="OPENAI_API_KEY"):
                await wrong.chat("sub", ask(3))
        finally:
            await right.aclose()
            await wrong.aclose()
    # The plain and the streamed completion both say they come from the SDK.
    [(agent, count)] = server.stats.user_agents.items()
    assert agent.startswith("AsyncOpenAI/Python") and count == 3


async def test_a_cancelled_request_drops_its_connection() -> None:
    with OfflineModelServer() as server:
        client = ModelClient(api_key="test", base_url=server.base_url)
        try:
            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(client.chat, "sub", ask(f"{i} [[hang]]"))
                # Cancel only once all four hang at the server, however loaded the machine.
                with anyio.fail_after(10):
                    while server.stats.in_flight < 4:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
            assert client._http.in_flight == 0
            with anyio.fail_after(10):
                while server.stats.disconnects < 4:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            # The pool is still good for the next call, on a new connection.
            assert (await client.chat("sub", ask("after"))).text == "echo: qafter"
        finally:
            await client.aclose()


def test_a_client_outlives_its_event_loop() -> None:
    # RLM.completion() runs a loop per call; a shared client must work in the next
    # one, and each loop's connections are closed with it, not left to the GC.
    with OfflineModelServer() as server, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        client = ModelClient(api_key="test", base_url=server.base_url)
        assert asyncio.run(client.chat("sub", ask(1))).text == "echo: q1"
        assert asyncio.run(client.chat("sub", ask(2))).text == "echo: q2"
        gc.collect()
        asyncio.run(client.aclose())
        gc.collect()
    assert server.stats.completed == 2
    assert len(server.stats.connections) == 2
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []


def test_two_live_loops_cannot_share_a_client() -> None:
    with OfflineModelServer() as server:
        client = ModelClient(api_key="test", base_url=server.base_url)
        other = asyncio.new_event_loop()
        thread = threading.Thread(target=other.run_forever, daemon=True)
        thread.start()
        try:
            first = asyncio.run_coroutine_threadsafe(client.chat("sub", ask(1)), other)
            assert first.result(10).text == "echo: q1"
            with pytest.raises(RuntimeError, match="one ModelClient"):
                asyncio.run(client.chat("sub", ask(2)))
            asyncio.run_coroutine_threadsafe(client.aclose(), other).result(10)
        finally:
            other.call_soon_threadsafe(other.stop)
            thread.join(10)
            other.close()


async def test_a_closed_pool_refuses_new_requests() -> None:
    pool = HTTPPool(headers={})
    await pool.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await pool.post("http://127.0.0.1:9/", b"{}", timeout=1)
    with pytest.raises(ValueError):
        HTTPPool(headers={}, max_connections=0)
