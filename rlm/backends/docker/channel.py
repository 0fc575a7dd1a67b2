"""Framing over one Docker attach socket: demultiplex, decode, validate.

Everything the container sends is untrusted: each frame is size-checked and each
message validated (:mod:`rlm_sandbox.protocol`) before anyone acts on it.
"""

from __future__ import annotations

import socket
import ssl
import struct
from typing import Any

import anyio
from rlm_sandbox import protocol

from rlm.backends.docker.engine import engine_address
from rlm.errors import ProtocolError, SandboxUnavailable

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
        self._raw = bytearray()
        self._decoder = protocol.Decoder(max_message=max_message)
        self._ready: list[bytes] = []
        self.stderr = bytearray()
        self._send_lock = anyio.Lock()
        self.closed = False

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message whole; never leaves half a frame on the wire."""
        if self.closed:
            raise ContainerGone("the channel is closed")
        async with self._send_lock:
            try:
                with anyio.CancelScope(shield=True), anyio.fail_after(_SEND_TIMEOUT):
                    for chunk in protocol.encode(message):
                        view = memoryview(chunk)
                        while view:
                            try:
                                view = view[self.sock.send(view) :]
                            except (BlockingIOError, ssl.SSLWantWriteError):
                                await anyio.wait_writable(self.sock)
            except TimeoutError:
                self.closed = True  # half a frame may be on the wire
                raise ContainerGone(f"the sandbox read nothing for {_SEND_TIMEOUT:g} s") from None
            except OSError as exc:
                self.closed = True
                raise ContainerGone(f"send failed: {exc}") from None

    async def receive(self) -> dict[str, Any]:
        """The next message; cancelling it loses nothing already received."""
        while not self._ready:
            try:
                data = self.sock.recv(1 << 20)
            except (BlockingIOError, ssl.SSLWantReadError):
                await anyio.wait_readable(self.sock)
                continue
            except OSError as exc:
                raise ContainerGone(f"receive failed: {exc}") from None
            if not data:
                raise ContainerGone("the container closed its output")
            self._demux(data)
        try:
            return protocol.parse(self._ready.pop(0), protocol.FROM_SANDBOX)
        except protocol.ProtocolViolation as exc:
            raise ProtocolError(str(exc)) from None

    def _demux(self, data: bytes) -> None:
        # Docker multiplexes stdout and stderr: 8-byte header (stream, size) per chunk.
        self._raw += data
        pos = 0
        raw = self._raw
        try:
            while len(raw) - pos >= _STREAM_HEADER.size:
                stream, size = _STREAM_HEADER.unpack_from(raw, pos)
                if len(raw) - pos - _STREAM_HEADER.size < size:
                    break
                start = pos + _STREAM_HEADER.size
                chunk = bytes(raw[start : start + size])
                pos = start + size
                if stream == 1:
                    try:
                        self._ready.extend(self._decoder.feed(chunk))
                    except protocol.ProtocolViolation as exc:
                        raise ProtocolError(str(exc)) from None
                elif stream == 2:
                    self.stderr += chunk
                    del self.stderr[:-_STDERR_KEEP]
        finally:
            del raw[:pos]

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
