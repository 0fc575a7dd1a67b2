"""Fuzzing the wire protocol (sandbox/protocol.py, imported as rlm_sandbox.protocol):
the frame decoder, the message validator of every type and field, and the JSON value
count that bounds what the host decodes.

Properties: every valid message of either direction round-trips through
encode/Decoder/parse exactly, however the bytes are cut; a prefix of a stream is
incomplete, never an error; a mutated, random, oversized, deeply nested or non-UTF-8
stream is refused with ProtocolViolation or decodes to a message that is itself
valid and re-encodes to itself (what the host accepts it can also send on); a value
of a wrong type in any field is refused; the value count is an upper bound, so no
message over the limit is ever decoded; and decoding stays within a memory bound
proportional to the input.
"""

from __future__ import annotations

import contextlib
import json
import tracemalloc
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from rlm_sandbox import protocol as P

from tests.fuzz.support import (
    any_text,
    examples,
    hard_timeout,
    json_equal,
    json_values,
    keys,
)

SCHEMAS = {"from_sandbox": P.FROM_SANDBOX, "from_host": P.FROM_HOST}
_KINDS = [(d, k) for d, schema in SCHEMAS.items() for k in schema]

# -- valid messages ----------------------------------------------------------------------


def _final() -> st.SearchStrategy[dict[str, Any]]:
    plain = st.fixed_dictionaries({"value": json_values, "how": st.sampled_from(P.FINAL_HOWS)})
    converted = st.fixed_dictionaries(
        {"value": any_text, "how": st.sampled_from(P.FINAL_HOWS), "converted": st.just(True)}
    )
    unconverted = st.fixed_dictionaries(
        {"value": json_values, "how": st.sampled_from(P.FINAL_HOWS), "converted": st.just(False)}
    )
    return st.one_of(plain, converted, unconverted)


def _field(kind: str, name: str, types: tuple[type, ...]) -> st.SearchStrategy[Any]:
    if name == "id":
        return st.integers(0, P.MAX_ID)
    if name == "names":
        return st.lists(any_text, max_size=5)
    if name == "skipped":
        return st.dictionaries(any_text, any_text, max_size=3)
    if kind == "result" and name == "final":
        return st.one_of(st.none(), _final())
    options: list[st.SearchStrategy[Any]] = []
    for t in types:
        if t is bool:
            options.append(st.booleans())
        elif t is int:
            options.append(st.integers(-(2**63), 2**63))
        elif t is float:
            options.append(st.floats(allow_nan=False, allow_infinity=False))
        elif t is str:
            options.append(any_text)
        elif t is list:
            options.append(st.lists(json_values, max_size=5))
        elif t is dict:
            options.append(st.dictionaries(keys, json_values, max_size=5))
        elif t is type(None):
            options.append(st.none())
    return st.one_of(options)


def message_of(direction: str, kind: str) -> st.SearchStrategy[dict[str, Any]]:
    fields = SCHEMAS[direction][kind]
    return st.fixed_dictionaries(
        {"type": st.just(kind), **{n: _field(kind, n, t) for n, t in fields.items()}}
    )


