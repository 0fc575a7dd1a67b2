"""The wire protocol between the host and the sandbox runner (stdlib only).

Both ends import this one module, so there is a single definition of the framing,
the message types and their fields.

**Framing.** A message is a JSON object, UTF-8 encoded, cut into frames of at most
:data:`MAX_FRAME` payload bytes. Each frame is a 9-byte ASCII header -- one kind
letter (``P`` for a part with more to follow, ``M`` for the last or only part) and
the payload length as 8 lowercase hex digits -- then the payload. Large messages
(a 100 MB context, a big batch of prompts) therefore stream as many bounded frames,
and a reader can refuse an oversized frame from its header alone.

The header is text on purpose: with compact JSON (control characters escaped), the
host-to-sandbox stream never contains a byte below 0x20, so Docker's attach
"detach keys" (control characters) can never match inside it.

**Blobs.** A string of :data:`BLOB_MIN` characters or more (a context, a batch's
prompts) does not go through JSON: escaping and unescaping 100 MB took most of a
context load. It is sent first, as its raw UTF-8 in frames of kind ``b`` (more to
follow) and ``B`` (its last part), and the JSON holds :data:`BLOB_REF` followed by
its index among the message's blobs. The reader puts the strings back before it
validates, so a blob is only ever a string where the schema accepts one; blobs
count toward the message's size cap, a reference to a missing blob or a blob no
reference uses breaks the protocol, and a string that merely looks like a
reference is sent with ``=`` after :data:`BLOB_REF` so it cannot be taken for one
(and read back without it). Towards the
sandbox, a string holding :data:`DETACH_KEYS` goes as JSON, so the control bytes
stay escaped there.

**Messages.** Every message has a ``type``; the fields of each type and their JSON
types are fixed in :data:`FROM_HOST` and :data:`FROM_SANDBOX`, and
:func:`validate` rejects anything else (unknown type, missing or extra field, wrong
type, id out of range).

**Session.** The host sends ``hello``; the runner answers ``hello`` with its
protocol version, then serves requests one at a time: ``load_context`` ->
``loaded``, ``define_tools`` -> ``loaded`` (the host tools' specs, see
:mod:`tools`; sent after ``hello`` and before the first cell, replacing any tools
defined before), ``execute`` -> ``result`` (whose ``final`` is the answer the cell
gave with ``FINAL``/``FINAL_VAR``/``answer``, see :mod:`final`, or null),
``get_variable`` -> ``variable``, ``bind`` -> ``loaded`` (a JSON value under a
name, checked by the host against :mod:`names`), ``snapshot`` -> ``snapshot`` (the
variables as :mod:`snapshot` text, which the host carries and never parses) and
``restore`` -> ``restored`` (the names restored, or why nothing was). While a
cell runs, the runner may send ``call`` requests (sub-calls from model code); the
host answers each with ``reply`` or ``refused`` carrying the same id. ``interrupt``
asks the runner to stop the running cell (it then answers that cell's ``result``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

PROTOCOL_VERSION = 2

#: Payload bytes per frame.
MAX_FRAME = 1 << 20
#: Default cap on one reassembled message, per direction (the host sets its own).
DEFAULT_MAX_MESSAGE = 256 << 20
HEADER_SIZE = 9
PART, LAST = b"P", b"M"
BLOB_PART, BLOB_LAST = b"b", b"B"
#: Strings this long or longer travel as blobs.
BLOB_MIN = 1 << 16
#: How the JSON of a message refers to its blob number N: BLOB_REF + str(N).
BLOB_REF = "\x00rlm-blob:"
#: The attach detach keys the host sets (ctrl-^, ctrl-_): never raw towards the sandbox.
DETACH_KEYS = b"\x1e\x1f"
MAX_ID = (1 << 53) - 1

_NONE = type(None)
_JSON = (str, int, float, bool, list, dict, _NONE)

#: Messages the host sends; field -> accepted JSON types.
FROM_HOST: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {"protocol": (int,)},
    "load_context": {"id": (int,), "context": (str, list, dict)},
    "define_tools": {"id": (int,), "tools": (list,)},
    "bind": {"id": (int,), "name": (str,), "value": _JSON},
    "snapshot": {"id": (int,), "max_bytes": (int,)},
    "restore": {"id": (int,), "blob": (str,)},
    "execute": {"id": (int,), "code": (str,), "output_limit": (int,), "final_limit": (int,)},
    "get_variable": {"id": (int,), "name": (str,), "max_chars": (int,)},
    "interrupt": {"id": (int,)},
    "reply": {"id": (int,), "result": _JSON},
    "refused": {"id": (int,), "message": (str,)},
}

#: Messages the sandbox sends; the host accepts nothing else.
FROM_SANDBOX: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {"protocol": (int,), "python": (str,)},
    "loaded": {"id": (int,)},
    "result": {
        "id": (int,),
        "stdout": (str,),
        "stderr": (str,),
        "error": (str, _NONE),
        "truncated": (bool,),
        "interrupted": (bool,),
        "final": (dict, _NONE),
    },
    "variable": {"id": (int,), "found": (bool,), "value": (str,), "truncated": (bool,)},
    "snapshot": {"id": (int,), "blob": (str,), "names": (list,), "skipped": (dict,)},
    "restored": {"id": (int,), "names": (list,), "error": (str, _NONE)},
    "call": {"id": (int,), "method": (str,), "params": (dict,)},
    "fatal": {"message": (str,)},
}


class ProtocolViolation(ValueError):
    """A frame or message that breaks the protocol; the message says how."""


class TooManyValues(ProtocolViolation):
    """A message holds more JSON values than the reader takes (see :func:`parse`)."""


class Payload(bytes):
    """A message's JSON with the blobs it refers to (see Blobs above)."""

    blobs: list[bytearray]


