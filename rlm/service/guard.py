"""Guards in front of the app: failed bearer tokens are rate limited per client, and
a request body that does not arrive in time is refused.

**Failed tokens.** Every response 401 to a request that carried an
``Authorization`` header is a failed guess, counted against the client's address.
Once an address has ``auth_failures_per_minute`` failures within the last 60 s, every
request from it that carries an ``Authorization`` header gets 429 with Retry-After,
*a correct token included*, until its oldest failure in the window is 60 s old: were
a correct token still let through, the 429 would tell a guesser which guess was
right and the limit would slow nothing. The address is the direct peer's
(``scope["client"]``); only when that peer is ``trusted_proxy`` is the last
``X-Forwarded-For`` entry (the one that proxy appended) taken instead. Requests
without the header (``/healthz``) are never refused. The memory is bounded: at most
:data:`MAX_ADDRESSES` addresses are remembered, the least recently failed forgotten
first, and each keeps at most ``auth_failures_per_minute`` timestamps.

**Slow bodies.** Each chunk of a request's body must arrive within ``body_timeout_s``
of the previous one (and the whole body within four times that), else the request
gets 408 and the connection is closed: a client that dribbles a body cannot hold a
slot of the server. Slow headers are uvicorn's: h11 refuses headers over 64 KiB, and
an idle connection is closed after ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Addresses whose failures are remembered at once; the least recent go first.
MAX_ADDRESSES = 10_000
WINDOW_S = 60.0


class FailureLimiter:
    """Failed attempts per address within a sliding 60 s window, bounded in memory."""

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        size: int = MAX_ADDRESSES,
    ) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._size = size
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        times = self._failures.get(address)
        if times is None or len(times) < self.per_minute:
            return None
        wait = times[0] + WINDOW_S - self._clock()
        if wait <= 0:
            return None
        return max(1, math.ceil(wait))

    def failed(self, address: str) -> None:
        times = self._failures.pop(address, None)
        if times is None:
            times = deque(maxlen=self.per_minute)
        times.append(self._clock())
        self._failures[address] = times
        while len(self._failures) > self._size:
            self._failures.popitem(last=False)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def client_address(scope: Scope, trusted_proxy: str | None) -> str:
    """The direct peer's address; behind ``trusted_proxy``, the last X-Forwarded-For entry."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    if trusted_proxy is not None and peer == trusted_proxy:
        forwarded = _header(scope, b"x-forwarded-for")
        if forwarded:
            last = forwarded.decode("latin-1").split(",")[-1].strip()
            if last:
                return last
    return peer


async def _error(send: Send, status: int, message: str, code: str, headers: list[Any]) -> None:
    body = json.dumps(
        {"error": {"message": message, "type": "rate_limit_error", "param": None, "code": code}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: the failed-token limit and the body deadline around ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        auth_failures_per_minute: int | None,
        trusted_proxy: str | None,
        body_timeout_s: float,
    ) -> None:
        self.app = app
        self.limiter = (
            None if auth_failures_per_minute is None else FailureLimiter(auth_failures_per_minute)
        )
        self.trusted_proxy = trusted_proxy
        self.body_timeout_s = body_timeout_s

    def __getattr__(self, name: str) -> Any:
        # ``state`` and the like are the app's.
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limiter = self.limiter
        address = client_address(scope, self.trusted_proxy)
        guessing = limiter is not None and _header(scope, b"authorization") is not None
        if limiter is not None and guessing:
            wait = limiter.retry_after(address)
            if wait is not None:
                await _error(
                    send,
                    429,
                    f"too many failed bearer tokens from this address; retry in {wait} s",
                    "too_many_auth_failures",
                    [(b"retry-after", str(wait).encode())],
                )
                return
        started = False
        timed_out = False
        body_done = False
        deadline = time.monotonic() + 4 * self.body_timeout_s

        async def timed_receive() -> Message:
            nonlocal timed_out, body_done, started
            if body_done or started or timed_out:
                # Past the body (a stream watching for the client to go): no deadline.
                return await receive() if not timed_out else {"type": "http.disconnect"}
            timeout = min(self.body_timeout_s, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), max(timeout, 0.001))
            except TimeoutError:
                timed_out = started = True
                await _error(
                    send,
                    408,
                    f"the request body did not arrive within {self.body_timeout_s:g} s",
                    "request_timeout",
                    [(b"connection", b"close")],
                )
                # The app sees the client gone; whatever it answers is dropped.
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if timed_out:
                return
            if message["type"] == "http.response.start":
                started = True
                if limiter is not None and guessing and message["status"] == 401:
                    limiter.failed(address)
            await send(message)

        try:
            await self.app(scope, timed_receive, watched_send)
        except Exception:
            if not timed_out:
                raise


class HeadDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's head: from the
    connection (or the previous response) to the end of the headers at most
    :attr:`head_timeout_s`, else the connection is closed. uvicorn alone keeps a
    connection whose headers arrive a byte at a time open for ever."""

    head_timeout_s = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._seen: object = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _check(self) -> bool:
        if self.cycle is not None and self.cycle is not self._seen:
            self._seen = self.cycle
            self._disarm()
            return True
        return False

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._check()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._check() and not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def head_deadline_protocol(seconds: float) -> type[HeadDeadlineH11]:
    """:class:`HeadDeadlineH11` with its deadline set to ``seconds``."""
    return type("HeadDeadline", (HeadDeadlineH11,), {"head_timeout_s": seconds})
