"""Killable jobs: each cell (or variable read) runs on a thread of the session's own.

A thread of the host process can be stopped only by raising an exception in it
(``PyThreadState_SetAsyncExc``), and only while it runs Python bytecode. So jobs
run on a :class:`CellThread` that belongs to one sandbox and runs nothing but that
sandbox's jobs -- never a pooled worker shared with other sessions or libraries: a
stop injected a moment too late must never land in a thread that now runs someone
else's work -- and stops are injected only while the job's own model code is on
that thread's stack (each :class:`Run` calls its own copy of the entry function,
so one job's stop can never land in the next job's frames either). Keeping the
thread across cells saves starting one per cell. A thread that will not stop
(blocked outside Python) is retired, left to a reaper that keeps trying, and the
sandbox's next job gets a new thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import decimal
import queue
import sys
import threading
import types
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

from rlm.backends.restricted.epoch import Epoch
from rlm.backends.restricted.limits import sandbox_decimal_context
from rlm.backends.restricted.stops import SandboxStop

#: How often a stop is injected again while the job's thread runs on.
REINJECT_INTERVAL_S = 0.02

# Two prototypes of the same C function: one raises a class, the other passes NULL,
# which withdraws an exception not yet delivered.
_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)


class Run:
    """One job (a cell, or reading a variable) on a thread of its own, and how to stop it.

    Stops are injected only into this job's own thread, only while it is alive, and
    only while model code is on its stack (see :func:`_in_model_code`): never into a
    thread that is back in host code, let alone one that another job or library
    now uses.
    """

    def __init__(self, epoch: Epoch, token: anyio.lowlevel.EventLoopToken) -> None:
        self.epoch = epoch
        self.token = token
        self.lock = threading.Lock()
        self.running = False
        self.finished = threading.Event()
        #: Set when the job ends or needs the event loop (a sub-call): what a short
        #: wait on the loop's thread waits for.
        self.wake = threading.Event()
        self.done = anyio.Event()
        self.stop_reason: type[SandboxStop] | None = None
        self.scopes: set[anyio.CancelScope] = set()
        # A code object of its own, so this job's frame is told apart from any other.
        self.entry = types.FunctionType(
            _thread_entry.__code__.replace(), _thread_entry.__globals__, "_thread_entry"
        )
        self.thread: threading.Thread | None = None
        # What the job produced.
        self.error: str | None = None
        self.value: Any = None

    def start(self, job: Callable[[], None], worker: CellThread) -> None:
        """Run ``job`` on ``worker``, the sandbox's own thread."""
        self.thread = worker.thread
        worker.submit(self, job)

    @property
    def over(self) -> bool:
        thread = self.thread
        return self.finished.is_set() or (thread is not None and not thread.is_alive())

    def arm(self) -> None:
        with self.lock:
            self.running = True

    def disarm(self) -> None:
        with self.lock:
            self.running = False
            # Withdraw an injected stop not yet delivered: nothing after this point
            # may be interrupted.
            _clear_async_exc(threading.get_ident(), None)

    def request_stop(self, reason: type[SandboxStop]) -> None:
        """Make every guard raise ``reason`` and raise it in the thread (any thread may call)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.epoch.guards.stop = reason
        self.inject()

    def inject(self) -> None:
        reason = self.stop_reason
        thread = self.thread
        if reason is None or thread is None:
            return
        with self.lock:
            tid = thread.ident
            if not self.running or tid is None or not thread.is_alive():
                return
            if _in_model_code(tid, self.entry.__code__):
                _set_async_exc(tid, reason)

    def notify(self) -> None:
        """Tell the event loop the job is over (from the job's thread), without waiting."""
        with contextlib.suppress(Exception):
            native = self.token.native_token
            if isinstance(native, asyncio.AbstractEventLoop):
                native.call_soon_threadsafe(self.done.set)
            else:  # another backend: the portable call, which waits for the loop
                anyio.from_thread.run_sync(self.done.set, token=self.token)

    def cancel_subcalls(self) -> None:
        """Cancel the sub-calls this job waits for; only on the event loop's thread."""
        for scope in list(self.scopes):
            scope.cancel()


def _thread_entry(run: Run, job: Callable[[], None]) -> None:
    """Run ``job``; a stop that arrives after model code has ended is absorbed here.

    Each :class:`Run` calls its own copy of this function (same code, distinct code
    object), which is how :func:`_in_model_code` recognises the job's frames.
    """
    started = False
    for _ in range(1000):
        try:
            if not started:
                started = True
                with decimal.localcontext(sandbox_decimal_context()):
                    run.arm()
                    job()
            run.disarm()
            break
        except SandboxStop as exc:
            if run.error is None:
                run.error = stop_message(type(exc))
        except BaseException as exc:
            if run.error is None:
                run.error = f"internal error in the sandbox: {type(exc).__name__}"


def _run_thread(run: Run, job: Callable[[], None]) -> None:
    # A stop that lands while the entry absorbs another ends it: the job is over
    # all the same.
    with contextlib.suppress(BaseException):
        run.entry(run, job)
    # Once the entry has returned, no stop is injected (no model code is on the
    # stack), so at most one is still pending: disarming withdraws it, unless it
    # lands first, once. The thread then goes on to the sandbox's next job clean.
    for _ in range(3):
        try:
            run.disarm()
            break
        except BaseException:
            continue
    run.finished.set()
    run.wake.set()
    run.notify()


class CellThread:
    """One sandbox's thread for its jobs, one at a time; see the module docstring."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Run, Callable[[], None]] | None] = queue.SimpleQueue()
        #: Set when the sandbox gave up on the job this thread runs: it ends after it.
        self.retired = False
        self.thread = threading.Thread(target=self._serve, name="rlm-restricted-cell", daemon=True)
        self.thread.start()

    @property
    def usable(self) -> bool:
        return not self.retired and self.thread.is_alive()

    def submit(self, run: Run, job: Callable[[], None]) -> None:
        self._jobs.put((run, job))

    def stop(self) -> None:
        """End the thread once it is idle (a job it runs still ends first)."""
        self.retired = True
        self._jobs.put(None)

    def _serve(self) -> None:
        while not self.retired:
            item = self._jobs.get()
            if item is None:
                return
            _run_thread(*item)
            del item  # waiting, the thread holds nothing of the sandbox's


def _in_model_code(thread_id: int, entry_code: CodeType) -> bool:
    """Whether the thread runs a job's model code (a cell frame above ``entry_code``)."""
    frame: FrameType | None = sys._current_frames().get(thread_id)
    model = False
    depth = 0
    while frame is not None and depth < 100_000:
        code = frame.f_code
        if code is entry_code:
            return model
        if code.co_filename.startswith("<cell "):
            model = True
        frame = frame.f_back
        depth += 1
    return False


def stop_message(reason: type[SandboxStop]) -> str:
    return reason.reason


def reap(run: Run) -> None:
    """Keep stopping a thread that would not stop, until it does (or the process ends)."""
    while not run.finished.wait(0.5) and not run.over:
        with contextlib.suppress(Exception):
            run.inject()