def encode(message: dict[str, Any], *, raw_control: bool = True) -> Iterator[bytes]:
    """The frames of ``message``, headers and payloads as separate chunks.

    ``raw_control=False`` (host to sandbox) keeps :data:`DETACH_KEYS` out of blobs.
    """
    blobs: list[bytes] = []
    message = _take_blobs(message, blobs, raw_control)
    for blob in blobs:
        yield from _frames(memoryview(blob), BLOB_PART, BLOB_LAST)
    del blobs
    # One expression, so the JSON text is freed as soon as it is encoded: for a
    # big message that is not a string, that is its size less at the peak.
    yield from _frames(
        memoryview(_ENCODER.encode(message).encode("utf-8", "surrogatepass")),
        PART,
        LAST,
    )


#: A frame whose payload is no longer than this goes out as one chunk with its header.
#: Copying it costs less than the second write, and the second wake-up of the reader
#: that a header alone in the pipe or socket causes; a bigger payload is not copied.
JOIN_MAX = 1 << 16


#: One encoder for every message: json.dumps with options builds a new one per call,
#: which cost a small message (a sub-call, its reply) several times its encoding.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _frames(payload: memoryview, part: bytes, last: bytes) -> Iterator[bytes]:
    total = len(payload)
    start = 0
    while True:
        end = min(start + MAX_FRAME, total)
        kind = last if end == total else part
        head = kind + b"%08x" % (end - start)
        if end - start <= JOIN_MAX:
            yield head + payload[start:end]
        else:
            yield head
            yield payload[start:end]  # type: ignore[misc]
        if end == total:
            return
        start = end


def _take_blobs(value: Any, blobs: list[bytes], raw_control: bool) -> Any:
    """``value`` with each long string replaced by a reference to its blob."""
    if isinstance(value, str):
        if len(value) >= BLOB_MIN:
            data = value.encode("utf-8", "surrogatepass")
            if raw_control or data.find(DETACH_KEYS) < 0:
                blobs.append(data)
                return f"{BLOB_REF}{len(blobs) - 1}"
        if value.startswith(BLOB_REF):  # a string that only looks like a reference
            return f"{BLOB_REF}={value[len(BLOB_REF) :]}"
        return value
    if isinstance(value, dict):
        out = None
        for key, item in value.items():
            new = _take_blobs(item, blobs, raw_control)
            if new is not item:
                if out is None:
                    out = dict(value)
                out[key] = new
        return value if out is None else out
    if isinstance(value, (list, tuple)):
        items = None
        for i, item in enumerate(value):
            new = _take_blobs(item, blobs, raw_control)
            if new is not item:
                if items is None:
                    items = list(value)
                items[i] = new
        return value if items is None else items
    return value


def encode_bytes(message: dict[str, Any], *, raw_control: bool = True) -> bytes:
    """All frames of ``message`` as one bytes object (for small messages)."""
    return b"".join(encode(message, raw_control=raw_control))


