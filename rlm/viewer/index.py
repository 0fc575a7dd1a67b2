"""A trajectory file read incrementally: where each event's line starts, and
pages of event summaries small enough for a browser.

A trajectory can be hundreds of megabytes (long cell outputs, thousands of
iterations) and may still be growing (a run in progress appends a line per event).
The index keeps only the byte offset of each complete line; a page of events is
read back from the file and each event summarized: strings longer than
:data:`PREVIEW_CHARS` are cut, and the summary says how long they were, so the page
can fetch one field whole when the user asks (:meth:`TrajectoryIndex.field`).
"""

from __future__ import annotations

import json
import os
import threading
from array import array
from pathlib import Path
from typing import Any

#: Characters of a string field a summary keeps; the rest is fetched on demand.
PREVIEW_CHARS = 2000
#: Bytes of raw events one page reads at most (at least one event is always read).
PAGE_BYTES = 4_000_000
#: Events one page holds at most.
PAGE_EVENTS = 2000
#: Characters of one field :meth:`TrajectoryIndex.field` returns at most.
FIELD_CHARS = 8_000_000
_SCAN_CHUNK = 1 << 20


def summarize(event: Any, seq: int) -> dict[str, Any]:
    """``event`` with ``seq`` (its number, from 1) and every top-level string cut to
    :data:`PREVIEW_CHARS`; ``cut`` maps each cut field to its full length."""
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return {"event": "unreadable", "seq": seq, "error": "not an event object"}
    summary: dict[str, Any] = {}
    cut: dict[str, int] = {}
    for key, value in event.items():
        if isinstance(value, str) and len(value) > PREVIEW_CHARS:
            summary[key] = value[:PREVIEW_CHARS]
            cut[key] = len(value)
        else:
            summary[key] = value
    summary["seq"] = seq
    if cut:
        summary["cut"] = cut
    return summary


class TrajectoryIndex:
    """The events of one JSON-lines file, numbered 1, 2, ... in file order.

    Safe to call from several threads. Only complete lines (ending in a newline)
    count: the line a writer is in the middle of appears once it is finished. A
    file that shrinks (replaced, truncated) is indexed again from its start.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._offsets = array("q")  # start of line i (seq i + 1)
        self._scanned = 0  # bytes indexed: the end of the last complete line
        self._lock = threading.Lock()
        self._identity: tuple[int, int] | None = None

    @property
    def size(self) -> int:
        """Bytes indexed so far."""
        return self._scanned

    def __len__(self) -> int:
        return len(self._offsets)

    def refresh(self) -> int:
        """Index the lines appended since the last call; the number of events now."""
        with self._lock:
            try:
                stat = os.stat(self.path)
            except FileNotFoundError:
                stat = None
            identity = None if stat is None else (stat.st_dev, stat.st_ino)
            size = 0 if stat is None else stat.st_size
            if identity != self._identity or size < self._scanned:
                self._offsets = array("q")
                self._scanned = 0
                self._identity = identity
            if size > self._scanned:
                self._scan()
            return len(self._offsets)

    def _scan(self) -> None:
        with self.path.open("rb") as file:
            file.seek(self._scanned)
            start = self._scanned  # where the line being read began
            position = self._scanned  # file offset of chunk[0]
            while chunk := file.read(_SCAN_CHUNK):
                found = chunk.find(b"\n")
                while found != -1:
                    line_end = position + found + 1
                    if line_end - start > 1:  # blank lines are no events
                        self._offsets.append(start)
                    start = line_end
                    found = chunk.find(b"\n", found + 1)
                position += len(chunk)
            self._scanned = start

    def _span(self, seq: int) -> tuple[int, int]:
        """Start and end (past the newline) of event ``seq``'s line."""
        start = self._offsets[seq - 1]
        end = self._offsets[seq] if seq < len(self._offsets) else self._scanned
        return start, end

    def page(self, after: int = 0, limit: int = PAGE_EVENTS) -> list[dict[str, Any]]:
        """Summaries of the events after number ``after``: at most ``limit``, and no
        more than :data:`PAGE_BYTES` of the file read (but always one, if any)."""
        return [_summary_of(line, seq) for seq, line in self._lines(after, limit)]

    def page_json(self, after: int = 0, limit: int = PAGE_EVENTS) -> bytes:
        """:meth:`page` as a JSON array, made faster: a short event's line is checked
        and passed on as written, with its number added, rather than decoded and
        encoded again (most events of a long run are short)."""
        parts = []
        for seq, line in self._lines(after, limit):
            raw = _as_written(line, seq) if len(line) <= PREVIEW_CHARS else None
            parts.append(raw if raw is not None else _dump(_summary_of(line, seq)))
        return b"[" + b",".join(parts) + b"]"

    def _lines(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        with self._lock:
            total = len(self._offsets)
            first = max(after, 0) + 1
            if first > total:
                return []
            last = first
            start = self._offsets[first - 1]
            budget = min(max(limit, 1), PAGE_EVENTS)
            while last < total and last - first + 1 < budget:
                if self._span(last + 1)[1] - start > PAGE_BYTES:
                    break
                last += 1
            end = self._span(last)[1]
            with self.path.open("rb") as file:
                file.seek(start)
                data = file.read(end - start)
            bounds = [self._offsets[i - 1] - start for i in range(first, last + 1)]
        bounds.append(len(data))
        return [(first + i, data[bounds[i] : bounds[i + 1]]) for i in range(len(bounds) - 1)]

    def event(self, seq: int) -> dict[str, Any] | None:
        """Event ``seq`` as written, or None when there is no such event (or it is
        not a JSON object)."""
        with self._lock:
            if not 1 <= seq <= len(self._offsets):
                return None
            start, end = self._span(seq)
            with self.path.open("rb") as file:
                file.seek(start)
                data = file.read(end - start)
        try:
            event = json.loads(data)
        except ValueError:
            return None
        return event if isinstance(event, dict) else None

    def field(self, seq: int, name: str) -> str | None:
        """One string field of event ``seq`` whole (up to :data:`FIELD_CHARS`, with a
        note of what was left out), or None when the event or field is missing."""
        event = self.event(seq)
        value = None if event is None else event.get(name)
        if not isinstance(value, str):
            return None
        if len(value) > FIELD_CHARS:
            left = len(value) - FIELD_CHARS
            return f"{value[:FIELD_CHARS]}\n… ({left:,} more characters not shown)"
        return value


class _OddNumber(ValueError):
    """NaN or an infinity: Python writes and reads them, a browser's JSON does not."""


def _refuse(name: str) -> None:
    raise _OddNumber(name)


_STRICT = json.JSONDecoder(parse_constant=_refuse)
_LENIENT = json.JSONDecoder(parse_constant=lambda name: None)  # those become null


def _summary_of(line: bytes, seq: int) -> dict[str, Any]:
    try:
        event = _LENIENT.decode(line.decode("utf-8"))
    except ValueError as exc:
        return {"event": "unreadable", "seq": seq, "error": f"not JSON: {exc}"}
    return summarize(event, seq)


def _as_written(line: bytes, seq: int) -> bytes | None:
    """A short line as it is, with ``"seq"`` added last (so it wins over one the
    event may carry), when it is plain JSON text of an event; else None."""
    text = line.strip()
    if not text.startswith(b"{") or not text.endswith(b"}"):
        return None
    try:
        event = _STRICT.decode(text.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return None
    return text[:-1] + b',"seq":%d}' % seq


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
