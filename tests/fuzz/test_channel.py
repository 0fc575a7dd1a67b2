"""Fuzzing the host's end of the Docker channel (rlm/backends/docker/channel.py) over a
real socket pair: Docker's stream multiplexing, the frame decoder, the value bound
(``MAX_VALUES``, with ``TooManyValues`` answered to the runner) and validation.

Properties: valid messages come out equal and in order however the engine's chunks
and the stderr stream cut them; anything else ends in ``ProtocolError`` or
``ContainerGone`` (the documented errors: the session ends, the host does not), never
another exception or a hang; stderr is kept bounded; and everything the host writes
back (a call refused for too many values) is itself a valid host message.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rlm_sandbox import protocol as P

from rlm.backends.docker import channel as C
from rlm.errors import ProtocolError
from tests.fuzz.support import examples, hard_timeout, json_equal
from tests.fuzz.test_protocol import any_message


def mux(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


async def exchange(
    wire: bytes, *, limit: int = 50
) -> tuple[list[dict[str, Any]], BaseException | None, bytes, int]:
    """Send ``wire`` to a Channel and close; returns (messages, how it ended, what the
    host wrote back, stderr kept)."""
    host, sandbox = socket.socketpair()
    channel = C.Channel(host)
    got: list[dict[str, Any]] = []
    ended: BaseException | None = None

    def write() -> None:  # from a thread: more than a socket buffer may be on the way
        with contextlib.suppress(OSError):
            sandbox.sendall(wire)
            sandbox.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        with anyio.fail_after(10):
            for _ in range(limit):
                got.append(await channel.receive())
    except (ProtocolError, C.ContainerGone) as exc:
        ended = exc
    finally:
        stderr = len(channel.stderr)
        channel.close()  # a writer still blocked on a full buffer now fails and ends
        writer.join(10)
        sandbox.settimeout(5)
        back = b""
        with contextlib.suppress(OSError):
            while chunk := sandbox.recv(1 << 20):
                back += chunk
        sandbox.close()
    return got, ended, back, stderr


def run(wire: bytes, **kw: Any) -> tuple[list[dict[str, Any]], BaseException | None, bytes, int]:
    with hard_timeout(20):
        return asyncio.run(exchange(wire, **kw))


def host_messages(back: bytes) -> list[dict[str, Any]]:
    """What the host wrote, each checked as a valid host-to-sandbox message."""
    return [P.parse(p, P.FROM_HOST) for p in P.Decoder().feed(back)]


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@given(
    st.lists(any_message("from_sandbox"), min_size=1, max_size=4),
    st.lists(st.integers(0, 1 << 16), max_size=6),
    st.lists(st.binary(max_size=3000), max_size=3),
)
@settings(max_examples=examples(120))
def test_valid_messages_come_through_equal_and_in_order(
    messages: list[dict[str, Any]], cuts: list[int], noise: list[bytes]
) -> None:
    frames = b"".join(P.encode_bytes(m) for m in messages)
    wire = b""
    for i, piece in enumerate(cut(frames, cuts)):
        wire += mux(1, piece)
        if i < len(noise):
            wire += mux(2, noise[i])
    got, ended, back, stderr = run(wire)
    assert isinstance(ended, C.ContainerGone)
    assert len(got) == len(messages)
    for g, m in zip(got, messages, strict=True):
        assert json_equal(g, m)
    assert back == b""
    assert stderr <= 4096


@given(
    st.lists(
        st.one_of(
            st.tuples(st.integers(0, 255), st.binary(max_size=200)).map(lambda t: mux(*t)),
            st.tuples(st.just(1), st.binary(max_size=200)).map(lambda t: mux(*t)),
            any_message("from_sandbox").map(lambda m: mux(1, P.encode_bytes(m))),
            st.binary(max_size=40),
        ),
        max_size=6,
    )
)
@settings(max_examples=examples(250))
def test_any_stream_ends_in_a_documented_error_or_valid_messages(pieces: list[bytes]) -> None:
    got, ended, back, stderr = run(b"".join(pieces))
    assert isinstance(ended, (ProtocolError, C.ContainerGone))
    assert str(ended)
    for message in got:
        assert P.validate(message, P.FROM_SANDBOX) is message
    host_messages(back)
    assert stderr <= 4096


_ids = st.one_of(
    st.integers(0, P.MAX_ID),
    st.integers(P.MAX_ID + 1, 10**16 - 1),
    st.sampled_from([0, P.MAX_ID, P.MAX_ID + 1, 10**16 - 1]),
)


@given(_ids, st.integers(21, 200), st.sampled_from(["[]", "0", '""', "{}"]))
@settings(max_examples=examples(60))
def test_a_call_of_too_many_values_is_refused_with_a_valid_message(
    call_id: int, n: int, item: str
) -> None:
    prompts = ",".join([item] * n)
    text = '{"type":"call","id":%d,"method":"llm_batch","params":{"prompts":[%s]}}'
    payload = (text % (call_id, prompts)).encode()
    frames = P.LAST + b"%08x" % len(payload) + payload
    after = P.encode_bytes({"type": "loaded", "id": 5})
    original = C.MAX_VALUES
    C.MAX_VALUES = 20
    try:
        got, ended, back, _ = run(mux(1, frames) + mux(1, after))
    finally:
        C.MAX_VALUES = original
    sent = host_messages(back)
    if call_id <= P.MAX_ID:
        # Refused to the runner, and the session goes on with the next message.
        assert [(m["type"], m["id"]) for m in sent] == [("refused", call_id)]
        assert "JSON values" in sent[0]["message"]
        assert got == [{"type": "loaded", "id": 5}]
    else:
        assert sent == []
        assert got == []
        assert isinstance(ended, ProtocolError)


def test_a_call_of_too_many_values_with_an_id_out_of_range_ends_the_session() -> None:
    """Found by the fuzzer: the fast path read the call's id with 16 digits and
    answered ids past MAX_ID, a message the runner itself refuses as invalid."""
    prompts = ",".join(["0"] * 30)
    text = '{"type":"call","id":%d,"method":"llm_batch","params":{"prompts":[%s]}}'
    payload = (text % (P.MAX_ID + 1, prompts)).encode()
    original = C.MAX_VALUES
    C.MAX_VALUES = 20
    try:
        got, ended, back, _ = run(mux(1, P.LAST + b"%08x" % len(payload) + payload))
    finally:
        C.MAX_VALUES = original
    assert got == [] and back == b""
    assert isinstance(ended, ProtocolError)
    with pytest.raises(P.ProtocolViolation):
        P.validate({"type": "refused", "id": P.MAX_ID + 1, "message": "x"}, P.FROM_HOST)


@given(st.integers(1, 3), st.integers(0, 1 << 20))
@settings(max_examples=examples(3), deadline=None)
def test_a_message_over_a_mib_is_decoded_off_the_loop_and_comes_through_equal(
    parts: int, at: int
) -> None:
    """Messages of 1 MiB and more are decoded in a worker thread (the cyclic
    collector paused): the same message comes out, and the collector is back on."""
    import gc

    prompts = [f"{i:07d}" * 16 for i in range(parts * (1 << 20) // 100)]
    message = {"type": "call", "id": 9, "method": "llm_batch", "params": {"prompts": prompts}}
    frames = P.encode_bytes(message)
    wire = b"".join(mux(1, piece) for piece in cut(frames, [at, at * 3]))
    got, ended, back, _ = run(wire)
    assert isinstance(ended, C.ContainerGone)
    assert got == [message]
    assert back == b""
    assert gc.isenabled()
