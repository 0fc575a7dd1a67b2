"""What the harness watches while a payload runs: the frames crossing the bridge,
and the host's event loop.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from rlm.bridge import BatchRunner, SessionBridge
from rlm.security.hostside import Canary
from rlm.session import SessionState


def _scan(value: Any, depth: int = 0) -> str:
    """Plain data as text, without calling any method an object from the sandbox defines."""
    if depth > 8:
        return "..."
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict):
        return " ".join(_scan(k, depth + 1) + " " + _scan(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return " ".join(_scan(v, depth + 1) for v in value)
    if isinstance(value, int) and value.bit_length() < 4000:
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value)
    return f"<{type(value).__name__}>"


class RecordingBridge(SessionBridge):
    """A SessionBridge that looks at every frame crossing it, both ways.

    ``session`` is swapped by the harness for each payload; the sandbox never sees it.
    """

    def __init__(
        self, batcher: BatchRunner, session: SessionState, canary: Canary, **parts: Any
    ) -> None:
        super().__init__(batcher, session, **parts)
        self.canary = canary
        self.frames = 0
        self.refusals = 0
        self.leaks: list[str] = []

    def reset(self) -> None:
        self.frames = self.refusals = 0
        self.leaks = []

    async def call(self, method: object, params: object) -> Any:
        self.frames += 1
        if self.canary.found_in(_scan(method) + " " + _scan(params)):
            self.leaks.append(f"request frame {self.frames} ({_scan(method)[:40]})")
        try:
            result = await super().call(method, params)
        except Exception as exc:
            self.refusals += 1
            if self.canary.found_in(str(exc)):
                self.leaks.append(f"refusal of frame {self.frames}")
            raise
        if self.canary.found_in(_scan(result)):
            self.leaks.append(f"reply to frame {self.frames}")
        return result


#: Longest the host's event loop may go unserved while a payload runs. An in-process
#: backend holding the GIL in one long C call freezes every session of the host.
#: Building a 2 GiB string in one call (allowed: it is within the memory limit) takes
#: up to 3 s on a loaded 2-core machine; an unbounded C loop takes as long as it likes.
HOST_STALL_LIMIT = 5.0


class Heartbeat:
    """Measures the longest time the host's event loop could not run a task."""

    interval = 0.05

    def __init__(self) -> None:
        self.worst = 0.0
        self.last = time.monotonic()

    async def run(self) -> None:
        while True:
            self.last = time.monotonic()
            await anyio.sleep(self.interval)
            self.stop()

    def stop(self) -> None:
        # Also called when the payload ends: a beat that is overdue right then (the
        # loop was frozen until just now) counts too.
        self.worst = max(self.worst, time.monotonic() - self.last - self.interval)
