"""The sharded transport over real HTTP: spreading, bookkeeping, cancellation."""

from __future__ import annotations

import anyio
import pytest

from rlm.client import ModelClient
from rlm.testing import OfflineModelServer
from rlm.transport import ShardedTransport


def transport_of(client: ModelClient) -> ShardedTransport:
    transport = client._client._client._transport
    assert isinstance(transport, ShardedTransport)
    return transport


async def test_wide_load_is_spread_and_every_shard_is_released() -> None:
    with OfflineModelServer(latency=0.1) as server:
        client = ModelClient(api_key="test", base_url=server.base_url)
        transport = transport_of(client)
        peak: list[int] = []

        async def one(i: int) -> None:
            result = await client.chat("sub", [{"role": "user", "content": f"q{i}"}])
            assert result.text == f"echo: q{i}"

        async def watch() -> None:
            while server.stats.completed < 64:
                peak.append(max(transport.active))
                await anyio.sleep(0.01)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                for i in range(64):
                    tg.start_soon(one, i)
        finally:
            await client.aclose()
    assert server.stats.max_in_flight == 64
    # 64 requests over 32 shards: two each, not 64 in one pool.
    assert max(peak) == 2
    assert transport.active == [0] * 32


async def test_one_at_a_time_reuses_one_connection() -> None:
    with OfflineModelServer() as server:
        client = ModelClient(api_key="test", base_url=server.base_url)
        try:
            for i in range(5):
                await client.chat("sub", [{"role": "user", "content": f"s{i}"}])
            streamed = [
                p async for p in client.chat_stream("sub", [{"role": "user", "content": "x"}])
            ]
        finally:
            await client.aclose()
    assert streamed[-1].text == "echo: x"  # type: ignore[union-attr]
    assert transport_of(client).active == [0] * 32


async def test_a_cancelled_request_drops_its_connection_and_its_count() -> None:
    with OfflineModelServer() as server:
        client = ModelClient(api_key="test", base_url=server.base_url)
        transport = transport_of(client)
        try:
            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(
                        client.chat, "sub", [{"role": "user", "content": f"{i} [[hang]]"}]
                    )
                # Cancel only once all four hang at the server, however loaded the machine.
                with anyio.fail_after(10):
                    while server.stats.in_flight < 4:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
            assert transport.active == [0] * 32
            with anyio.fail_after(10):
                while server.stats.disconnects < 4:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
        finally:
            await client.aclose()


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError):
        ShardedTransport(shards=0)
    with pytest.raises(ValueError):
        ShardedTransport(shards=8, max_connections=4)