class Decoder:
    """Turns a byte stream into messages, enforcing the frame and message caps.

    Feed it whatever arrives; it returns the complete messages so far: each one's
    JSON as ``bytes``, or as a :class:`Payload` when it came with blobs. After a
    :class:`ProtocolViolation` the stream is unusable and the decoder stays broken.
    Each payload byte is copied once, into the message (or blob) it belongs to.
    """

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._head = bytearray()
        self._kind = b""
        self._need = 0  # payload bytes of the current frame still to come
        self._json = bytearray()
        self._blob = bytearray()
        self._blobs: list[bytearray] = []
        self._size = 0
        self._broken: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received that are not yet part of a complete message."""
        in_frame = HEADER_SIZE if self._kind else 0
        return len(self._head) + in_frame + self._size - self._need

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add ``data``; returns the payloads of the messages it completed."""
        if self._broken is not None:
            raise ProtocolViolation(self._broken)
        done: list[bytes] = []
        try:
            with memoryview(data) as view:
                pos, end = 0, len(view)
                while pos < end:
                    if not self._kind:
                        take = min(HEADER_SIZE - len(self._head), end - pos)
                        self._head += view[pos : pos + take]
                        pos += take
                        if len(self._head) < HEADER_SIZE:
                            break
                        self._start_frame()
                    else:
                        take = min(self._need, end - pos)
                        target = self._json if self._kind in (PART, LAST) else self._blob
                        target += view[pos : pos + take]
                        pos += take
                        self._need -= take
                    if self._kind and not self._need:
                        self._end_frame(done)
        except ProtocolViolation as exc:
            self._broken = str(exc)
            raise
        return done

    def _start_frame(self) -> None:
        kind = bytes(self._head[:1])
        length = _frame_length(bytes(self._head[1:]))
        self._head.clear()
        if kind not in (PART, LAST, BLOB_PART, BLOB_LAST):
            raise ProtocolViolation(f"unknown frame kind {kind!r}")
        if kind in (PART, LAST) and self._blob:
            raise ProtocolViolation("a message began inside an unfinished blob")
        if self._size + length > self.max_message:
            raise ProtocolViolation(f"message larger than the {self.max_message:,}-byte limit")
        self._size += length
        self._kind, self._need = kind, length

    def _end_frame(self, done: list[bytes]) -> None:
        kind, self._kind = self._kind, b""
        if kind == BLOB_LAST:
            self._blobs.append(self._blob)
            self._blob = bytearray()
        elif kind == LAST:
            if self._blobs:
                payload = Payload(self._json)
                payload.blobs, self._blobs = self._blobs, []
                done.append(payload)
            else:
                done.append(bytes(self._json))
            self._json.clear()
            self._size = 0


def _frame_length(header: bytes) -> int:
    if len(header) != 8 or header.translate(None, b"0123456789abcdef"):
        raise ProtocolViolation(f"malformed frame header {header[:8]!r}")
    length = int(header, 16)
    if length > MAX_FRAME:
        raise ProtocolViolation(f"frame of {length:,} bytes is over the {MAX_FRAME:,}-byte cap")
    return length


#: What opens or separates JSON values outside strings.
_STRUCTURE = (b"[", b"{", b",")


def count_values(payload: bytes, limit: int) -> int:
    """An upper bound on the JSON values in ``payload``, counted no further than just
    past ``limit``, without decoding it.

    A decoded value costs the reader some 50 bytes however small its text, so a
    reader bounds the count first. Structural characters inside strings do not
    count: the scan skips each string to its closing quote. Every step is a call
    into C over at most :data:`_SCAN_STEP` bytes, so a thread running this lets the
    event loop in between.
    """
    count, pos, end = 1, 0, len(payload)
    while pos < end:
        quote = payload.find(b'"', pos)
        stop = end if quote < 0 else quote
        count += sum(payload.count(c, pos, stop) for c in _STRUCTURE)
        if count > limit or quote < 0:
            return count
        pos = quote + 1
        while True:  # through the string, a step at a time
            body = _STRING_BODY.match(payload, pos, min(end, pos + _SCAN_STEP))
            assert body is not None  # it matches the empty string
            pos = body.end()
            if pos >= end:
                return count  # unterminated: the decoder refuses it
            if payload[pos] == 0x22:  # the closing quote
                pos += 1
                break
    return count


#: Bytes of a string the scan reads in one step.
_SCAN_STEP = 1 << 20
#: As much of a JSON string's body as there is: plain characters and escape pairs.
_STRING_BODY = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.S)


