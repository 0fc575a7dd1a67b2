"""Server-Sent Events: framing, and keep-alive comments while nothing happens.

Runs last minutes; proxies and load balancers drop a connection that is silent
for tens of seconds, so a stream sends a comment line (which clients ignore)
whenever it has had nothing to say for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

#: Seconds of silence before a keep-alive comment (RLM_SERVE_KEEPALIVE_S overrides).
DEFAULT_KEEPALIVE_S = 10.0
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def keepalive_seconds() -> float:
    raw = os.environ.get("RLM_SERVE_KEEPALIVE_S")
    try:
        value = float(raw) if raw else DEFAULT_KEEPALIVE_S
    except ValueError:
        value = DEFAULT_KEEPALIVE_S
    return value if value > 0 else DEFAULT_KEEPALIVE_S


def message(data: Any, *, event: str | None = None, id: int | None = None) -> str:
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    text = data if isinstance(data, str) else json.dumps(data, default=str)
    lines.extend(f"data: {line}" for line in text.split("\n"))
    return "\n".join(lines) + "\n\n"


def comment(text: str) -> str:
    return f": {text}\n\n"


async def with_keepalive(source: AsyncIterator[str], interval: float) -> AsyncIterator[str]:
    """``source``'s messages, with a keep-alive comment after ``interval`` seconds
    without one. Closing this stream (the client left) closes ``source``."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    failure: list[BaseException] = []

    async def pump() -> None:
        try:
            async for item in source:
                await queue.put(item)
        except Exception as exc:
            failure.append(exc)
        finally:
            queue.put_nowait(None)

    task = asyncio.get_running_loop().create_task(pump())
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), interval)
            except TimeoutError:
                yield comment("keep-alive")
                continue
            if item is None:
                break
            yield item
        if failure:
            raise failure[0]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
