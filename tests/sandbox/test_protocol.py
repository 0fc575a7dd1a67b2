"""The wire protocol: framing, caps and message validation, on both ends' schemas."""

from __future__ import annotations

import json

import pytest
from rlm_sandbox import protocol as P


def frames(message: dict[str, object]) -> bytes:
    return P.encode_bytes(message)


def test_small_message_round_trips_fed_one_byte_at_a_time() -> None:
    message = {
        "type": "execute",
        "id": 7,
        "code": "print('é ✓ \\n')\n",
        "output_limit": 5,
        "final_limit": 100_000,
    }
    decoder = P.Decoder()
    out: list[bytes] = []
    for byte in frames(message):
        out.extend(decoder.feed(bytes([byte])))
    assert len(out) == 1
    assert P.parse(out[0], P.FROM_HOST) == message
    assert decoder.buffered == 0


def test_large_message_is_cut_into_capped_frames_and_reassembled() -> None:
    context = "abc\n" * (P.MAX_FRAME // 2)  # 2 MiB of text -> 3 frames
    data = frames({"type": "load_context", "id": 1, "context": context})
    kinds = []
    pos = 0
    while pos < len(data):
        kind, length = data[pos : pos + 1], int(data[pos + 1 : pos + 9], 16)
        assert length <= P.MAX_FRAME
        kinds.append(kind)
        pos += P.HEADER_SIZE + length
    assert kinds == [P.PART, P.PART, P.LAST]
    decoder = P.Decoder()
    got = []
    for i in range(0, len(data), 70_001):  # chunks that straddle frame boundaries
        got.extend(decoder.feed(data[i : i + 70_001]))
    assert [P.parse(g, P.FROM_HOST)["context"] for g in got] == [context]


def test_several_messages_in_one_read_all_come_out_in_order() -> None:
    data = b"".join(frames({"type": "interrupt", "id": i}) for i in range(5))
    assert [json.loads(p)["id"] for p in P.Decoder().feed(data)] == list(range(5))


def test_host_stream_never_carries_control_bytes() -> None:
    # Docker's detach keys are control characters; they must never match inside frames.
    nasty = "".join(chr(c) for c in range(32)) + "\x7f\u2028"
    data = frames(
        {
            "type": "execute",
            "id": 2**20,
            "code": nasty * 3,
            "output_limit": 1,
            "final_limit": 100_000,
        }
    )
    assert min(data) >= 0x20


def test_lone_surrogates_survive_the_round_trip() -> None:
    message = {"type": "fatal", "message": "bad \ud800 text"}
    (payload,) = P.Decoder().feed(frames(message))
    assert P.parse(payload, P.FROM_SANDBOX) == message


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"M7fffffff", "over the"),
        (b"X00000002{}", "unknown frame kind"),
        (b"M0000zz02{}", "malformed frame header"),
        (b"hello world, not a frame", "malformed frame header"),
        (b"M-0000001{}", "malformed frame header"),
    ],
)
def test_bad_frames_are_rejected_from_the_header(data: bytes, reason: str) -> None:
    decoder = P.Decoder()
    with pytest.raises(P.ProtocolViolation, match=reason):
        decoder.feed(data)
    # A broken stream stays broken: nothing after it is trusted.
    with pytest.raises(P.ProtocolViolation):
        decoder.feed(frames({"type": "loaded", "id": 1}))


def test_message_cap_counts_all_parts() -> None:
    decoder = P.Decoder(max_message=3 * P.MAX_FRAME)
    part = b"P%08x" % P.MAX_FRAME + b" " * P.MAX_FRAME
    decoder.feed(part * 3)
    with pytest.raises(P.ProtocolViolation, match="message larger"):
        decoder.feed(b"M00000001 ")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"id": 1}', "unknown message type"),
        (b'{"type": "shell", "cmd": "id"}', "unknown message type"),
        (b'{"type": "loaded"}', "wrong fields"),
        (b'{"type": "loaded", "id": 1, "tenant": "other"}', "wrong fields"),
        (b'{"type": "loaded", "id": "1"}', "wrong type"),
        (b'{"type": "loaded", "id": true}', "wrong type"),
        (b'{"type": "loaded", "id": -1}', "out of range"),
        (b'{"type": "loaded", "id": 9007199254740992}', "out of range"),
        (b'{"type": "loaded", "id": 1.5}', "wrong type"),
        (b'{"type": "call", "id": 1, "method": "llm_query", "params": []}', "wrong type"),
        (b'{"type": "execute", "id": 1, "code": "", "output_limit": 1}', "unknown message type"),
        (b'{"type": "loaded", "id": NaN}', "not valid JSON"),
        (b'{"type": "call", "id": 1, "method": "m", "params": {"x": Infinity}}', "not valid"),
        (b'{"type": "fatal", "message": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "deeply"),
    ],
)
def test_host_rejects_malformed_sandbox_messages(payload: bytes, reason: str) -> None:
    with pytest.raises(P.ProtocolViolation, match=reason):
        P.parse(payload, P.FROM_SANDBOX)