def parse(
    payload: bytes,
    schema: dict[str, dict[str, tuple[type, ...]]],
    *,
    max_values: int | None = None,
) -> dict[str, Any]:
    """Decode one message's JSON and check it against ``schema``.

    ``max_values`` refuses, before decoding, a message of more JSON values than that.
    """
    if max_values is not None:
        # The raw count (strings included) is one fast pass and settles most messages.
        # As count_values counts.
        rough = 1 + payload.count(b"[") + payload.count(b"{") + payload.count(b",")
        if rough > max_values and count_values(payload, max_values) > max_values:
            raise TooManyValues(
                f"message holds more than {max_values:,} JSON values; send fewer, larger items"
            )
    try:
        message = _DECODER.decode(payload.decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolViolation(f"frame is not valid JSON ({str(exc)[:100]})") from None
    except RecursionError:
        raise ProtocolViolation("frame nests JSON too deeply") from None
    blobs: list[bytearray] = getattr(payload, "blobs", [])
    if blobs or _BLOB_REF_JSON in payload:
        message = _put_blobs(message, blobs)
    return validate(message, schema)


#: How :data:`BLOB_REF` reads in JSON text (json.dumps always writes NUL so).
_BLOB_REF_JSON = json.dumps(BLOB_REF)[1:-1].encode()
_BLOB_INDEX = re.compile(r"[0-9]{1,9}")


def _put_blobs(message: Any, blobs: list[bytearray]) -> Any:
    """``message`` with each blob reference replaced by its string (see Blobs above)."""
    used = [False] * len(blobs)

    def put(value: Any) -> Any:
        if isinstance(value, str):
            if not value.startswith(BLOB_REF):
                return value
            rest = value[len(BLOB_REF) :]
            if rest.startswith("="):
                return BLOB_REF + rest[1:]
            if _BLOB_INDEX.fullmatch(rest) is None or int(rest) >= len(blobs) or used[int(rest)]:
                raise ProtocolViolation("a blob reference points nowhere")
            used[int(rest)] = True
            try:
                return blobs[int(rest)].decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                raise ProtocolViolation("a blob is not valid UTF-8") from None
        if isinstance(value, dict):
            for key, item in value.items():
                value[key] = put(item)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                value[i] = put(item)
        return value

    try:
        message = put(message)
    except RecursionError:
        raise ProtocolViolation("frame nests JSON too deeply") from None
    if not all(used):
        raise ProtocolViolation("a blob no reference uses")
    return message


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e999 is valid JSON text but an infinity in Python, which encode() (and any
    # JSON the host writes later, e.g. a service's response) refuses.
    value = float(text)
    if value - value != 0.0:
        raise ValueError(f"number {text[:20]} is out of range")
    return value


#: One decoder for every message (as :data:`_ENCODER`): NaN, Infinity and numbers out
#: of a float's range are refused.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


def validate(message: object, schema: dict[str, dict[str, tuple[type, ...]]]) -> dict[str, Any]:
    """``message``, or :class:`ProtocolViolation` unless it matches one type in ``schema``."""
    if not isinstance(message, dict):
        raise ProtocolViolation("message is not a JSON object")
    kind = message.get("type")
    fields = schema.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise ProtocolViolation(f"unknown message type {str(kind)[:40]!r}")
    # Exactly the type and the fields: counted, then looked up (sets cost more).
    if len(message) != len(fields) + 1 or not all(name in message for name in fields):
        keys = set(message) - {"type"}
        missing = sorted(set(fields) - keys)
        extra = sorted(keys - set(fields))
        raise ProtocolViolation(
            f"{kind} message has wrong fields (missing {missing[:5]}, unexpected {extra[:5]})"
        )
    for name, types in fields.items():
        value = message[name]
        # bool is an int in Python; an id or a version must be a real integer.
        if isinstance(value, bool) and bool not in types:
            raise ProtocolViolation(f"{kind}.{name} has the wrong type (bool)")
        if not isinstance(value, types):
            raise ProtocolViolation(f"{kind}.{name} has the wrong type ({type(value).__name__})")
    ident = message.get("id")
    if ident is not None and not 0 <= ident <= MAX_ID:
        raise ProtocolViolation(f"{kind}.id is out of range")
    if kind == "result" and message["final"] is not None:
        check_final(message["final"])
    if "names" in fields and not all(isinstance(n, str) for n in message["names"]):
        raise ProtocolViolation(f"{kind}.names must be a list of str")
    if "skipped" in fields and not all(isinstance(w, str) for w in message["skipped"].values()):
        raise ProtocolViolation(f"{kind}.skipped must map names to str")
    return message


#: How a final answer was given (see :mod:`final`).
FINAL_HOWS = ("FINAL", "FINAL_VAR", "answer")


def check_final(final: dict[str, Any]) -> None:
    """A result's ``final``: {"value": JSON, "how": one of FINAL_HOWS, "converted"?: bool}."""
    keys = set(final)
    if not {"value", "how"} <= keys or not keys <= {"value", "how", "converted"}:
        raise ProtocolViolation(f"result.final has wrong fields ({sorted(keys)[:5]})")
    if final["how"] not in FINAL_HOWS:
        raise ProtocolViolation("result.final.how is not FINAL, FINAL_VAR or answer")
    converted = final.get("converted", False)
    if not isinstance(converted, bool) or (converted and not isinstance(final["value"], str)):
        raise ProtocolViolation("result.final.converted must be a bool, true only for a str")
