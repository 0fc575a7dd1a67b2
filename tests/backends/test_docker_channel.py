"""The host's end of a container's attach socket, over a socket pair standing in
for the engine's stream (Docker's stdout/stderr multiplexing included)."""

from __future__ import annotations

import socket
import struct
import threading

import anyio
from rlm_sandbox import protocol as P

from rlm.backends.docker.channel import Channel


def multiplexed(message: dict[str, object]) -> bytes:
    """``message``'s frames as the engine sends a container's stdout."""
    data = P.encode_bytes(message)
    return struct.pack(">BxxxL", 1, len(data)) + data


def test_the_read_buffer_starts_small_and_grows_for_bulk_data() -> None:
    ours, engine = socket.socketpair()
    channel = Channel(ours)
    prompt = "x" * 3_000_000
    small = {"type": "loaded", "id": 1}
    big = {"type": "call", "id": 2, "method": "llm_query", "params": {"prompt": prompt}}
    engine.sendall(multiplexed(small))
    sender = threading.Thread(target=engine.sendall, args=(multiplexed(big) + multiplexed(small),))

    async def main() -> None:
        assert await channel.receive() == small
        # A live sandbox that only ever sees small frames holds 64 KiB, not 1 MiB.
        assert len(channel._inbox) == 1 << 16
        sender.start()
        assert await channel.receive() == big
        assert len(channel._inbox) == 1 << 20
        assert await channel.receive() == small

    try:
        anyio.run(main)
    finally:
        channel.close()  # first: a sender still writing then fails instead of waiting
        if sender.is_alive():
            sender.join()
        engine.close()
