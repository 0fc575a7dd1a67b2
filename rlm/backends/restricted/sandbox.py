"""The ``restricted`` backend: cells run in-process under RestrictedPython.

It needs nothing but this package, so it is the fallback when Docker is not
available. It guards against mistakes and casual escapes -- every known way out of
RestrictedPython is closed (see :mod:`rlm.backends.restricted.guards`) -- but it
shares the host's process, memory and GIL, so it is not a boundary for hostile
multi-tenant code: use the Docker backend for that.

How a cell runs:

- It is compiled under :class:`~rlm.backends.restricted.policy.SandboxPolicy` and
  executed on the sandbox's own thread (:mod:`rlm.backends.restricted.jobs`), so the
  host's event loop keeps serving sub-calls and other sessions meanwhile. (Not a
  pooled worker thread: a stop injected a moment too late must never land in a
  thread that now runs someone else's work.)
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
  :class:`~rlm.backends.restricted.memory.MemoryCeiling`), so the allocation fails
  with MemoryError instead of waking the OOM killer.
- ``llm_query``/``llm_batch`` are the same functions as in Docker
  (:func:`rlm_sandbox.api.make_functions`); their transport hops to the host's event
  loop (``anyio.from_thread.run``) and calls :meth:`SessionBridge.call`.

Known limits, inherent to running in-process: C code that computes for long without
returning to the interpreter (sorting a huge list, comparing huge structures built
from shared references) holds the GIL and stalls the host until it ends; the
guards bound the common cases (sizes up front, Python-level iteration for huge
ranges and ``itertools``, ``re`` on the ``regex`` engine with a timeout and the GIL
released) but cannot bound all of them. The memory watchdog measures the whole
process, so concurrent sessions share one budget. Both limits go away when this
sandbox runs in a worker process (:mod:`rlm.backends.restricted.process`).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from rlm_sandbox import snapshot
from rlm_sandbox.api import RLMCallError, make_functions

from rlm.backends.base import MIN_SNAPSHOT_BYTES, CellResult, Sandbox, Snapshot
from rlm.backends.restricted.epoch import Epoch, new_guards
from rlm.backends.restricted.guards import Guards
from rlm.backends.restricted.jobs import REINJECT_INTERVAL_S, CellThread, Run, reap, stop_message
from rlm.backends.restricted.memory import CEILING, WATCHDOG
from rlm.backends.restricted.plain import CONTEXT, SUB_CALL, plain_copy
from rlm.backends.restricted.policy import CellRejected, compile_cell
from rlm.backends.restricted.stops import CellTimeout, SandboxStop
from rlm.backends.restricted.tracebacks import describe_rejection, format_error
from rlm.backends.values import check_bind
from rlm.bridge import SessionBridge
from rlm.errors import BridgeRefusal, SandboxError, SnapshotError, VariableNotFound

__all__ = ["RestrictedSandbox"]

#: How long a stopped cell gets to unwind before its namespace is given up.
STOP_GRACE_S = 2.0
#: How long the event loop waits for a job at once before it awaits its end (most
#: cells end within it, and skip the event loop's wake-up).
_QUICK_WAIT_S = 0.0002
#: Time limit for turning a variable into text (``get_variable``).
VARIABLE_TIMEOUT_S = 10.0


class _SubCallCancelled(Exception):
    """The host gave up on a sub-call because the cell is being stopped."""


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
        self._epoch: Epoch | None = None
        self._run: Run | None = None
        self._worker: CellThread | None = None
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
        plain = plain_copy(context, CONTEXT)  # refuse what is not JSON-like before binding anything
        self._context = context
        assert self._epoch is not None
        self._epoch.namespace["context"] = plain

    async def bind(self, name: str, value: Any) -> None:
        self._started()
        assert self._lock is not None
        plain = check_bind(
            name, value, self._tool_names()
        )  # a copy: model code never holds the caller's
        async with self._lock:  # between cells, never under a running one
            assert self._epoch is not None
            self._epoch.namespace[name] = plain

    async def snapshot(self, max_bytes: int) -> Snapshot:
        if max_bytes < MIN_SNAPSHOT_BYTES:
            raise ValueError(f"max_bytes must be at least {MIN_SNAPSHOT_BYTES}, not {max_bytes}")
        self._started()
        assert self._lock is not None
        tools = self._tool_names()
        async with self._lock:  # between cells: nothing changes the namespace meanwhile
            assert self._epoch is not None
            namespace = self._epoch.namespace
            # Only exact built-in types are read (by type, through C iteration):
            # no method of a class model code defined runs here.
            text, names, skipped = await anyio.to_thread.run_sync(
                snapshot.encode, namespace, max_bytes, tools
            )
        # Restricted cells cannot name anything starting with "_": such names here
        # are RestrictedPython's own (``_print``), never a variable the user lost.
        skipped = {k: v for k, v in skipped.items() if not k.startswith("_")}
        return Snapshot(blob=text.encode("utf-8"), names=names, skipped=skipped)

    async def restore(self, blob: bytes) -> list[str]:
        self._started()
        assert self._lock is not None
        text = self.snapshot_text(blob)
        # This process is the sandbox here: the reader builds exact built-in types
        # only, and refuses everything else before anything is bound.
        try:
            values = await anyio.to_thread.run_sync(
                snapshot.decode, text, self.snapshot_limit, self._tool_names()
            )
        except snapshot.SnapshotInvalid as exc:
            raise SnapshotError(f"the snapshot cannot be restored: {exc}") from None
        except (MemoryError, RecursionError) as exc:
            raise SnapshotError(f"the snapshot cannot be restored ({type(exc).__name__})") from None
        async with self._lock:
            assert self._epoch is not None
            self._epoch.namespace.update(values)
        return list(values)

    def define_tools(self) -> None:
        """Give model code the bridge's tools as they are now (a worker learns them late)."""
        epoch = self._epoch
        if epoch is not None:
            transport = self._make_transport(epoch.guards)
            epoch.namespace.update(make_functions(transport, self.bridge.tool_specs))

    def _tool_names(self) -> list[str]:
        return [str(spec["name"]) for spec in self.bridge.tool_specs or []]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        run = self._run
        if run is not None and not run.over:
            run.request_stop(CellTimeout)
            run.cancel_subcalls()
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
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

    def _new_epoch(self) -> Epoch:
        guards = new_guards(memory_limit=self.memory_limit_bytes, output_limit=self.output_limit)
        namespace: dict[str, Any] = {"__builtins__": guards.builtins}
        tools = self.bridge.tool_specs
        namespace.update(make_functions(self._make_transport(guards), tools))
        context = self._context
        namespace["context"] = None if context is None else plain_copy(context, CONTEXT)
        return Epoch(guards, namespace, self.value_limit)

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
            run = Run(epoch, self._token_())

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
            final, final_error = epoch.finals.take()
            error = run.error
            if final_error is not None:
                error = f"{error}\n{final_error}" if error else final_error
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
                final=final,
            )

    def _run_cell(self, run: Run, source: str, filename: str) -> None:
        """The cell's job on the worker thread: compile, execute, describe what went wrong."""
        guards = run.epoch.guards
        self._sources[filename] = source.splitlines()
        try:
            code = compile_cell(source, filename)
        except CellRejected as exc:
            run.error = describe_rejection(str(exc))
            return
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            run.error = f"SyntaxError: the cell could not be compiled: {exc}"
            return
        finals = run.epoch.finals
        finals.begin(self.value_limit)
        try:
            exec(code, run.epoch.namespace)
        except SandboxStop:
            raise
        except BaseException as exc:  # model code's errors are results
            run.error = format_error(exc, guards, self._sources, self.output_limit)
        finals.check_answer()  # on this thread, in the cell's time: str() runs model code

    async def _run_job(
        self, run: Run, job: Callable[[], None], timeout: float, *, watch_memory: bool
    ) -> tuple[type[SandboxStop] | None, bool]:
        """Run ``job`` on its own thread within ``timeout``; returns (stop reason, state lost)."""
        epoch = run.epoch
        epoch.guards.stop = None
        deadline = epoch.guards.deadline = time.monotonic() + max(timeout, 0.0)
        epoch.guards.output = type(epoch.guards.output)(self.output_limit)
        self._run = run
        if watch_memory:
            WATCHDOG.watch(run, self.memory_limit_bytes)
        CEILING.enter(id(run), self.memory_limit_bytes)
        try:
            run.start(job, self._cell_thread())
            # Most cells take microseconds: a short wait here spares them the trip
            # through the event loop (the thread says it is done with an event).
            if run.wake.wait(_QUICK_WAIT_S):
                await anyio.lowlevel.checkpoint()
            while not run.over and time.monotonic() < deadline:
                # The event is set by the thread as it ends; the short wait only
                # matters if the thread died before it could say so.
                with anyio.move_on_after(min(0.25, max(deadline - time.monotonic(), 0))):
                    await run.done.wait()
        except BaseException:
            # Cancelled from outside: the thread must not run on unwatched.
            with anyio.CancelScope(shield=True):
                await self._stop(run)
                CEILING.leave(id(run))
                WATCHDOG.unwatch(run)
            raise
        try:
            if run.over:
                if self._run is run:
                    self._run = None
                return run.stop_reason, False
            stopped = await self._stop(run)
            return run.stop_reason, not stopped
        finally:
            CEILING.leave(id(run))
            WATCHDOG.unwatch(run)

    def _cell_thread(self) -> CellThread:
        worker = self._worker
        if worker is None or not worker.usable:
            worker = self._worker = CellThread()
            # A sandbox dropped without close() must not leave its thread waiting forever.
            weakref.finalize(self, worker.stop)
        return worker

    async def _stop(self, run: Run) -> bool:
        """Stop ``run`` within the grace period; False if its namespace had to be given up."""
        if not run.over:
            run.request_stop(CellTimeout)
            run.cancel_subcalls()
            guards = run.epoch.guards
            grace = self.stop_grace_s
            deadline = time.monotonic() + grace
            while not run.over and time.monotonic() < max(deadline, guards.busy_until + grace):
                with anyio.move_on_after(REINJECT_INTERVAL_S):
                    await run.done.wait()
                run.inject()
                run.cancel_subcalls()
        if self._run is run:
            self._run = None
        if run.over:
            return True
        self._give_up(run)
        return False

    def _give_up(self, run: Run) -> None:
        """The thread would not stop: leave it its namespace and start a fresh one."""
        if run.error is None:
            run.error = stop_message(run.stop_reason or CellTimeout)
        if self._epoch is run.epoch and not self._closed:
            self._epoch = self._new_epoch()
            self.resets += 1
        worker = self._worker
        if worker is not None and worker.thread is run.thread:
            worker.retired = True  # it ends once the stuck job does; the next job gets a new one
            self._worker = None
        threading.Thread(
            target=reap, args=(run,), name="rlm-restricted-reaper", daemon=True
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
            run = Run(epoch, self._token_())
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
                reason = stop_message(stopped or CellTimeout)
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
            plain = plain_copy(params, SUB_CALL)  # on this thread: it may run the model's methods
            run.wake.set()  # the event loop must not wait for the job now: it has work
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

    async def _host_call(self, run: Run, method: str, params: dict[str, Any]) -> Any:
        if run.stop_reason is not None:
            raise _SubCallCancelled
        with anyio.CancelScope() as scope:
            run.scopes.add(scope)
            try:
                return await self.bridge.call(method, params)
            finally:
                run.scopes.discard(scope)
        raise _SubCallCancelled


def _utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")
