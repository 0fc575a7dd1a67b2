"""The ``restricted`` backend: cells run in-process under RestrictedPython.

It needs nothing but this package, so it is the fallback when Docker is not
available. It guards against mistakes and casual escapes -- every known way out of
RestrictedPython is closed (see :mod:`rlm.backends.restricted_guards`) -- but it
shares the host's process, memory and GIL, so it is not a boundary for hostile
multi-tenant code: use the Docker backend for that.

How a cell runs:

- It is compiled under :class:`~rlm.backends.restricted_guards.SandboxPolicy` and
  executed on a thread of its own, so the host's event loop keeps serving sub-calls
  and other sessions meanwhile. (Not a pooled worker thread: a stop injected a
  moment too late must never land in a thread that now runs someone else's work.)
- At its deadline the host sets the epoch's stop flag (every guard then raises) and
  injects a ``BaseException`` into the thread (``PyThreadState_SetAsyncExc``), again
  and again while model code is on its stack. Model code cannot catch it: ``except``
  may only name ``Exception`` subclasses, and nothing may be caught once a stop is
  under way. If the thread still runs after a grace period (it is blocked outside
  Python) the namespace is abandoned to it and a fresh one (with ``context``) takes
  its place: ``state_lost=True``.
- A watchdog thread samples the process's resident memory while the cell runs and
  stops the cell with a MemoryError when it has grown by more than the limit. One
  C call that allocates gigabytes never lets the watchdog run; for that, a
  process-wide RLIMIT_DATA ceiling is in force while cells run (see
  :class:`_MemoryCeiling`), so the allocation fails with MemoryError instead of
  waking the OOM killer.

Known limits, inherent to running in-process: C code that computes for long without
returning to the interpreter (sorting a huge list, comparing huge structures built
from shared references) holds the GIL and stalls the host until it ends; the
guards bound the common cases (sizes up front, Python-level iteration for huge
ranges and ``itertools``, ``re`` on the ``regex`` engine with a timeout and the GIL
released) but cannot bound all of them. The memory watchdog measures the whole
process, so concurrent sessions share one budget.
- ``llm_query``/``llm_batch`` are the same functions as in Docker
  (:func:`rlm_sandbox.api.make_functions`); their transport hops to the host's event
  loop (``anyio.from_thread.run``) and calls :meth:`SessionBridge.call`.
"""

from __future__ import annotations

import contextlib
import ctypes
import decimal
import os
import sys
import threading
import time
import types
from collections.abc import Callable
from types import CodeType, FrameType, TracebackType
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from rlm_sandbox.api import RLMCallError, make_functions

from rlm.backends.base import CellResult, Sandbox
from rlm.backends.restricted_guards import (
    CellRejected,
    CellTimeout,
    Guards,
    MemoryLimitExceeded,
    SandboxStop,
    compile_cell,
    sandbox_decimal_context,
)
from rlm.bridge import SessionBridge
from rlm.errors import BridgeRefusal, SandboxError, VariableNotFound

__all__ = ["RestrictedSandbox"]

#: How long a stopped cell gets to unwind before its namespace is given up.
STOP_GRACE_S = 2.0
#: Time limit for turning a variable into text (``get_variable``).
VARIABLE_TIMEOUT_S = 10.0
_WATCHDOG_INTERVAL_S = 0.01
_REINJECT_INTERVAL_S = 0.02
_MAX_TRACEBACK_FRAMES = 30

# Two prototypes of the same C function: one raises a class, the other passes NULL,
# which withdraws an exception not yet delivered.
_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)


