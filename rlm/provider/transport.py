"""The HTTP connection pool that completions go over: aiohttp, one pool per event loop.

A wide ``llm_batch`` is a burst of requests sent at once, and the client's CPU per
request sets how far apart they leave: at c = 100, every 0.1 ms a request costs
adds about 5% to the batch's wall time (the last request leaves 100 × that after
the first). bench/bench_batcher.py prints it side by side at N = c = 100: the
openai SDK's own ``chat.completions.create`` costs about 2.3 ms of CPU a request
(ratio to the ideal 2.11), and a completion posted here 0.13 ms (1.07). The SDK's
share is the building of each request (options, models, URL parsing, header
merging) before a byte is sent.

So plain completions are posted here, with the SDK's own default and auth headers
(taken from the SDK client once), and the SDK keeps what it is needed for:
streaming. This module only moves bytes; :mod:`rlm.provider.client` gives them OpenAI's
meaning.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Literal

import aiohttp


class TransportError(Exception):
    """A request that got no HTTP answer: ``kind`` is ``"timeout"`` or ``"connection"``."""

    def __init__(self, message: str, *, kind: Literal["timeout", "connection"]) -> None:
        super().__init__(message)
        self.kind = kind


def environment_proxy(url: str) -> str | None:
    """The proxy that ``HTTPS_PROXY``/``HTTP_PROXY`` and ``NO_PROXY`` name for ``url``.

    Read once per pool rather than per request: aiohttp's ``trust_env`` looks the
    environment up in a worker thread for every request, which more than doubled
    the client's CPU per request in bench/bench_batcher.py.
    """
    parts = urllib.parse.urlsplit(url)
    # In urllib.request since Python 3 (it backs proxy_bypass on every platform) but
    # missing from typeshed.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


async def _closed_with_its_loop(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    """Close ``session`` when its event loop shuts down, if nobody did before.

    Started once in the loop, this generator is left suspended; ``asyncio.run`` (and
    ``anyio.run``) finalize such generators inside the loop before closing it
    (``loop.shutdown_asyncgens``), which runs the ``finally`` while the session's
    connections can still be closed. Without it, a client shared across
    ``RLM.completion()`` calls would leave each loop's connections to the garbage
    collector, with aiohttp's "Unclosed client session" errors.
    """
    try:
        yield
    finally:
        await session.close()


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer, whatever its status."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class HTTPPool:
    """Keep-alive connections for JSON POSTs, many at once.

    The pool is opened in the event loop that first uses it and belongs to that
    loop (aiohttp's connections are bound to one); its connections are closed when
    that loop shuts down. After that, as after each ``RLM.completion()``, the next
    use opens a fresh pool in the new loop; using it from two live loops at once is
    refused with a clear error.

    A request that is cancelled while in flight closes its connection, so the server
    sees the client go away (the batcher relies on this to stop paid work).

    Idle connections are kept ``keepalive_expiry`` seconds: long enough to outlast a
    root model's turn between two ``llm_batch`` calls. Opening 100 connections
    again cost a batch about 0.1 s here (bench/bench_batcher.py, "new
    connections"); a server that closes them sooner is noticed when it does.
    """

    def __init__(
        self,
        *,
        headers: Mapping[str, str],
        proxy: str | None = None,
        max_connections: int = 1000,
        keepalive_expiry: float = 30.0,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._headers = dict(headers)
        self._proxy = proxy
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closer: AsyncGenerator[None, None] | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._closed = False
        #: Requests sent whose answer has not been read yet.
        self.in_flight = 0

    async def _open(self) -> aiohttp.ClientSession:
        """The running loop's session, opened on its first request."""
        if self._closed:
            raise RuntimeError("this HTTP pool is closed")
        loop = asyncio.get_running_loop()
        if self._session is not None and self._loop is loop:
            return self._session
        if self._loop is not None and not self._loop.is_closed() and self._loop is not loop:
            raise RuntimeError(
                "this model client is in use by another running event loop; "
                "make one ModelClient (and Batcher) per event loop"
            )
        # A pool from a loop that has ended was closed with it (see above).
        self._session = session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self._max_connections,
                keepalive_timeout=self._keepalive_expiry,
            ),
            headers=self._headers,
            proxy=self._proxy,
        )
        self._loop = loop
        self._closer = _closed_with_its_loop(session)
        await self._closer.asend(None)
        return session

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            timeout = self._timeouts[seconds] = aiohttp.ClientTimeout(total=seconds)
        return timeout

    async def post(self, url: str, body: bytes, *, timeout: float) -> Reply:
        """POST ``body`` (JSON) to ``url``; the reply is read whole within ``timeout``."""
        session = await self._open()
        self.in_flight += 1
        try:
            # No redirects, as with the SDK: a provider that redirects is misconfigured,
            # and a redirect must not carry the key elsewhere.
            async with session.post(
                url, data=body, timeout=self._timeout(timeout), allow_redirects=False
            ) as response:
                return Reply(response.status, response.headers, await response.read())
        except TimeoutError:
            raise TransportError(f"no answer within {timeout:g} s", kind="timeout") from None
        except aiohttp.ClientError as exc:
            # str() only: the repr of some aiohttp errors carries the request's
            # headers, and with them the API key.
            raise TransportError(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                kind="connection",
            ) from None
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        """Close the connections; the pool cannot be used again."""
        self._closed = True
        closer, self._closer, self._session = self._closer, None, None
        if closer is not None and self._loop is asyncio.get_running_loop():
            await closer.aclose()
