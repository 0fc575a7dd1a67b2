"""One in-flight run's events: written to the store in small batches, and fanned
out to the readers following it live.

The store numbers a run's events 1, 2, ... as they are appended; this replica is
the only writer of the runs it owns, so it numbers them the same way as they are
emitted, and a reader can join the stored part and the live part without a gap or
a repeat (see :meth:`LiveRun.follow` in :mod:`rlm.service.runs`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from rlm.events import TRANSIENT_EVENTS

if TYPE_CHECKING:
    from rlm.service.store import Store

log = logging.getLogger("rlm.service")

#: Events written per batch at most, and how long an event may wait for its batch:
#: a crash loses at most this much of a run's log.
BATCH_EVENTS = 64
BATCH_DELAY_S = 0.1
#: Events a slow live reader may fall behind by before it is cut off (it can
#: reconnect with Last-Event-ID and read the rest from the store).
READER_BACKLOG = 10_000

#: What a reader's queue receives: (seq, event), seq None for transient events; or
#: None when the run has ended.
Item = tuple[int | None, dict[str, Any]] | None


class EventLog:
    """Numbers a run's events, writes the lasting ones, and hands all to readers."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.seq = 0
        #: Numbered events not yet known to be in the store (the batch being
        #: written included, until its write returns).
        self.unwritten: list[tuple[int, dict[str, Any]]] = []
        self._readers: set[asyncio.Queue[Item]] = set()
        self._wake = asyncio.Event()
        self._closed = False
        self._writer: asyncio.Task[None] | None = None
        # The writer and the run's end may flush at once: one batch at a time, or
        # a batch would be written twice.
        self._flushing = asyncio.Lock()

    def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    # -- the run's side ------------------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
        """Called from the run's task for every event, as it happens."""
        seq: int | None = None
        if event.get("event") not in TRANSIENT_EVENTS:
            self.seq += 1
            seq = self.seq
            self.unwritten.append((seq, event))
            if len(self.unwritten) >= BATCH_EVENTS:
                self._wake.set()
            elif len(self.unwritten) == 1:
                asyncio.get_running_loop().call_later(BATCH_DELAY_S, self._wake.set)
        for queue in list(self._readers):
            if queue.qsize() >= READER_BACKLOG:
                self._drop(queue)
            else:
                queue.put_nowait((seq, event))

    async def close(self) -> None:
        """Write what is left and end every reader's stream (the run has ended and
        its final status is stored)."""
        self._closed = True
        self._wake.set()
        if self._writer is not None:
            await asyncio.shield(self._writer)
        for queue in list(self._readers):
            self._drop(queue)

    async def flush(self) -> None:
        async with self._flushing:
            while self.unwritten:
                batch = self.unwritten[:BATCH_EVENTS]
                try:
                    await self.store.append_events(self.run_id, [event for _, event in batch])
                except Exception:
                    # The run goes on without its log rather than failing for it.
                    log.exception("could not store %d event(s) of run %s", len(batch), self.run_id)
                del self.unwritten[: len(batch)]

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()
            if self._closed:
                return

    # -- readers -------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[Item]:
        queue: asyncio.Queue[Item] = asyncio.Queue()
        if self._closed and self._writer is not None and self._writer.done():
            queue.put_nowait(None)
        else:
            self._readers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Item]) -> None:
        self._readers.discard(queue)

    def _drop(self, queue: asyncio.Queue[Item]) -> None:
        self._readers.discard(queue)
        queue.put_nowait(None)
