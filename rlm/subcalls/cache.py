"""An optional cache of sub-call answers, in memory or on disk for reruns.

A key is the SHA-256 of the request (model, messages and parameters) in canonical
JSON, so only an identical request hits. Only successful answers are kept. The
cache is off unless a :class:`~rlm.subcalls.batcher.Batcher` is given one: it is only right
for calls whose answer may be reused (deterministic settings, the same provider).

The disk cache is a directory of small JSON files, ``<dir>/<2 hex>/<64 hex>.json``,
written atomically (write, then rename), so a crashed run leaves no torn entry and
several processes may share one directory. A file that cannot be read or parsed is
a miss, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread

from rlm.provider.client import ChatResult


def request_key(
    model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
) -> str:
    """The cache key of one chat request."""
    canonical = json.dumps(
        {"model": model, "messages": list(messages), "params": dict(params)},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


class ResponseCache(Protocol):
    """Where answers are kept between identical requests."""

    async def get(self, key: str) -> ChatResult | None: ...

    async def put(self, key: str, answer: ChatResult) -> None: ...


class MemoryCache:
    """Answers in memory, least recently used dropped first."""

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, ChatResult] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> ChatResult | None:
        answer = self._entries.get(key)
        if answer is not None:
            self._entries.move_to_end(key)
        return answer

    async def put(self, key: str, answer: ChatResult) -> None:
        self._entries[key] = answer
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class DiskCache:
    """Answers as JSON files under ``directory``; they outlive the process."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError("a cache key is 64 lowercase hex digits")
        return self.directory / key[:2] / f"{key}.json"

    async def get(self, key: str) -> ChatResult | None:
        return await anyio.to_thread.run_sync(self._read, self.path(key))

    async def put(self, key: str, answer: ChatResult) -> None:
        await anyio.to_thread.run_sync(self._write, self.path(key), answer)

    @staticmethod
    def _read(path: Path) -> ChatResult | None:
        try:
            data = json.loads(path.read_bytes())
            return ChatResult(
                text=str(data["text"]),
                prompt_tokens=int(data.get("prompt_tokens", 0)),
                completion_tokens=int(data.get("completion_tokens", 0)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @staticmethod
    def _write(path: Path, answer: ChatResult) -> None:
        path.parent.mkdir(exist_ok=True)
        data = {
            "text": answer.text,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