def test_every_schema_accepts_a_well_formed_message() -> None:
    samples = {
        "hello": {"protocol": 1, "python": "3.12.1"},
        "loaded": {"id": 1},
        "result": {
            "id": 1,
            "stdout": "",
            "stderr": "",
            "error": None,
            "truncated": False,
            "interrupted": False,
            "final": {"value": {"rows": [1, "a", None]}, "how": "FINAL"},
        },
        "variable": {"id": 1, "found": True, "value": "x", "truncated": False},
        "snapshot": {"id": 1, "blob": "RLMSNAP/1\n{}", "names": ["a"], "skipped": {"f": "why"}},
        "restored": {"id": 1, "names": ["a"], "error": None},
        "call": {"id": 1, "method": "llm_query", "params": {"prompt": "p", "model": None}},
        "fatal": {"message": "m"},
    }
    assert set(samples) == set(P.FROM_SANDBOX)
    for kind, fields in samples.items():
        message = {"type": kind, **fields}
        (payload,) = P.Decoder().feed(frames(message))
        assert P.parse(payload, P.FROM_SANDBOX) == message


_RESULT = '{"type":"result","id":1,"stdout":"","stderr":"","error":null,"truncated":false,'


@pytest.mark.parametrize(
    "final",
    [
        '{"value": 1}',
        '{"how": "FINAL"}',
        '{"value": 1, "how": "final"}',
        '{"value": 1, "how": "FINAL", "extra": 1}',
        '{"value": 1, "how": "FINAL", "converted": true}',
        '{"value": "x", "how": "FINAL", "converted": 1}',
        '"FINAL(x)"',
        "[]",
    ],
)
def test_host_rejects_a_malformed_final(final: str) -> None:
    payload = f'{_RESULT}"interrupted":false,"final":{final}}}'.encode()
    with pytest.raises(P.ProtocolViolation, match="final"):
        P.parse(payload, P.FROM_SANDBOX)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"type": "snapshot", "id": 1, "blob": "", "names": [1], "skipped": {}}',
        b'{"type": "snapshot", "id": 1, "blob": "", "names": [], "skipped": {"a": 1}}',
        b'{"type": "snapshot", "id": 1, "blob": 5, "names": [], "skipped": {}}',
        b'{"type": "restored", "id": 1, "names": [null], "error": null}',
        b'{"type": "restored", "id": 1, "names": [], "error": 1}',
    ],
)
def test_host_rejects_malformed_snapshot_replies(payload: bytes) -> None:
    with pytest.raises(P.ProtocolViolation):
        P.parse(payload, P.FROM_SANDBOX)


def test_host_accepts_the_final_forms() -> None:
    for final in (
        "null",
        '{"value": null, "how": "answer"}',
        '{"value": "x", "how": "FINAL_VAR", "converted": true}',
        '{"value": [1], "how": "FINAL", "converted": false}',
    ):
        payload = f'{_RESULT}"interrupted":false,"final":{final}}}'.encode()
        assert P.parse(payload, P.FROM_SANDBOX)["type"] == "result"


def test_encoding_refuses_values_json_cannot_carry() -> None:
    with pytest.raises(ValueError):
        frames({"type": "reply", "id": 1, "result": float("nan")})


# -- counting values before decoding ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": [1, 2, 3], "b": 'x,y,[z] \\" {q,,'}, 6),
        ([[]] * 1000, 2001),  # an upper bound: each value opened, each separated
        (["ab"] * 50, 51),
        ({"k": "\\" * 5000 + '"inside, [still]', "n": [1, 2]}, 5),
        ("just, a [string] {with} commas", 1),
    ],
)
def test_count_values_counts_what_is_outside_strings(value: object, expected: int) -> None:
    payload = json.dumps(value).encode()
    counted = P.count_values(payload, 10_000)
    assert counted == expected  # the structure only, never what strings hold


def test_count_values_stops_past_the_limit() -> None:
    payload = json.dumps(["ab"] * 100_000).encode()
    assert 10 < P.count_values(payload, 10) < 100


def test_a_message_of_too_many_values_is_refused_before_decoding() -> None:
    many = {"type": "fatal", "message": "x", "extra": [[]] * 50}
    with pytest.raises(P.ProtocolViolation, match="more than 20 JSON values"):
        P.parse(json.dumps(many).encode(), P.FROM_SANDBOX, max_values=20)
    # A long string full of commas is one value, however many commas it holds.
    text = {"type": "fatal", "message": "a," * 10_000}
    assert P.parse(json.dumps(text).encode(), P.FROM_SANDBOX, max_values=20)
