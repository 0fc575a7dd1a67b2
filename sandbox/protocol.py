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

PROTOCOL_VERSION = 1

#: Payload bytes per frame.
MAX_FRAME = 1 << 20
#: Default cap on one reassembled message, per direction (the host sets its own).
DEFAULT_MAX_MESSAGE = 256 << 20
HEADER_SIZE = 9
PART, LAST = b"P", b"M"
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


def encode(message: dict[str, Any]) -> Iterator[bytes]:
    """The frames of ``message``, headers and payloads as separate chunks."""
    # One expression, so the JSON text is freed as soon as it is encoded: for a
    # 100 MB context or batch that is 100 MB less at the peak.
    payload = memoryview(
        json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
            "utf-8", "surrogatepass"
        )
    )
    total = len(payload)
    start = 0
    while True:
        end = min(start + MAX_FRAME, total)
        kind = LAST if end == total else PART
        yield kind + b"%08x" % (end - start)
        if end > start:
            yield payload[start:end]  # type: ignore[misc]
        if end == total:
            return
        start = end


def encode_bytes(message: dict[str, Any]) -> bytes:
    """All frames of ``message`` as one bytes object (for small messages)."""
    return b"".join(encode(message))


class Decoder:
    """Turns a byte stream into messages, enforcing the frame and message caps.

    Feed it whatever arrives; it returns the complete messages so far. After a
    :class:`ProtocolViolation` the stream is unusable and the decoder stays broken.
    """

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._size = 0
        self._broken: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received that are not yet part of a complete message."""
        return len(self._buf) + self._size

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; returns the payloads of the messages it completed."""
        if self._broken is not None:
            raise ProtocolViolation(self._broken)
        self._buf += data
        done: list[bytes] = []
        pos = 0
        buf = self._buf
        try:
            while len(buf) - pos >= HEADER_SIZE:
                kind = bytes(buf[pos : pos + 1])
                length = _frame_length(bytes(buf[pos + 1 : pos + HEADER_SIZE]))
                if kind not in (PART, LAST):
                    raise ProtocolViolation(f"unknown frame kind {kind!r}")
                if self._size + length > self.max_message:
                    raise ProtocolViolation(
                        f"message larger than the {self.max_message:,}-byte limit"
                    )
                if len(buf) - pos - HEADER_SIZE < length:
                    break
                start = pos + HEADER_SIZE
                self._parts.append(bytes(buf[start : start + length]))
                self._size += length
                pos = start + length
                if kind == LAST:
                    done.append(b"".join(self._parts))
                    self._parts.clear()
                    self._size = 0
        except ProtocolViolation as exc:
            self._broken = str(exc)
            raise
        finally:
            del buf[:pos]
        return done


def _frame_length(header: bytes) -> int:
    if len(header) != 8 or not all(c in b"0123456789abcdef" for c in header):
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
        rough = 1 + sum(payload.count(c) for c in _STRUCTURE)  # as count_values counts
        if rough > max_values and count_values(payload, max_values) > max_values:
            raise TooManyValues(
                f"message holds more than {max_values:,} JSON values; send fewer, larger items"
            )
    try:
        message = json.loads(
            payload.decode("utf-8", "surrogatepass"),
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolViolation(f"frame is not valid JSON ({str(exc)[:100]})") from None
    except RecursionError:
        raise ProtocolViolation("frame nests JSON too deeply") from None
    return validate(message, schema)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e999 is valid JSON text but an infinity in Python, which encode() (and any
    # JSON the host writes later, e.g. a service's response) refuses.
    value = float(text)
    if value - value != 0.0:
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def validate(message: object, schema: dict[str, dict[str, tuple[type, ...]]]) -> dict[str, Any]:
    """``message``, or :class:`ProtocolViolation` unless it matches one type in ``schema``."""
    if not isinstance(message, dict):
        raise ProtocolViolation("message is not a JSON object")
    kind = message.get("type")
    fields = schema.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise ProtocolViolation(f"unknown message type {str(kind)[:40]!r}")
    keys = set(message) - {"type"}
    if keys != set(fields):
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
