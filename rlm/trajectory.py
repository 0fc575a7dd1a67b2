"""A run's events, kept in memory and, when asked, written as JSON lines to a file."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from rlm.events import TRANSIENT_EVENTS, EventName


class Trajectory:
    """Collects events; each carries ``event`` (its kind) and ``t`` (seconds since start)."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.events: list[dict[str, Any]] = []
        self.on_event = on_event
        self._started = time.monotonic()
        self._file: IO[str] | None = None
        if path is not None:
            # Line-buffered so a crash or Ctrl-C still leaves every event so far on disk.
            self._file = Path(path).open("a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def emit(self, event: dict[str, Any]) -> None:
        event = {**event, "t": round(time.monotonic() - self._started, 4)}
        if self.on_event is not None:
            self.on_event(event)
        if event["event"] in TRANSIENT_EVENTS:
            return
        self.events.append(event)
        if self._file is not None:
            self._file.write(json.dumps(event, default=str) + "\n")

    def add(self, kind: EventName, /, **data: Any) -> None:
        self.emit({"event": kind, **data})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
