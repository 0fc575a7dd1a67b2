"""Batches whose answers are handed to model code as they complete.

``llm_batch_iter`` / ``rlm_batch_iter`` in the sandbox open a stream
(``stream_open``), take what has arrived (``stream_next``, which waits for at least
one answer) and, when the loop is left early, close it (``stream_close``). A
:class:`StreamTable` is one session's open streams, owned by its bridge: each stream
runs its batch in a task of its own and buffers the answers until they are taken.

Closing a stream cancels its batch at once: queued prompts never start, in-flight
requests are dropped (the batcher cancels cleanly, see :mod:`rlm.subcalls.batcher`),
and neither is counted as a failure or retried.

Stream ids come back from untrusted code, so any value may arrive where an id is
expected; an id that is not one of this table's open streams is refused, and a
session can only ever name its own streams because each bridge has its own table.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from rlm.errors import BridgeRefusal

if TYPE_CHECKING:
    from rlm.subcalls.batcher import SubResult

log = logging.getLogger(__name__)

#: Runs a batch, calling the callback with each prompt's index and result as it
#: completes; e.g. ``lambda on_result: batcher.run(s, model, prompts, c, on_result=on_result)``.
#: What it returns is only read if it did not report every index (see
#: :meth:`StreamTable.open`).
Producer = Callable[[Callable[[int, "SubResult"], None]], Awaitable[object]]

#: What model code sees for an answer the host could not produce: never why.
_INTERNAL_ERROR = {
    "error": "the host could not complete this sub-call (internal error)",
    "kind": "error",
}
_CANCELLED = {"error": "the batch was cancelled on the host", "kind": "error"}
#: How long closing waits for a batch to finish cancelling. The batcher takes
#: milliseconds; the bound is for a producer that is slow to let go (a child run
#: closing its sandbox), so a session's end cannot hang on it.
_CLOSE_WAIT_S = 30.0


class _Stream:
    """One batch: the answers not yet taken, and which indices have answered."""

    __slots__ = ("answered", "closed", "count", "finished", "items", "ready", "task", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.items: list[list[Any]] = []
        self.answered = bytearray(total)
        self.count = 0
        self.ready = asyncio.Event()
        self.finished = False
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    def put(self, index: int, wire: dict[str, Any]) -> None:
        # The producer is host code, but a second answer for an index would make the
        # sandbox count past its total; only the first one counts.
        if 0 <= index < self.total and not self.answered[index]:
            self.answered[index] = 1
            self.count += 1
            self.items.append([index, wire])
            self.ready.set()

    def fill(self, wire: dict[str, Any], results: object = None) -> None:
        """Answer every index that has no answer yet: from ``results`` if it has one."""
        source: Sequence[object] = ()
        if isinstance(results, Sequence) and len(results) == self.total:
            source = results
        for index in range(self.total):
            if self.answered[index]:
                continue
            to_wire = getattr(source[index], "to_wire", None) if source else None
            self.put(index, to_wire() if callable(to_wire) else dict(wire))

    def end(self) -> None:
        self.finished = True
        self.ready.set()


class StreamTable:
    """One session's open streams; at most ``max_open`` at once."""

    def __init__(self, max_open: int = 16) -> None:
        if max_open < 1:
            raise ValueError("max_open must be at least 1")
        self.max_open = max_open
        self._streams: dict[int, _Stream] = {}
        #: Every batch task until it ends, with its stream: also those of streams read
        #: to the end and so out of the table, whose batch may still be wrapping up.
        #: The event loop only holds tasks weakly.
        self._running: dict[asyncio.Task[None], _Stream] = {}
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._streams)

    def open(self, total: int, produce: Producer) -> int:
        """Start ``produce`` in the background; returns the new stream's id.

        Every index in ``range(total)`` gets exactly one answer: the ones the producer
        reports, then, when it returns, any it left out (taken from what it returned
        when that is a list of ``total`` results, else an error), or, when it raises,
        an error for each one left (the cause is logged, never shown).
        """
        self.check_room()
        stream = _Stream(total)
        stream_id = next(self._ids)
        self._streams[stream_id] = stream
        # A task of its own, because the batch outlives the stream_open request; the
        # table holds it, and close/close_all end it (the bridge calls close_all at
        # the end of every cell and of the session).
        task = asyncio.create_task(self._drive(stream, produce), name=f"rlm-stream-{stream_id}")
        stream.task = task
        self._running[task] = stream
        task.add_done_callback(self._forget)
        return stream_id

    def check_room(self) -> None:
        """Refuse if another stream may not open now.

        :meth:`open` checks too; checking first lets a caller refuse before it
        reserves anything for the batch (its sub-call budget).
        """
        if len(self._streams) >= self.max_open:
            raise BridgeRefusal(
                f"{len(self._streams)} batch iterators are already open in this session "
                f"(the limit is {self.max_open}); finish one or leave its loop (break) "
                "before starting another"
            )

    async def next(self, stream: object) -> dict[str, Any]:
        """``{"items": [[index, answer], ...], "done": bool}``: every answer not yet
        taken, waiting until there is at least one or the batch is over."""
        stream_id, found = self._find(stream)
        if found is None:
            raise BridgeRefusal("no such open stream: it was never opened, or is closed")
        while not found.items and not found.finished:
            # Cleared only while the buffer is empty, so an answer put between the
            # check and the wait is never missed.
            found.ready.clear()
            await found.ready.wait()
        items, found.items = found.items, []
        # Every index answered is the end for the sandbox, even if the batch is still
        # wrapping up (its last events): it stops reading and will not close.
        done = found.finished or found.count == found.total
        if done and self._streams.get(stream_id) is found:
            del self._streams[stream_id]
        return {"items": items, "done": done}

    async def close(self, stream: object) -> None:
        """Cancel the stream's batch and wait until it has let go; unknown ids are fine."""
        stream_id, found = self._find(stream)
        if found is not None:
            del self._streams[stream_id]
            await self._cancel([found])

    async def close_all(self) -> None:
        """Close every open stream (the end of a cell, or of the session).

        Batches of streams already read to the end are waited for too (cancelled if
        still running), so nothing of the cell's outlives it.
        """
        streams = {id(s): s for s in [*self._streams.values(), *self._running.values()]}
        self._streams.clear()
        if streams:
            await self._cancel(list(streams.values()))

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)

    def _find(self, stream: object) -> tuple[int, _Stream | None]:
        # Any JSON value can arrive here: only a real int (not a bool) may be an id.
        if type(stream) is not int:
            return 0, None
        return stream, self._streams.get(stream)

    @staticmethod
    async def _cancel(streams: list[_Stream]) -> None:
        tasks = []
        for stream in streams:
            stream.closed = True
            if stream.task is not None and not stream.task.done():
                stream.task.cancel()
                tasks.append(stream.task)
        try:
            if tasks:
                # Shielded: a close that is itself cancelled (a cell's timeout, the run
                # stopping) must still see the batches let go of their requests
                # before the session goes on to close the client under them.
                with anyio.move_on_after(_CLOSE_WAIT_S, shield=True) as scope:
                    await asyncio.wait(tasks)
                if scope.cancelled_caught:
                    log.warning("%d streamed batches were slow to cancel", len(tasks))
        finally:
            # A task cancelled before it ever ran skips its own clean-up.
            for stream in streams:
                stream.end()

    @staticmethod
    async def _drive(stream: _Stream, produce: Producer) -> None:
        def on_result(index: int, result: SubResult) -> None:
            stream.put(index, result.to_wire())

        try:
            returned = await produce(on_result)
        except asyncio.CancelledError:
            if not stream.closed:
                # Cancelled by something else than close (the loop shutting down):
                # whoever still reads gets an answer for every index.
                stream.fill(_CANCELLED)
            raise
        except Exception:
            log.exception("a streamed batch failed inside the host")
            stream.fill(_INTERNAL_ERROR)
        else:
            stream.fill(_INTERNAL_ERROR, returned)
        finally:
            stream.end()
