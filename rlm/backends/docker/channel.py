"""Framing over one Docker attach socket: demultiplex, decode, validate.

Everything the container sends is untrusted: each frame is size-checked and each
message validated (:mod:`rlm_sandbox.protocol`) before anyone acts on it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections.abc import Iterator
from typing import Any

import anyio
from rlm_sandbox import protocol

from rlm.backends.docker.engine import engine_address
from rlm.backends.inbox import MAX_VALUES, Inbox
from rlm.errors import SandboxUnavailable

_STREAM_HEADER = struct.Struct(">BxxxL")
_STDERR_KEEP = 4096
_SEND_TIMEOUT = 60.0


class ContainerGone(Exception):
    """The container's end of the channel closed (the container died)."""


class Channel:
    """Frames over one Docker attach socket: demultiplex, decode, validate."""

    def __init__(self, sock: Any, *, max_message: int = protocol.DEFAULT_MAX_MESSAGE) -> None:
        self._keep = sock  # the SocketIO/response keep the connection alive
        raw = getattr(sock, "_sock", sock)
        if not isinstance(raw, socket.socket):
            raise SandboxUnavailable(
                f"this Docker connection ({engine_address()}) gives no raw socket for attach; "
                "use a unix:// or tcp:// DOCKER_HOST"
            )
        self.sock: socket.socket = raw
        self.sock.setblocking(False)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            # Fewer wake-ups per MB of a context or a batch's prompts.
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        # Small until bulk data arrives: a live sandbox's buffer is host memory held
        # for as long as it lives, and most only ever see small frames.
        self._inbox = bytearray(_FIRST_READ_SIZE)
        # Docker's multiplexing: the header being read, then the rest of its chunk.
        self._head = bytearray()
        self._stream = 0
        self._left = 0
        self._messages = Inbox(
            self._fill, self._refuse, max_message=max_message, max_values=MAX_VALUES
        )
        self.stderr = bytearray()
        # fast_acquire: an uncontended send takes the lock without a trip round the
        # event loop (a sub-call's reply paid one per call).
        self._send_lock = anyio.Lock(fast_acquire=True)
        self.closed = False

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message whole; never leaves half a frame on the wire."""
        if self.closed:
            raise ContainerGone("the channel is closed")
        async with self._send_lock:
            try:
                # raw_control=False: never the attach detach keys unescaped.
                frames = protocol.encode(message, raw_control=False)
                rest = self._send_now(frames)
                if rest is None:
                    return
                # The socket is full: wait for room, neither cancelled nor for ever.
                with anyio.CancelScope(shield=True), anyio.fail_after(_SEND_TIMEOUT):
                    view: memoryview | None = rest
                    while view is not None:
                        while view:
                            try:
                                view = view[self.sock.send(view) :]
                            except (BlockingIOError, ssl.SSLWantWriteError):
                                await anyio.wait_writable(self.sock)
                        chunk = next(frames, None)
                        view = None if chunk is None else memoryview(chunk)
            except TimeoutError:
                self.closed = True  # half a frame may be on the wire
                raise ContainerGone(f"the sandbox read nothing for {_SEND_TIMEOUT:g} s") from None
            except OSError as exc:
                self.closed = True
                raise ContainerGone(f"send failed: {exc}") from None

    def _send_now(self, frames: Iterator[bytes]) -> memoryview | None:
        """Write ``frames`` while the socket takes them; the unsent rest of the
        current chunk (the generator holds the others), or None when all went.

        Most messages (a reply, an execute) fit the socket's buffer whole, and
        then the send never waits and needs no cancel scope or timeout.
        """
        for chunk in frames:
            view = memoryview(chunk)
            while view:
                try:
                    view = view[self.sock.send(view) :]
                except (BlockingIOError, ssl.SSLWantWriteError):
                    return view
        return None

    async def receive(self) -> dict[str, Any]:
        """The next message; cancelling it loses nothing already received.

        A ``call`` too big to decode (more than :data:`MAX_VALUES` JSON values) is
        refused here, to the runner, and the next message read: the session goes on.
        """
        return await self._messages.receive()

    async def _refuse(self, call_id: int, why: str) -> None:
        await self.send({"type": "refused", "id": call_id, "message": why})

    async def _fill(self) -> None:
        """Read from the socket until at least one whole message has arrived."""
        inbox = self._inbox
        while self._messages.empty:
            try:
                # Into one reused buffer: a fresh 1 MiB bytes per read cost page faults.
                size = self.sock.recv_into(inbox)
            except (BlockingIOError, ssl.SSLWantReadError):
                await anyio.wait_readable(self.sock)
                continue
            except OSError as exc:
                raise ContainerGone(f"receive failed: {exc}") from None
            if not size:
                raise ContainerGone("the container closed its output")
            with memoryview(inbox) as view, view[:size] as data:
                self._demux(data)
            if size == len(inbox) and size < _READ_SIZE:
                # A read filled it: bulk data is coming, read it in bigger pieces.
                inbox = self._inbox = bytearray(_READ_SIZE)

    def _demux(self, data: memoryview) -> None:
        # Docker multiplexes stdout and stderr: an 8-byte header (stream, size) per
        # chunk. Each piece goes straight to the decoder, which copies it once, into
        # its message; only a header cut by a read is kept here.
        pos, end = 0, len(data)
        while pos < end:
            if not self._left:
                take = min(_STREAM_HEADER.size - len(self._head), end - pos)
                self._head += data[pos : pos + take]
                pos += take
                if len(self._head) < _STREAM_HEADER.size:
                    return
                self._stream, self._left = _STREAM_HEADER.unpack(self._head)
                self._head.clear()
                continue
            take = min(self._left, end - pos)
            with data[pos : pos + take] as piece:
                if self._stream == 1:
                    self._messages.feed(piece)
                elif self._stream == 2:
                    self.stderr += piece
                    del self.stderr[:-_STDERR_KEEP]
            pos += take
            self._left -= take

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        self.closed = True
        for closer in (self.sock.close, getattr(self._keep, "close", None)):
            try:
                if closer is not None:
                    closer()
            except OSError:
                pass


#: Bytes read from the attach socket at a time: at first, and once a read has filled
#: the buffer (bulk data is coming).
_FIRST_READ_SIZE = 1 << 16
_READ_SIZE = 1 << 20
#: The socket's kernel buffers, each way.
_SOCKET_BUFFER = 4 << 20