def any_message(direction: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.sampled_from(sorted(SCHEMAS[direction])).flatmap(
        lambda kind: message_of(direction, kind)
    )


directions = st.sampled_from(sorted(SCHEMAS))


def decode_all(
    data: bytes, cuts: list[int], max_message: int = P.DEFAULT_MAX_MESSAGE
) -> list[bytes]:
    """Feed ``data`` to a fresh Decoder in pieces cut at ``cuts``."""
    decoder = P.Decoder(max_message=max_message)
    out: list[bytes] = []
    start = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        out += decoder.feed(data[start:cut])
        start = cut
    assert decoder.buffered == 0
    return out


def check_accepted(message: dict[str, Any], schema: dict[str, Any]) -> None:
    """What the reader accepted is valid, and the host can send it on unchanged."""
    assert P.validate(message, schema) is message
    again = decode_all(P.encode_bytes(message), [])
    assert len(again) == 1
    assert json_equal(P.parse(again[0], schema), message)


def parse_or_refuse(payload: bytes, schema: dict[str, Any], **kw: Any) -> dict[str, Any] | None:
    with hard_timeout(10):
        try:
            message = P.parse(payload, schema, **kw)
        except P.ProtocolViolation as exc:
            assert str(exc)
            return None
    check_accepted(message, schema)
    return message


# -- round trips ---------------------------------------------------------------------------


@given(
    directions.flatmap(
        lambda d: st.tuples(st.just(d), st.lists(any_message(d), min_size=1, max_size=4))
    ),
    st.lists(st.integers(0, 1 << 16), max_size=6),
)
@settings(max_examples=examples(150))
def test_valid_messages_round_trip_however_the_stream_is_cut(
    batch: tuple[str, list[dict[str, Any]]], cuts: list[int]
) -> None:
    direction, messages = batch
    stream = b"".join(P.encode_bytes(m) for m in messages)
    payloads = decode_all(stream, cuts)
    assert len(payloads) == len(messages)
    for payload, message in zip(payloads, messages, strict=True):
        assert json_equal(P.parse(payload, SCHEMAS[direction]), message)


@given(directions.flatmap(any_message), st.integers(0, 1 << 20))
@settings(max_examples=examples(200))
def test_a_prefix_of_a_message_is_incomplete_never_an_error(
    message: dict[str, Any], at: int
) -> None:
    data = P.encode_bytes(message)
    prefix = data[: at % len(data)]
    decoder = P.Decoder()
    assert decoder.feed(prefix) == []
    assert decoder.buffered == len(prefix)
    assert len(decoder.feed(data[len(prefix) :])) == 1


@given(any_text.filter(bool), st.integers(1, 3))
@settings(max_examples=examples(20))
def test_messages_over_one_frame_round_trip(text: str, frames: int) -> None:
    big = (text * (frames * P.MAX_FRAME // len(text.encode("utf-8", "surrogatepass")) + 1))[
        : frames * P.MAX_FRAME // 4
    ]
    message = {"type": "reply", "id": 7, "result": [big, big, big, big, "end"]}
    data = P.encode_bytes(message)
    # Long strings travel as blob frames (protocol 2), shorter ones in JSON parts.
    assert data.count(P.PART) + data.count(P.BLOB_LAST) >= 1 or len(data) <= (
        P.MAX_FRAME + P.HEADER_SIZE
    )
    (payload,) = decode_all(data, [P.HEADER_SIZE + 1, P.MAX_FRAME, P.MAX_FRAME + 5])
    assert P.parse(payload, P.FROM_HOST) == message


# -- damaged streams -------------------------------------------------------------------------


@given(
    directions.flatmap(lambda d: st.tuples(st.just(d), any_message(d))),
    st.lists(
        st.tuples(
            st.sampled_from(["set", "insert", "delete"]),
            st.integers(0, 1 << 20),
            st.binary(min_size=1, max_size=3),
        ),
        min_size=1,
        max_size=3,
    ),
)
@settings(max_examples=examples(300))
def test_a_mutated_stream_is_refused_or_decodes_to_valid_messages(
    case: tuple[str, dict[str, Any]], ops: list[tuple[str, int, bytes]]
) -> None:
    direction, message = case
    original = P.encode_bytes(message)
    data = bytearray(original)
    for op, where, blob in ops:
        at = where % (len(data) + 1)
        if op == "set":
            data[at : at + len(blob)] = blob
        elif op == "insert":
            data[at:at] = blob
        else:
            del data[at : at + len(blob)]
    decoder = P.Decoder(max_message=1 << 20)
    try:
        payloads = decoder.feed(bytes(data))
    except P.ProtocolViolation:
        with pytest.raises(P.ProtocolViolation):  # a broken decoder stays broken
            decoder.feed(original)
        return
    for payload in payloads:
        decoded = parse_or_refuse(payload, SCHEMAS[direction], max_values=10_000)
        if decoded is not None and bytes(data) == original:
            assert json_equal(decoded, message)


@given(st.binary(max_size=600), st.lists(st.integers(0, 700), max_size=4))
@settings(max_examples=examples(250))
def test_random_bytes_are_refused_or_decode_to_valid_messages(data: bytes, cuts: list[int]) -> None:
    decoder = P.Decoder(max_message=1 << 16)
    start = 0
    payloads: list[bytes] = []
    try:
        for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
            payloads += decoder.feed(data[start:cut])
            start = cut
    except P.ProtocolViolation:
        pass
    for payload in [*payloads, data]:
        for schema in SCHEMAS.values():
            parse_or_refuse(payload, schema, max_values=1000)


@given(
    st.sampled_from([P.PART, P.LAST]),
    st.integers(P.MAX_FRAME + 1, 0xFFFFFFFF),
)
@settings(max_examples=examples(50))
def test_an_oversized_frame_is_refused_from_its_header_alone(kind: bytes, length: int) -> None:
    decoder = P.Decoder()
    with pytest.raises(P.ProtocolViolation, match="over the"):
        decoder.feed(kind + b"%08x" % length)


@given(st.lists(st.integers(1, 4096), min_size=2, max_size=8), st.integers(1, 8192))
@settings(max_examples=examples(100))
def test_parts_over_the_message_cap_are_refused_before_their_bytes_arrive(
    sizes: list[int], cap: int
) -> None:
    assume(sum(sizes) > cap)
    decoder = P.Decoder(max_message=cap)
    fed = 0
    with pytest.raises(P.ProtocolViolation, match="limit"):
        for size in sizes:
            decoder.feed(P.PART + b"%08x" % size)
            decoder.feed(b" " * size)
            fed += size
    assert fed <= cap


@given(st.binary(min_size=9, max_size=9))
@settings(max_examples=examples(200))
def test_any_header_is_read_or_refused(header: bytes) -> None:
    decoder = P.Decoder()
    try:
        assert decoder.feed(header) == [] or header[9:] == b""
    except P.ProtocolViolation:
        return
    kind, digits = header[:1], header[1:]
    assert kind in (P.PART, P.LAST)
    assert all(c in b"0123456789abcdef" for c in digits)
    assert int(digits, 16) <= P.MAX_FRAME


# -- every field, every wrong type -----------------------------------------------------------

_wrong_values: dict[type, st.SearchStrategy[Any]] = {
    int: st.integers(-(2**70), 2**70),
    float: st.floats(allow_nan=False, allow_infinity=False),
    bool: st.booleans(),
    str: any_text,
    list: st.lists(st.integers(), max_size=2),
    dict: st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    type(None): st.none(),
}


#: (direction, type, field) for every field some JSON type is wrong for.
_TYPED_FIELDS = [
    (d, k, name)
    for d, k in _KINDS
    for name, accepted in SCHEMAS[d][k].items()
    if any(t not in accepted for t in _wrong_values)
]


@given(st.sampled_from(_TYPED_FIELDS), st.data())
@settings(max_examples=examples(250))
def test_a_wrong_type_in_any_field_is_refused(
    where: tuple[str, str, str], data: st.DataObject
) -> None:
    direction, kind, name = where
    schema = SCHEMAS[direction]
    message = data.draw(message_of(direction, kind))
    accepted = schema[kind][name]
    # bool is an int to isinstance: an int field must still refuse it.
    t = data.draw(st.sampled_from([t for t in _wrong_values if t not in accepted]))
    forged = {**message, name: data.draw(_wrong_values[t])}
    payload = json.dumps(forged, ensure_ascii=False).encode("utf-8", "surrogatepass")
    with pytest.raises(P.ProtocolViolation):
        P.parse(payload, schema)


@given(
    st.sampled_from(_KINDS).flatmap(lambda dk: st.tuples(st.just(dk[0]), message_of(*dk))),
    st.data(),
)
@settings(max_examples=examples(200))
def test_a_missing_extra_or_renamed_field_or_type_is_refused(
    case: tuple[str, dict[str, Any]], data: st.DataObject
) -> None:
    direction, message = case
    schema = SCHEMAS[direction]
    forged = dict(message)
    how = data.draw(st.sampled_from(["drop", "add", "type", "id"]))
    if how == "drop":
        forged.pop(data.draw(st.sampled_from(sorted(forged))))
    elif how == "add":
        extra = data.draw(keys.filter(lambda k: k not in forged))
        forged[extra] = data.draw(json_values)
    elif how == "type":
        forged["type"] = data.draw(
            st.one_of(
                any_text.filter(lambda t: t not in schema),
                json_values.filter(lambda v: not isinstance(v, str)),
            )
        )
    else:
        if "id" not in forged:
            return
        forged["id"] = data.draw(
            st.one_of(st.integers(max_value=-1), st.integers(min_value=P.MAX_ID + 1))
        )
    payload = json.dumps(forged, ensure_ascii=False).encode("utf-8", "surrogatepass")
    with pytest.raises(P.ProtocolViolation):
        P.parse(payload, schema)


@given(
    st.one_of(
        st.dictionaries(st.sampled_from(["value", "how", "converted", "extra"]), json_values),
        st.fixed_dictionaries(
            {"value": json_values, "how": st.sampled_from(P.FINAL_HOWS), "converted": json_values}
        ),
    )
)
@settings(max_examples=examples(120))
def test_a_results_final_is_valid_or_refused(final: dict[str, Any]) -> None:
    message = {
        "type": "result",
        "id": 1,
        "stdout": "",
        "stderr": "",
        "error": None,
        "truncated": False,
        "interrupted": False,
        "final": final,
    }
    payload = json.dumps(message, ensure_ascii=False).encode("utf-8", "surrogatepass")
    decoded = parse_or_refuse(payload, P.FROM_SANDBOX)
    if decoded is not None:
        got = decoded["final"]
        assert set(got) in ({"value", "how"}, {"value", "how", "converted"})
        assert got["how"] in P.FINAL_HOWS
        assert got.get("converted", False) in (True, False)
        assert not got.get("converted") or isinstance(got["value"], str)


# -- numbers, nesting and text that are JSON's edge cases ------------------------------------

_numbers = st.one_of(
    st.from_regex(r"-?(0|[1-9][0-9]{0,500})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,5})?", fullmatch=True),
    st.sampled_from(["1e999", "-1e999", "1e-999", "NaN", "Infinity", "-Infinity", "1" * 5000]),
)


@given(st.sampled_from(["id", "value", "context", "protocol"]), _numbers)
@settings(max_examples=examples(200))
def test_huge_and_odd_numbers_are_refused_or_carried_exactly(field: str, number: str) -> None:
    texts = {
        "id": '{"type":"call","id":%s,"method":"llm_query","params":{}}',
        "value": '{"type":"call","id":1,"method":"tool","params":{"arguments":{"n":%s}}}',
        "context": '{"type":"load_context","id":1,"context":[%s]}',
        "protocol": '{"type":"hello","protocol":%s,"python":"3"}',
    }
    schema = P.FROM_HOST if field == "context" else P.FROM_SANDBOX
    parse_or_refuse((texts[field] % number).encode(), schema, max_values=100)


@given(st.integers(1, 200_000), st.sampled_from(["[", '{"a":']), st.booleans())
@settings(max_examples=examples(60))
def test_deep_nesting_is_refused_or_decoded_never_a_crash(
    depth: int, opener: str, bounded: bool
) -> None:
    closer = "]" if opener == "[" else "}"
    value = opener * depth + "0" + closer * depth
    payload = (
        f'{{"type":"call","id":1,"method":"rlm_query","params":{{"context":{value}}}}}'
    ).encode()
    parse_or_refuse(payload, P.FROM_SANDBOX, max_values=1_000_000 if bounded else None)


@given(
    st.binary(min_size=1, max_size=8).filter(lambda b: not _is_utf8(b)),
    st.integers(0, 10),
)
@settings(max_examples=examples(200))
def test_invalid_utf8_is_refused(raw: bytes, at: int) -> None:
    text = b'{"type":"fatal","message":"0123456789"}'
    where = text.index(b"0") + at
    payload = text[:where] + raw + text[where:]
    assert parse_or_refuse(payload, P.FROM_SANDBOX) is None


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return False
    return True


# -- the value count -------------------------------------------------------------------------


def count_actual(value: Any) -> int:
    if isinstance(value, list):
        return 1 + sum(count_actual(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(count_actual(v) for v in value.values())
    return 1


@given(json_values, st.integers(0, 60))
@settings(max_examples=examples(200))
def test_the_value_count_is_an_upper_bound_and_no_message_over_the_limit_is_decoded(
    value: Any, limit: int
) -> None:
    message = {"type": "call", "id": 3, "method": "llm_batch", "params": {"prompts": value}}
    payload = P.encode_bytes(message)[P.HEADER_SIZE :]
    actual = count_actual(message)
    assert P.count_values(payload, 1 << 30) >= actual
    try:
        decoded = P.parse(payload, P.FROM_SANDBOX, max_values=limit)
    except P.TooManyValues:
        assert P.count_values(payload, limit) > limit
        return
    assert actual <= limit
    assert json_equal(decoded, message)


# -- memory ----------------------------------------------------------------------------------


def peak_of(fn: Any, *args: Any) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        with contextlib.suppress(P.ProtocolViolation):
            fn(*args)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@given(
    st.lists(
        st.sampled_from(
            [b"P", b"M", b"00000", b"0fffff", b"100000", b"[", b"]", b'"', b"x" * 1000]
        ),
        max_size=200,
    ),
    st.integers(1, 64),
)
@settings(max_examples=examples(40), deadline=None)
def test_the_decoder_holds_memory_in_proportion_to_its_input(
    pieces: list[bytes], chunk: int
) -> None:
    data = b"".join(pieces)

    def feed_all() -> None:
        decoder = P.Decoder(max_message=1 << 20)
        for i in range(0, len(data), chunk * 64):
            decoder.feed(data[i : i + chunk * 64])

    assert peak_of(feed_all) <= 4 * len(data) + (64 << 10)


@given(st.integers(50_000, 400_000), st.sampled_from([b"[],", b"{},", b"0,", b'"",']))
@settings(max_examples=examples(4), deadline=None)
def test_a_refused_flood_of_tiny_values_is_never_decoded(n: int, item: bytes) -> None:
    """Decoded, each value costs ~50 bytes; counted and refused, the cost is ~0."""
    payload = (
        b'{"type":"call","id":1,"method":"llm_batch","params":{"prompts":[' + item * n + b"0]}}"
    )
    with hard_timeout(20):
        assert peak_of(lambda: P.parse(payload, P.FROM_SANDBOX, max_values=n // 2)) < (1 << 20)
        with pytest.raises(P.TooManyValues):
            P.parse(payload, P.FROM_SANDBOX, max_values=n // 2)


@pytest.mark.parametrize("number", ["1e999", "-1e999", "1E400", "123456789e999"])
def test_a_number_out_of_floats_range_is_refused(number: str) -> None:
    """Found by the fuzzer: 1e999 is JSON text but an infinity once decoded, which
    encode() refuses and so does any JSON the host writes later (a service response
    with the run's answer): a sandbox could plant it in a final answer or a call."""
    payload = (
        '{"type":"result","id":1,"stdout":"","stderr":"","error":null,"truncated":false,'
        '"interrupted":false,"final":{"value":[' + number + '],"how":"FINAL"}}'
    ).encode()
    with pytest.raises(P.ProtocolViolation, match="out of range"):
        P.parse(payload, P.FROM_SANDBOX)


def test_a_message_one_value_over_the_limit_is_refused() -> None:
    """Found by the fuzzer: the fast pre-count started at 0 where count_values starts
    at 1, so a message of exactly max_values + 1 values was decoded."""
    payload = b'{"type":"call","id":3,"method":"llm_batch","params":{"prompts":[null,null]}}'
    assert P.count_values(payload, 100) == 8
    assert P.parse(payload, P.FROM_SANDBOX, max_values=8)["id"] == 3
    with pytest.raises(P.TooManyValues):
        P.parse(payload, P.FROM_SANDBOX, max_values=7)


# -- blobs: long strings sent raw beside the JSON ---------------------------------------------

_blob_strings = st.one_of(
    any_text,
    any_text.map(lambda t: P.BLOB_REF + t),
    st.integers(0, 3).map(lambda n: P.BLOB_REF + str(n)),
    any_text.map(lambda t: P.BLOB_REF + "=" + t),
    st.tuples(st.sampled_from(["a", "é", "\ud800", "\x1e\x1f"]), st.integers(-1, 1)).map(
        lambda t: (t[0] * P.BLOB_MIN)[: P.BLOB_MIN + t[1]]
    ),
)


@given(
    st.lists(_blob_strings, min_size=1, max_size=4),
    st.booleans(),
    st.lists(st.integers(0, 1 << 18), max_size=4),
)
@settings(max_examples=examples(60))
def test_strings_sent_as_blobs_or_looking_like_references_round_trip(
    strings: list[str], raw_control: bool, cuts: list[int]
) -> None:
    message = {"type": "reply", "id": 1, "result": {"items": strings, "first": strings[0]}}
    data = P.encode_bytes(message, raw_control=raw_control)
    if not raw_control:
        assert P.DETACH_KEYS not in data
    (payload,) = decode_all(data, cuts)
    assert json_equal(P.parse(payload, P.FROM_HOST), message)


@given(
    st.lists(_blob_strings, min_size=1, max_size=3),
    st.lists(
        st.tuples(
            st.sampled_from(["set", "insert", "delete"]),
            st.integers(0, 1 << 18),
            st.binary(min_size=1, max_size=3),
        ),
        min_size=1,
        max_size=3,
    ),
)
@settings(max_examples=examples(80))
def test_a_mutated_stream_with_blobs_is_refused_or_decodes_to_valid_messages(
    strings: list[str], ops: list[tuple[str, int, bytes]]
) -> None:
    message = {"type": "call", "id": 2, "method": "llm_batch", "params": {"prompts": strings}}
    data = bytearray(P.encode_bytes(message))
    for op, where, blob in ops:
        at = where % (len(data) + 1)
        if op == "set":
            data[at : at + len(blob)] = blob
        elif op == "insert":
            data[at:at] = blob
        else:
            del data[at : at + len(blob)]
    decoder = P.Decoder(max_message=1 << 20)
    try:
        payloads = decoder.feed(bytes(data))
    except P.ProtocolViolation:
        return
    for payload in payloads:
        parse_or_refuse(payload, P.FROM_SANDBOX, max_values=10_000)


@pytest.mark.parametrize("reference", ["0", "1", "01", "-1", "x", "9" * 12, ""])
def test_a_forged_blob_reference_without_its_blob_is_refused(reference: str) -> None:
    text = json.dumps({"type": "fatal", "message": P.BLOB_REF + reference})
    with pytest.raises(P.ProtocolViolation, match="blob"):
        P.parse(text.encode(), P.FROM_SANDBOX)
