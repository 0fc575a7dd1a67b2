"""Messages from a runner, on the host: bytes in, validated messages out.

The Docker channel (an attach socket) and the restricted worker's pipes carry the
same protocol from an untrusted runner; each reads its own transport and feeds
what arrives to an :class:`Inbox`, which frames, decodes and validates it (see
:mod:`rlm_sandbox.protocol`) the same way for both.
"""

from __future__ import annotations

import gc
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
from rlm_sandbox import protocol

from rlm.errors import ProtocolError

#: JSON values one message from a runner may hold: decoded, each costs the host
#: about 50 bytes however small its text (8 million empty lists in 32 MB took 800 MB
#: and, on the event loop, 10-17 s), while a batch of 10,000 prompts or a context of
#: a million lines is below it.
MAX_VALUES = 2_000_000
#: Messages this large (JSON and blobs) are decoded in a worker thread, not on the loop.
PARSE_ON_LOOP = 1 << 20

#: The head of a call frame as the runner writes it: its type, then its id.
_CALL_HEAD = re.compile(rb'\{"type":"call","id":(0|[1-9]\d{0,15}),')


def too_many(max_values: int) -> str:
    """What a runner is told when a call holds more than ``max_values`` JSON values."""
    return (
        f"this request holds more than {max_values:,} JSON values, over what one request "
        "may hold; send fewer, larger items (join small strings, or give each call a slice)"
    )


class Inbox:
    """Whole messages from one runner, in order; nothing is acted on unvalidated.

    ``fill`` reads the transport once or more and :meth:`feed`\\ s what came;
    ``refuse(call_id, why)`` answers a call too big to decode (more than
    ``max_values`` JSON values), and the next message is read: the session goes on.
    A call whose id could not be answered ends it instead.
    """

    def __init__(
        self,
        fill: Callable[[], Awaitable[None]],
        refuse: Callable[[int, str], Awaitable[None]],
        *,
        max_message: int = protocol.DEFAULT_MAX_MESSAGE,
        max_values: int = MAX_VALUES,
    ) -> None:
        self._fill = fill
        self._refuse = refuse
        self._decoder = protocol.Decoder(max_message=max_message)
        self._ready: list[bytes] = []
        self.max_values = max_values

    @property
    def empty(self) -> bool:
        """No whole message is waiting."""
        return not self._ready

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes read from the transport."""
        try:
            self._ready.extend(self._decoder.feed(data))
        except protocol.ProtocolViolation as exc:
            raise ProtocolError(str(exc)) from None

    async def receive(self) -> dict[str, Any]:
        """The next message; cancelling it loses nothing already received."""
        while True:
            while not self._ready:
                await self._fill()
            payload = self._ready[0]
            try:
                if _size(payload) < PARSE_ON_LOOP:
                    message = self._parse(payload)
                else:
                    # Decoding a large message takes seconds of CPU: off the event
                    # loop, so other sessions go on. Cancelled, it is read again.
                    message = await anyio.to_thread.run_sync(self._parse_large, payload)
            except protocol.TooManyValues as exc:
                call = _CALL_HEAD.match(payload[:64])
                # The runner frames a call with its type and id first, so the id is
                # read without decoding the rest; an id past MAX_ID cannot be
                # answered (the runner refuses such a reply): the session ends.
                if call is None or int(call.group(1)) > protocol.MAX_ID:
                    raise ProtocolError(str(exc)) from None
                self._ready.pop(0)
                await self._refuse(int(call.group(1)), too_many(self.max_values))
                continue
            except protocol.ProtocolViolation as exc:
                raise ProtocolError(str(exc)) from None
            self._ready.pop(0)
            return message

    def _parse(self, payload: bytes) -> dict[str, Any]:
        return protocol.parse(payload, protocol.FROM_SANDBOX, max_values=self.max_values)

    def _parse_large(self, payload: bytes) -> dict[str, Any]:
        """:meth:`_parse` with the cyclic collector paused: decoding a million small
        containers otherwise sets off collections over the whole heap, which took
        json.loads from 0.1 s to seconds (it holds the interpreter lock throughout)."""
        global _gc_pauses
        with _gc_lock:
            _gc_pauses += 1
            gc.disable()
        try:
            return self._parse(payload)
        finally:
            with _gc_lock:
                _gc_pauses -= 1
                if _gc_pauses == 0:
                    gc.enable()


_gc_lock = threading.Lock()
_gc_pauses = 0


def _size(payload: bytes) -> int:
    return len(payload) + sum(len(b) for b in getattr(payload, "blobs", ()))
