"""An HTTP transport that splits its connection pool into shards.

httpcore's pool walks all its connections (with a socket check on each idle one)
every time a request is assigned and every time a response is closed. With a
hundred or more connections open, as a wide ``llm_batch`` needs, that walk is most
of the client's CPU per request (measured in bench/bench_batcher.py: about 3 ms a
request at 100 in flight with one pool, 1.8 ms with 32 shards). Here each request
goes to the shard with the fewest requests in flight, so each pool stays small.

The shards are ordinary ``httpx2.AsyncHTTPTransport`` pools: timeouts, keep-alive,
cancellation (a cancelled request drops its connection) work as usual.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2


class _Tracked(httpx2.AsyncByteStream):
    """A response body that tells its shard when it is closed."""

    def __init__(self, inner: httpx2.AsyncByteStream, owner: ShardedTransport, shard: int):
        self._inner = inner
        self._owner = owner
        self._shard = shard
        self._open = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if self._open:
                self._open = False
                self._owner.active[self._shard] -= 1


class ShardedTransport(httpx2.AsyncBaseTransport):
    """``shards`` connection pools sharing ``max_connections`` between them."""

    def __init__(
        self,
        *,
        shards: int = 32,
        max_connections: int = 1000,
        keepalive_expiry: float = 5.0,
    ) -> None:
        if shards < 1 or max_connections < shards:
            raise ValueError("need 1 <= shards <= max_connections")
        per_shard = -(-max_connections // shards)
        limits = httpx2.Limits(
            max_connections=per_shard,
            max_keepalive_connections=per_shard,
            keepalive_expiry=keepalive_expiry,
        )
        self._shards = [httpx2.AsyncHTTPTransport(limits=limits) for _ in range(shards)]
        #: Requests in flight per shard (sent, and response not yet closed).
        self.active = [0] * shards

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        active = self.active
        # The least busy shard; ties go to the lowest, so calls made one at a time
        # keep reusing one warm connection.
        shard = active.index(min(active))
        active[shard] += 1
        try:
            response = await self._shards[shard].handle_async_request(request)
        except BaseException:
            active[shard] -= 1
            raise
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        response.stream = _Tracked(response.stream, self, shard)
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


def sharded_http_client(**options: object) -> httpx2.AsyncClient:
    """The openai SDK's default async HTTP client, over a :class:`ShardedTransport`."""
    import openai

    return openai.DefaultAsyncHttpxClient(transport=ShardedTransport(**options))  # type: ignore[arg-type]
