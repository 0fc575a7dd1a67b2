"""The wire protocol: framing, caps and message validation, on both ends' schemas."""

from __future__ import annotations

import json

import pytest
from rlm_sandbox import protocol as P


def frames(message: dict[str, object]) -> bytes:
    return P.encode_bytes(message, raw_control=False)


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


def frame_kinds(data: bytes) -> list[bytes]:
    kinds = []
    pos = 0
    while pos < len(data):
        kind, length = data[pos : pos + 1], int(data[pos + 1 : pos + 9], 16)
        assert length <= P.MAX_FRAME
        kinds.append(kind)
        pos += P.HEADER_SIZE + length
    return kinds


def test_large_message_is_cut_into_capped_frames_and_reassembled() -> None:
    # Many short strings: JSON in 3 frames.
    context = ["abc"] * (P.MAX_FRAME // 3)
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


def test_a_small_frame_is_one_chunk_and_a_large_one_is_not_copied() -> None:
    # One chunk is one write: the reader wakes once, not for a header and then its payload.
    small = list(P.encode({"type": "interrupt", "id": 1}))
    assert len(small) == 1 and small[0].startswith(P.LAST)
    text = "x" * (P.JOIN_MAX + 1)  # a blob of one frame, over the join size
    big = list(P.encode({"type": "restore", "id": 1, "blob": text}))
    assert [len(c) for c in big[:2]] == [P.HEADER_SIZE, P.JOIN_MAX + 1]
    assert isinstance(big[1], memoryview)  # a view of the encoded blob, not a copy
    assert len(big) == 3 and big[2].startswith(P.LAST)
    decoder = P.Decoder()
    got = [m for chunk in big for m in decoder.feed(chunk)]
    assert P.parse(got[0], P.FROM_HOST)["blob"] == text


def test_long_strings_travel_as_raw_blobs_and_come_back_in_place() -> None:
    text = "abc\né\n" * (P.MAX_FRAME // 3)  # 2 MiB of UTF-8 -> 3 blob frames
    looks_like_a_ref = P.BLOB_REF + "0"
    message = {
        "type": "call",
        "id": 3,
        "method": "llm_batch",
        "params": {"prompts": ["short", text, looks_like_a_ref, "x" * P.BLOB_MIN], "n": None},
    }
    data = frames(message)
    assert frame_kinds(data) == [P.BLOB_PART, P.BLOB_PART, P.BLOB_LAST, P.BLOB_LAST, P.LAST]
    assert text.encode()[:1000] in data  # raw, not JSON-escaped
    decoder = P.Decoder()
    got = []
    for i in range(0, len(data), 70_001):
        got.extend(decoder.feed(data[i : i + 70_001]))
    assert [P.parse(g, P.FROM_SANDBOX, max_values=100) for g in got] == [message]
    assert decoder.buffered == 0


def test_towards_the_sandbox_a_string_with_the_detach_keys_stays_json() -> None:
    text = "a" * P.BLOB_MIN + P.DETACH_KEYS.decode() + "\n"
    message = {"type": "load_context", "id": 1, "context": text}
    data = P.encode_bytes(message, raw_control=False)
    assert frame_kinds(data) == [P.LAST] and min(data) >= 0x20
    assert frame_kinds(P.encode_bytes(message)) == [P.BLOB_LAST, P.LAST]
    (payload,) = P.Decoder().feed(data)
    assert P.parse(payload, P.FROM_HOST) == message


def blob(data: bytes) -> bytes:
    return b"B%08x" % len(data) + data


def json_frame(text: bytes) -> bytes:
    return b"M%08x" % len(text) + text


REF = json.dumps(P.BLOB_REF)[1:-1].encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        # A reference to a blob that was not sent, or sent for another reference.
        (json_frame(b'{"type":"fatal","message":"' + REF + b'0"}'), "points nowhere"),
        (
            blob(b"x")
            + json_frame(
                b'{"type":"call","id":1,"method":"m","params":{"a":"'
                + REF
                + b'0","b":"'
                + REF
                + b'0"}}'
            ),
            "points nowhere",
        ),
        (json_frame(b'{"type":"fatal","message":"' + REF + b'x1"}'), "points nowhere"),
        # A blob nothing refers to, and one that is not UTF-8.
        (blob(b"x") + json_frame(b'{"type":"fatal","message":"m"}'), "no reference"),
        (blob(b"\xff") + json_frame(b'{"type":"fatal","message":"' + REF + b'0"}'), "UTF-8"),
    ],
)
def test_forged_blob_references_break_the_protocol(data: bytes, reason: str) -> None:
    (payload,) = P.Decoder().feed(data)
    with pytest.raises(P.ProtocolViolation, match=reason):
        P.parse(payload, P.FROM_SANDBOX, max_values=100)


def test_blobs_count_toward_the_message_cap_and_end_before_their_message() -> None:
    decoder = P.Decoder(max_message=P.MAX_FRAME)
    decoder.feed(b"B%08x" % P.MAX_FRAME + b" " * P.MAX_FRAME)
    with pytest.raises(P.ProtocolViolation, match="message larger"):
        decoder.feed(json_frame(b"{}"))
    decoder = P.Decoder()
    decoder.feed(b"b00000001 ")
    with pytest.raises(P.ProtocolViolation, match="unfinished blob"):
        decoder.feed(json_frame(b"{}"))


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
