"""The host's reading of a runner's messages, shared by the Docker channel and the
restricted worker's pipes."""

from __future__ import annotations

import anyio
import pytest
from rlm_sandbox import protocol as P

from rlm.backends.inbox import Inbox
from rlm.errors import ProtocolError


def inbox_over(chunks: list[bytes], max_values: int = 1000) -> tuple[Inbox, list[tuple[int, str]]]:
    refused: list[tuple[int, str]] = []

    async def fill() -> None:
        if not chunks:
            raise EOFError("nothing more")
        inbox.feed(chunks.pop(0))

    async def refuse(call_id: int, why: str) -> None:
        refused.append((call_id, why))

    inbox = Inbox(fill, refuse, max_values=max_values)
    return inbox, refused


def call(call_id: int, n: int) -> bytes:
    text = '{"type":"call","id":%d,"method":"llm_batch","params":{"prompts":[%s]}}'
    payload = (text % (call_id, ",".join(["0"] * n))).encode()
    return P.LAST + b"%08x" % len(payload) + payload


def test_messages_cut_anywhere_come_out_whole_and_validated() -> None:
    data = P.encode_bytes({"type": "loaded", "id": 1}) + P.encode_bytes({"type": "loaded", "id": 2})
    inbox, _ = inbox_over([data[i : i + 5] for i in range(0, len(data), 5)])

    async def main() -> list[dict[str, object]]:
        return [await inbox.receive(), await inbox.receive()]

    assert anyio.run(main) == [{"type": "loaded", "id": 1}, {"type": "loaded", "id": 2}]


def test_a_call_of_too_many_values_is_refused_and_reading_goes_on() -> None:
    inbox, refused = inbox_over([call(7, 50) + P.encode_bytes({"type": "loaded", "id": 3})], 20)
    assert anyio.run(inbox.receive) == {"type": "loaded", "id": 3}
    assert [i for i, _ in refused] == [7] and "more than 20 JSON values" in refused[0][1]


def test_a_call_too_big_whose_id_cannot_be_answered_ends_the_session() -> None:
    inbox, refused = inbox_over([call(P.MAX_ID + 1, 50)], 20)
    with pytest.raises(ProtocolError):
        anyio.run(inbox.receive)
    assert refused == []


@pytest.mark.parametrize(
    "data", [b"X00000002{}", P.LAST + b"0000zz02{}", P.encode_bytes({"type": "loaded"})]
)
def test_a_bad_frame_or_message_is_a_protocol_error(data: bytes) -> None:
    inbox, _ = inbox_over([data])
    with pytest.raises(ProtocolError):
        anyio.run(inbox.receive)
