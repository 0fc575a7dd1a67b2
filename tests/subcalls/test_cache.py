"""Response caches on their own: keys, memory bounds, files on disk."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from rlm.provider.client import ChatResult
from rlm.subcalls.cache import DiskCache, MemoryCache, request_key

MESSAGES = [{"role": "user", "content": "hello"}]


def test_keys_depend_on_model_messages_and_params_only() -> None:
    key = request_key("m", MESSAGES, {"temperature": 0, "top_p": 1})
    assert key == request_key("m", [dict(MESSAGES[0])], {"top_p": 1, "temperature": 0})
    assert len(key) == 64
    assert key != request_key("m2", MESSAGES, {"temperature": 0, "top_p": 1})
    assert key != request_key("m", MESSAGES, {"temperature": 1, "top_p": 1})
    assert key != request_key("m", [{"role": "user", "content": "hello!"}], {})


async def test_memory_cache_drops_the_least_recently_used() -> None:
    cache = MemoryCache(max_entries=2)
    await cache.put("a", ChatResult("A"))
    await cache.put("b", ChatResult("B"))
    assert await cache.get("a") == ChatResult("A")
    await cache.put("c", ChatResult("C"))
    assert await cache.get("b") is None
    assert len(cache) == 2


async def test_disk_cache_round_trips_and_shares_a_directory(tmp_path: Path) -> None:
    key = request_key("m", MESSAGES, {})
    await DiskCache(tmp_path).put(key, ChatResult("é answer", 3, 4))
    assert await DiskCache(tmp_path).get(key) == ChatResult("é answer", 3, 4)
    assert await DiskCache(tmp_path).get(request_key("other", MESSAGES, {})) is None
    assert [p.name async for p in anyio.Path(tmp_path).iterdir()] == [key[:2]]


def test_disk_cache_refuses_keys_that_are_not_digests(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DiskCache(tmp_path).path("../../etc/passwd")