def _rss_bytes() -> int | None:
    """The process's resident set size, or None where /proc is not available."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


#: Room left for the host's own allocations above a running cell's ceiling.
_CEILING_HEADROOM = 1024**3


def _vm_data_bytes() -> int | None:
    """The process's private writable memory (what RLIMIT_DATA counts), where known."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmData:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class _MemoryCeiling:
    """A process-wide RLIMIT_DATA while cells run: the backstop for one huge C call.

    The watchdog can only stop a cell between bytecodes; a single C call such as
    ``list(zip(s, s[1:]))`` on a 100 MB string allocates gigabytes without ever
    returning to Python, and could bring the OOM killer onto the host. With the
    soft limit set to (memory in use now + every running cell's allowance +
    headroom for the host), such an allocation fails with MemoryError instead.
    It is recomputed from current usage whenever a cell starts or ends, and the
    operator's own limit is restored when none runs; it is never raised above it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, int] = {}
        self._original: tuple[int, int] | None = None

    def enter(self, key: int, allowance: int) -> None:
        with self._lock:
            if not self._active:
                self._original = _get_data_limit()
            self._active[key] = allowance
            self._apply()

    def leave(self, key: int) -> None:
        with self._lock:
            if self._active.pop(key, None) is None:
                return
            if self._active:
                self._apply()
            elif self._original is not None:
                _set_data_limit(*self._original)
                self._original = None

    def _apply(self) -> None:
        original, used = self._original, _vm_data_bytes()
        if original is None or used is None:
            return
        soft, hard = original
        ceiling = used + sum(self._active.values()) + _CEILING_HEADROOM
        for bound in (soft, hard):
            if bound != _UNLIMITED:
                ceiling = min(ceiling, bound)
        _set_data_limit(ceiling, hard)


try:
    import resource

    _UNLIMITED = resource.RLIM_INFINITY

    def _get_data_limit() -> tuple[int, int] | None:
        try:
            return resource.getrlimit(resource.RLIMIT_DATA)
        except (OSError, ValueError):
            return None

    def _set_data_limit(soft: int, hard: int) -> None:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))

except ImportError:  # pragma: no cover - not on POSIX: the watchdog alone
    _UNLIMITED = -1

    def _get_data_limit() -> tuple[int, int] | None:
        return None

    def _set_data_limit(soft: int, hard: int) -> None:
        return None


_CEILING = _MemoryCeiling()


class _SubCallCancelled(Exception):
    """The host gave up on a sub-call because the cell is being stopped."""


class _Epoch:
    """One incarnation of the namespace, with the guards bound to it."""

    def __init__(self, guards: Guards, namespace: dict[str, Any]) -> None:
        self.guards = guards
        self.namespace = namespace


class _Run:
    """One job (a cell, or reading a variable) on a thread of its own, and how to stop it.

    Stops are injected only into this job's own thread, only while it is alive, and
    only while model code is on its stack (see :func:`_in_model_code`): never into a
    thread that is back in host code, let alone one that another job or library
    now uses.
    """

    def __init__(self, epoch: _Epoch, token: anyio.lowlevel.EventLoopToken) -> None:
        self.epoch = epoch
        self.token = token
        self.lock = threading.Lock()
        self.running = False
        self.finished = threading.Event()
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

    def start(self, job: Callable[[], None]) -> None:
        self.thread = threading.Thread(
            target=_run_thread, args=(self, job), name="rlm-restricted-cell", daemon=True
        )
        self.thread.start()

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
        """Tell the event loop the job is over (from the job's thread)."""
        with contextlib.suppress(Exception):
            anyio.from_thread.run_sync(self.done.set, token=self.token)

    def cancel_subcalls(self) -> None:
        """Cancel the sub-calls this job waits for; only on the event loop's thread."""
        for scope in list(self.scopes):
            scope.cancel()


def _thread_entry(run: _Run, job: Callable[[], None]) -> None:
    """Run ``job``; a stop that arrives after model code has ended is absorbed here.

    Each :class:`_Run` calls its own copy of this function (same code, distinct code
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
                run.error = _stop_message(type(exc))
        except BaseException as exc:
            if run.error is None:
                run.error = f"internal error in the sandbox: {type(exc).__name__}"
    run.finished.set()
    run.notify()


def _run_thread(run: _Run, job: Callable[[], None]) -> None:
    try:
        run.entry(run, job)
    except BaseException:
        # A stop that landed while the entry was absorbing another: the job is over
        # all the same, and the thread is ours alone, so it may simply end.
        run.notify()


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


def _stop_message(reason: type[SandboxStop]) -> str:
    return reason.reason


class _Watchdog(threading.Thread):
    """Stops the job with a MemoryError when the process grows past the limit."""

    def __init__(self, run: _Run, limit: int) -> None:
        super().__init__(name="rlm-restricted-watchdog", daemon=True)
        self.run_ = run
        self.limit = limit
        self.baseline = _rss_bytes()

    def run(self) -> None:
        if self.baseline is None:
            return
        job = self.run_
        while not job.finished.wait(_WATCHDOG_INTERVAL_S) and not job.over:
            rss = _rss_bytes()
            if rss is not None and rss - self.baseline > self.limit:
                job.request_stop(MemoryLimitExceeded)
                job.finished.wait(_REINJECT_INTERVAL_S)


class RestrictedSandbox(Sandbox):
    """Runs cells in this process under RestrictedPython; see the module docstring."""

    name = "restricted"

    def __init__(
        self,
        bridge: SessionBridge,
        *,
        output_limit: int = 100_000,
        memory_limit_bytes: int = 2 * 1024**3,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        super().__init__(bridge, output_limit=output_limit)
        self.memory_limit_bytes = memory_limit_bytes
        self.stop_grace_s = stop_grace_s
        self._context: Any = None
        self._epoch: _Epoch | None = None
        self._run: _Run | None = None
        self._cells = 0
        self._sources: dict[str, list[str]] = {}
        self._lock: anyio.Lock | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._closed:
            raise SandboxError("this sandbox was closed; create a new one")
        if self._epoch is not None:
            return
        self._lock = anyio.Lock()
        self._token = anyio.lowlevel.current_token()
        self._epoch = self._new_epoch()

    async def load_context(self, context: Any) -> None:
        """Bind ``context``: a str as is (100 MB loads at once), a list or dict as a copy.

        The copy is made of plain JSON types (strings shared, not copied), so model
        code can neither change the caller's object nor reach anything but data.
        """
        self._started()
        if not isinstance(context, (str, list, dict)):
            raise TypeError(f"context must be a str, list or dict, not {type(context).__name__}")
        plain = plain_context(context)  # refuse what is not JSON-like before binding anything
        self._context = context
        assert self._epoch is not None
        self._epoch.namespace["context"] = plain

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        run = self._run
        if run is not None and not run.over:
            run.request_stop(CellTimeout)
            run.cancel_subcalls()
        self._epoch = None
        self._context = None
        self._sources.clear()

    def _token_(self) -> anyio.lowlevel.EventLoopToken:
        assert self._token is not None
        return self._token

    def _started(self) -> None:
        if self._closed:
            raise SandboxError("this sandbox was closed; create a new one")
        if self._epoch is None:
            raise SandboxError("the sandbox is not started; call start() first")

    def _new_epoch(self) -> _Epoch:
        guards = Guards(memory_limit=self.memory_limit_bytes, output_limit=self.output_limit)
        namespace: dict[str, Any] = {"__builtins__": guards.builtins}
        namespace.update(make_functions(self._make_transport(guards)))
        namespace["context"] = None if self._context is None else plain_context(self._context)
        return _Epoch(guards, namespace)

    # -- cells ------------------------------------------------------------------------------

    async def execute(self, code: str, timeout: float) -> CellResult:
        self._started()
        assert self._lock is not None
        if not isinstance(code, str):
            return CellResult(error="TypeError: a cell must be a str of Python code")
        async with self._lock:
            self._cells += 1
            filename = f"<cell {self._cells}>"
            epoch = self._epoch
            assert epoch is not None
            started = time.monotonic()
            run = _Run(epoch, self._token_())

            def job() -> None:
                self._run_cell(run, code, filename)

            stopped, lost = await self._run_job(run, job, timeout, watch_memory=True)
            output = epoch.guards.output
            stderr = ""
            if output.dropped:
                stderr = (
                    f"[output truncated: the cell printed more than {self.output_limit:,} "
                    "characters; the rest was dropped]"
                )
            error = run.error
            if lost:
                error = (error or "") + (
                    "\nthe cell could not be stopped; the sandbox was reset and every "
                    "variable except `context` is gone"
                )
            return CellResult(
                stdout=output.text(),
                stderr=stderr,
                error=_utf8(error.strip()) if error else None,
                timed_out=stopped is CellTimeout,
                duration_s=round(time.monotonic() - started, 4),
                state_lost=lost,
                truncated=output.dropped > 0,
            )

    def _run_cell(self, run: _Run, source: str, filename: str) -> None:
        """The cell's job on the worker thread: compile, execute, describe what went wrong."""
        guards = run.epoch.guards
        self._sources[filename] = source.splitlines()
        try:
            code = compile_cell(source, filename)
        except CellRejected as exc:
            run.error = _describe_rejection(str(exc))
            return
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            run.error = f"SyntaxError: the cell could not be compiled: {exc}"
            return
        try:
            exec(code, run.epoch.namespace)
        except SandboxStop:
            raise
        except BaseException as exc:  # model code's errors are results
            run.error = self._format_error(exc, guards)

    async def _run_job(
        self, run: _Run, job: Callable[[], None], timeout: float, *, watch_memory: bool
    ) -> tuple[type[SandboxStop] | None, bool]:
        """Run ``job`` on its own thread within ``timeout``; returns (stop reason, state lost)."""
        epoch = run.epoch
        epoch.guards.stop = None
        deadline = epoch.guards.deadline = time.monotonic() + max(timeout, 0.0)
        epoch.guards.output = type(epoch.guards.output)(self.output_limit)
        self._run = run
        watchdog = _Watchdog(run, self.memory_limit_bytes) if watch_memory else None
        _CEILING.enter(id(run), self.memory_limit_bytes)
        try:
            run.start(job)
            if watchdog is not None:
                watchdog.start()
            while not run.over and time.monotonic() < deadline:
                # The event is set by the thread as it ends; the short wait only
                # matters if the thread died before it could say so.
                with anyio.move_on_after(min(0.25, max(deadline - time.monotonic(), 0))):
                    await run.done.wait()
        except BaseException:
            # Cancelled from outside: the thread must not run on unwatched.
            with anyio.CancelScope(shield=True):
                await self._stop(run)
                _CEILING.leave(id(run))
            raise
        try:
            if run.over:
                if self._run is run:
                    self._run = None
                return run.stop_reason, False
            stopped = await self._stop(run)
            return run.stop_reason, not stopped
        finally:
            _CEILING.leave(id(run))

    async def _stop(self, run: _Run) -> bool:
        """Stop ``run`` within the grace period; False if its namespace had to be given up."""
        if not run.over:
            run.request_stop(CellTimeout)
            run.cancel_subcalls()
            guards = run.epoch.guards
            grace = self.stop_grace_s
            deadline = time.monotonic() + grace
            while not run.over and time.monotonic() < max(deadline, guards.busy_until + grace):
                with anyio.move_on_after(_REINJECT_INTERVAL_S):
                    await run.done.wait()
                run.inject()
                run.cancel_subcalls()
        if self._run is run:
            self._run = None
        if run.over:
            return True
        self._give_up(run)
        return False

    def _give_up(self, run: _Run) -> None:
        """The thread would not stop: leave it its namespace and start a fresh one."""
        if run.error is None:
            run.error = _stop_message(run.stop_reason or CellTimeout)
        if self._epoch is run.epoch and not self._closed:
            self._epoch = self._new_epoch()
        threading.Thread(
            target=_reap, args=(run,), name="rlm-restricted-reaper", daemon=True
        ).start()

    # -- variables --------------------------------------------------------------------------

    async def get_variable(self, name: str) -> str:
        self._started()
        assert self._lock is not None
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise VariableNotFound(f"{str(name)[:100]!r} is not a variable name")
        async with self._lock:
            epoch = self._epoch
            assert epoch is not None
            if name not in epoch.namespace:
                raise VariableNotFound(
                    f"no variable named {name!r} in the sandbox; assign it in a cell first"
                )
            value = epoch.namespace[name]
            if isinstance(value, str):
                return value if type(value) is str else str.__getitem__(value, slice(None))
            run = _Run(epoch, self._token_())
            limit = self.output_limit

            def job() -> None:
                try:
                    # str(), as the Docker runner does: FINAL_VAR of a date reads 2024-01-01.
                    text = epoch.guards.to_str(value)
                except SandboxStop:
                    raise
                except Exception as exc:
                    run.value = f"<{type(value).__name__} that cannot be shown: {exc}>"
                    return
                if len(text) > limit:
                    text = f"{text[:limit]}... [truncated: {len(text):,} characters]"
                run.value = text

            stopped, _lost = await self._run_job(run, job, VARIABLE_TIMEOUT_S, watch_memory=True)
            if stopped is not None or not isinstance(run.value, str):
                reason = _stop_message(stopped or CellTimeout)
                return f"<{type(value).__name__} that cannot be shown: {reason}>"
            return str(run.value)

    # -- sub-calls --------------------------------------------------------------------------

    def _make_transport(self, guards: Guards) -> Callable[[str, dict[str, Any]], Any]:
        """The transport behind llm_query/llm_batch: a hop to the event loop and the bridge."""
        sandbox = self

        def transport(method: str, params: dict[str, Any]) -> Any:
            guards.check()
            run = sandbox._run
            token = sandbox._token
            if run is None or token is None:
                raise RLMCallError("sub-calls are only available while a cell runs")
            plain = _plain(params)  # on this thread: it may run the model's methods
            try:
                return anyio.from_thread.run(sandbox._host_call, run, method, plain, token=token)
            except SandboxStop:
                raise
            except _SubCallCancelled:
                guards.check()
                message = "the sub-call was cancelled"
            except BridgeRefusal as exc:
                message = str(exc)
            except Exception as exc:
                message = f"the host could not complete this sub-call ({type(exc).__name__})"
            raise RLMCallError(message)

        return transport

    async def _host_call(self, run: _Run, method: str, params: dict[str, Any]) -> Any:
        if run.stop_reason is not None:
            raise _SubCallCancelled
        with anyio.CancelScope() as scope:
            run.scopes.add(scope)
            try:
                return await self.bridge.call(method, params)
            finally:
                run.scopes.discard(scope)
        raise _SubCallCancelled

    # -- errors -----------------------------------------------------------------------------

    def _format_error(self, exc: BaseException, guards: Guards) -> str:
        """A traceback of the cell's own frames, as Python would print it."""
        parts: list[str] = []
        seen: set[int] = set()
        current: BaseException | None = exc
        chain: list[tuple[BaseException, str | None]] = []
        while current is not None and id(current) not in seen and len(chain) < 5:
            seen.add(id(current))
            if current.__cause__ is not None:
                chain.append(
                    (
                        current,
                        "The above exception was the direct cause of the following exception:",
                    )
                )
                current = current.__cause__
            elif current.__context__ is not None and not current.__suppress_context__:
                chain.append(
                    (current, "During handling of the above exception, another exception occurred:")
                )
                current = current.__context__
            else:
                chain.append((current, None))
                current = None
        for index, (item, _link) in enumerate(reversed(chain)):
            if index:
                parts.append("\n" + (chain[len(chain) - index][1] or "") + "\n\n")
            parts.append(self._format_one(item, guards))
        return "".join(parts).rstrip()

    def _format_one(self, exc: BaseException, guards: Guards) -> str:
        frames = [
            (filename, lineno, frame.f_code.co_name)
            for frame, lineno in _walk_tb(exc.__traceback__)
            if (filename := frame.f_code.co_filename) in self._sources
        ]
        lines: list[str] = []
        if frames:
            lines.append("Traceback (most recent call last):\n")
            lines.extend(self._frame_lines(frames))
        lines.append(_exception_line(exc, guards, self.output_limit))
        return "".join(lines)

    def _frame_lines(self, frames: list[tuple[str, int, str]]) -> list[str]:
        out: list[str] = []
        omitted = max(0, len(frames) - _MAX_TRACEBACK_FRAMES)
        if omitted:
            frames = frames[:5] + frames[-(_MAX_TRACEBACK_FRAMES - 5) :]
        previous: tuple[str, int, str] | None = None
        repeats = 0
        for i, frame in enumerate(frames):
            if omitted and i == 5:
                out.append(f"  [... {omitted} more frames ...]\n")
            if frame == previous:
                repeats += 1
                if repeats >= 3:
                    continue
            else:
                if repeats >= 3:
                    out.append(f"  [Previous line repeated {repeats - 2} more times]\n")
                repeats = 0
            previous = frame
            filename, lineno, name = frame
            out.append(f'  File "{filename}", line {lineno}, in {name}\n')
            source = self._sources.get(filename, [])
            if 0 < lineno <= len(source):
                out.append(f"    {source[lineno - 1].strip()[:300]}\n")
        if repeats >= 3:
            out.append(f"  [Previous line repeated {repeats - 2} more times]\n")
        return out


def _walk_tb(tb: TracebackType | None) -> list[tuple[FrameType, int]]:
    out: list[tuple[FrameType, int]] = []
    while tb is not None and len(out) < 100_000:
        out.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    return out


def _exception_line(exc: BaseException, guards: Guards, limit: int) -> str:
    name = type(exc).__name__
    try:
        if isinstance(exc, KeyError) and len(exc.args) == 1:
            message = guards.repr(exc.args[0])  # as Python shows it: KeyError: 'k'
        elif len(exc.args) == 1 and isinstance(exc.args[0], str):
            message = exc.args[0]
        elif not exc.args:
            message = ""
        else:
            message = guards.to_str(exc)
    except SandboxStop:
        raise
    except Exception:  # too big, or broken, to show
        message = "<the exception's message could not be shown>"
    if isinstance(message, str) and type(message) is not str:
        message = str.__getitem__(message, slice(None))
    if len(message) > limit:
        message = f"{message[:limit]}... [message truncated]"
    return f"{name}: {message}\n" if message else f"{name}\n"


def _describe_rejection(errors: str) -> str:
    if "SyntaxError" in errors or "IndentationError" in errors:
        return errors
    return "the sandbox refused this cell:\n" + errors


def _plain(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` made only of exact built-in JSON types.

    Host code then never holds (and so never calls methods of) a class the model
    defined, such as a ``str`` subclass with its own ``__eq__``.
    """
    if depth > 20:
        raise RLMCallError("the sub-call's arguments are nested too deeply")
    if value is None or type(value) in (bool, float):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return value if type(value) is str else str.__getitem__(value, slice(None))
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, (list, tuple)):
        return [
            _plain(v, depth + 1)
            for v in (list.copy(value) if isinstance(value, list) else tuple(value))
        ]
    if isinstance(value, dict):
        return {_plain(k, depth + 1): _plain(v, depth + 1) for k, v in dict.items(value)}
    raise RLMCallError(f"a sub-call argument of type {type(value).__name__} cannot be sent")


def _utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def plain_context(value: Any, depth: int = 0) -> Any:
    """``value`` rebuilt from exact str/int/float/bool/None/list/dict (strings not copied)."""
    if depth > 100:
        raise TypeError("context is nested more than 100 levels deep")
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__getitem__(value, slice(None))
    if isinstance(value, (list, tuple)):
        return [plain_context(v, depth + 1) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in dict.items(value):
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"context keys must be JSON-like, not {type(k).__name__}")
            out[plain_context(k, depth + 1)] = plain_context(v, depth + 1)
        return out
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return float.__float__(value)
    raise TypeError(f"context must hold only JSON-like data, not {type(value).__name__}")


def _reap(run: _Run) -> None:
    """Keep stopping a thread that would not stop, until it does (or the process ends)."""
    while not run.finished.wait(0.5) and not run.over:
        with contextlib.suppress(Exception):
            run.inject()
