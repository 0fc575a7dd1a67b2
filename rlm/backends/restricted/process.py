"""The restricted backend in a worker process (``restricted_isolation = "process"``).

RestrictedPython still guards every cell, in a worker process (:mod:`.worker`) that
adds an OS boundary around it: an empty environment, no descriptors but the
protocol's pipes, resource limits and, where a binding is installed, a seccomp
filter (:mod:`.confine`). What it removes of the in-process mode's limits:

- **A hard stop.** The worker stops a cell softly, as in-process; if it has not
  answered ``stop_grace_s`` plus a second after the cell's timeout (a C call that
  holds the interpreter lock, a thread that will not stop), the host kills it with
  SIGKILL. The cell reports a timeout, and the next one runs in a fresh worker.
- **Memory of its own.** The memory watchdog and the address-space limit measure
  the worker alone: sessions no longer share one budget, and nothing a cell
  allocates counts against the host.

What survives a worker's loss (killed, or dead of its own limits): the context and
the host tools, which the host holds and gives the new worker. Variables do not:
the result says ``state_lost`` and why, as a Docker restart does.

Sub-calls cross the same wire protocol as Docker's runner (:mod:`rlm_sandbox.protocol`):
the worker's ``call`` frames are size-checked and validated here, then go to the
same :meth:`SessionBridge.call`. A forged or malformed frame ends the worker.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from typing import Any

import anyio
import anyio.abc
from rlm_sandbox import protocol

from rlm.backends.base import MIN_SNAPSHOT_BYTES, CellResult, Sandbox, Snapshot
from rlm.backends.calls import CellCalls
from rlm.backends.checks import bound_final, cap_output
from rlm.backends.restricted.confine import Limits
from rlm.backends.restricted.sandbox import STOP_GRACE_S, VARIABLE_TIMEOUT_S
from rlm.backends.restricted.spawn import SPARES, Pipes, WorkerGone, drop_spares, kill, spawn
from rlm.backends.restricted.worker import RESET_MARK
from rlm.backends.values import check_bind
from rlm.bridge import SessionBridge
from rlm.errors import (
    ProtocolError,
    SandboxError,
    SnapshotError,
    VariableNotFound,
)

__all__ = ["ProcessSandbox", "drop_spares"]

log = logging.getLogger(__name__)

#: How long past its soft stop's grace a worker may take to answer before it is killed.
KILL_MARGIN_S = 1.0
#: How long a new worker may take to start and answer ``hello``.
START_TIMEOUT_S = 30.0
_REQUEST_TIMEOUT_S = 300.0
#: The longest text ``get_variable`` brings back from a worker (as from Docker).
MAX_VARIABLE_CHARS = 8_000_000


class ProcessSandbox(Sandbox):
    """Restricted cells in a confined worker process; see the module docstring."""

    name = "restricted:process"

    def __init__(
        self,
        bridge: SessionBridge,
        *,
        output_limit: int = 100_000,
        memory_limit_bytes: int = 2 * 1024**3,
        stop_grace_s: float = STOP_GRACE_S,
        cpu_seconds: int = 3600,
        seccomp: bool = True,
        spare: bool = True,
    ) -> None:
        super().__init__(bridge, output_limit=output_limit)
        self.limits = Limits(
            memory_bytes=memory_limit_bytes,
            cpu_seconds=cpu_seconds,
            seccomp=seccomp,
            stop_grace_s=stop_grace_s,
        )
        self.stop_grace_s = stop_grace_s
        self.spare = spare
        self._pipes: Pipes | None = None
        self._context: Any = None
        self._ids = 0
        self._lock: anyio.Lock | None = None
        self._closed = False
        self._started = False
        #: Workers this session has used (the first plus any restarts).
        self.workers_started = 0

    @property
    def pid(self) -> int | None:
        return self._pipes.proc.pid if self._pipes is not None else None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._closed:
            raise SandboxError("this sandbox was closed; create a new one")
        if self._started:
            return
        self._lock = anyio.Lock()
        await self._new_worker()
        self._started = True

    async def _new_worker(self) -> None:
        proc = SPARES.take(self.limits) if self.spare else spawn(self.limits)
        pipes = Pipes(proc)
        self._pipes = pipes
        self.workers_started += 1
        try:
            with anyio.fail_after(START_TIMEOUT_S):
                await pipes.send({"type": "hello", "protocol": protocol.PROTOCOL_VERSION})
                hello = await pipes.receive()
                if hello["type"] != "hello" or hello["protocol"] != protocol.PROTOCOL_VERSION:
                    raise ProtocolError(f"the worker answered {hello['type']} to hello")
                specs = self.bridge.tool_specs
                if specs:
                    await self._request({"type": "define_tools", "tools": specs}, "loaded")
                if self._context is not None:
                    await self._request(
                        {"type": "load_context", "context": self._context}, "loaded"
                    )
        except BaseException as exc:
            await self._discard()
            if isinstance(exc, (WorkerGone, ProtocolError, TimeoutError)):
                raise SandboxError(f"the restricted worker did not start: {exc}") from None
            raise

    async def _discard(self) -> None:
        pipes, self._pipes = self._pipes, None
        if pipes is not None:
            if self._started and not self._closed:
                self.resets += 1
            with anyio.CancelScope(shield=True):  # a worker is never left behind
                await anyio.to_thread.run_sync(kill, pipes.proc)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self._discard()
        self._context = None

    def _check(self) -> None:
        if self._closed:
            raise SandboxError("this sandbox was closed; create a new one")
        if not self._started:
            raise SandboxError("the sandbox is not started; call start() first")

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    async def _ensure_worker(self) -> str:
        """A live worker; the notice to give when a new one had to replace a dead one."""
        pipes = self._pipes
        if pipes is not None and pipes.proc.poll() is None:
            return ""
        if pipes is None:  # discarded after a loss the last result already reported
            await self._new_worker()
            return ""
        cause = _exit_cause(pipes.proc.returncode)
        await self._discard()
        await self._new_worker()
        return (
            f"the sandbox's worker process had ended ({cause}); this cell runs in a fresh "
            "one: every variable except `context` is gone"
        )

    async def _request(
        self, message: dict[str, Any], kind: str, timeout: float = _REQUEST_TIMEOUT_S
    ) -> dict[str, Any]:
        """Send a request between cells and return its answer; sub-calls are refused meanwhile."""
        pipes = self._pipes
        if pipes is None:
            raise SandboxError("the sandbox's worker is gone")
        req = self._next_id()
        await pipes.send({**message, "id": req})
        with anyio.fail_after(timeout):
            while True:
                answer = await pipes.receive()
                if answer["type"] == "call":
                    await pipes.send(
                        {
                            "type": "refused",
                            "id": answer["id"],
                            "message": "sub-calls can only be made while a cell is running",
                        }
                    )
                    continue
                if answer["type"] == "fatal":
                    raise WorkerGone(f"the worker failed: {answer['message'][:300]}")
                if answer["type"] != kind or answer.get("id") != req:
                    raise ProtocolError(f"unexpected {answer['type']} message (waiting for {kind})")
                return answer

    async def _between_cells(self, message: dict[str, Any], kind: str, what: str) -> dict[str, Any]:
        assert self._lock is not None
        async with self._lock:
            notice = await self._ensure_worker()
            del notice
            try:
                return await self._request(message, kind)
            except (WorkerGone, ProtocolError, TimeoutError) as exc:
                await self._discard()
                raise SandboxError(f"{what} failed: the worker was lost ({exc})") from None

    # -- context, variables, snapshots -----------------------------------------------------

    async def load_context(self, context: Any) -> None:
        self._check()
        if not isinstance(context, (str, list, dict)):
            raise TypeError(f"context must be a str, list or dict, not {type(context).__name__}")
        from rlm.backends.restricted.plain import CONTEXT, plain_copy

        plain = plain_copy(context, CONTEXT)  # refused here, before the worker sees it
        await self._between_cells(
            {"type": "load_context", "context": plain}, "loaded", "loading the context"
        )
        self._context = plain

    async def bind(self, name: str, value: Any) -> None:
        self._check()
        tools = [str(spec["name"]) for spec in self.bridge.tool_specs or []]
        plain = check_bind(name, value, tools)
        await self._between_cells(
            {"type": "bind", "name": name, "value": plain}, "loaded", "binding a value"
        )

    async def snapshot(self, max_bytes: int) -> Snapshot:
        if max_bytes < MIN_SNAPSHOT_BYTES:
            raise ValueError(f"max_bytes must be at least {MIN_SNAPSHOT_BYTES}, not {max_bytes}")
        self._check()
        answer = await self._between_cells(
            {"type": "snapshot", "max_bytes": max_bytes}, "snapshot", "the snapshot"
        )
        blob = answer["blob"].encode("utf-8")
        if len(blob) > max_bytes:
            raise SnapshotError(f"the worker's snapshot is over the {max_bytes:,}-byte limit")
        names = [n for n in answer["names"] if isinstance(n, str)]
        return Snapshot(blob=blob, names=names, skipped=dict(answer["skipped"]))

    async def restore(self, blob: bytes) -> list[str]:
        self._check()
        text = self.snapshot_text(blob)
        answer = await self._between_cells(
            {"type": "restore", "blob": text}, "restored", "restoring"
        )
        if answer["error"] is not None:
            raise SnapshotError(f"the snapshot cannot be restored: {answer['error']}")
        return list(answer["names"])

    async def get_variable(self, name: str) -> str:
        self._check()
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise VariableNotFound(f"{str(name)[:100]!r} is not a variable name")
        assert self._lock is not None
        async with self._lock:
            await self._ensure_worker()
            message = {
                "type": "get_variable",
                "name": name,
                "max_chars": MAX_VARIABLE_CHARS,
                "timeout": VARIABLE_TIMEOUT_S,
            }
            try:
                answer = await self._request(
                    message, "variable", VARIABLE_TIMEOUT_S + self.stop_grace_s + KILL_MARGIN_S
                )
            except (WorkerGone, ProtocolError, TimeoutError):
                await self._discard()
                return "<a value that cannot be shown: the sandbox's worker had to be restarted>"
        if not answer["found"]:
            raise VariableNotFound(
                f"no variable named {name!r} in the sandbox; assign it in a cell first"
            )
        return str(answer["value"])

    # -- cells ------------------------------------------------------------------------------

    async def execute(self, code: str, timeout: float) -> CellResult:
        self._check()
        if not isinstance(code, str):
            return CellResult(error="TypeError: a cell must be a str of Python code")
        assert self._lock is not None
        async with self._lock:
            started = time.monotonic()
            try:
                notice = await self._ensure_worker()
            except SandboxError as exc:
                return CellResult(error=str(exc), state_lost=True)
            pipes = self._pipes
            assert pipes is not None
            cell = self._next_id()
            limit = timeout + self.stop_grace_s + KILL_MARGIN_S
            result: dict[str, Any] | None = None
            lost: str | None = None
            try:
                result = await self._run_cell(pipes, cell, code, timeout, limit)
            except (WorkerGone, ProtocolError) as exc:
                lost = self._death(pipes, exc)
            except BaseException:
                # Cancelled (Ctrl-C on a turn): the cell is interrupted in the worker,
                # which goes on serving the session if it answers in time.
                with anyio.CancelScope(shield=True):
                    if not await self._settle(pipes, cell):
                        await self._discard()
                raise
            if result is None and lost is None:
                lost = (
                    f"the cell did not stop within {self.stop_grace_s + KILL_MARGIN_S:g} s of its "
                    "time limit and its worker process was killed"
                )
            if lost is not None:
                await self._discard()
                gone = (
                    f"{lost}; the next cell runs in a fresh one: every variable except "
                    "`context` is gone"
                )
                return CellResult(
                    error=f"{notice}\n{gone}".strip(),
                    timed_out=result is None and "killed" in lost and "time limit" in lost,
                    duration_s=round(time.monotonic() - started, 4),
                    state_lost=True,
                )
            assert result is not None
            # The final's shape was checked with the frame.
            final, error = bound_final(result["final"], result["error"], self.value_limit)
            state_lost = bool(notice)
            if isinstance(error, str) and RESET_MARK in error:
                # The worker gave up a thread that would not stop: it is not used again.
                await self._discard()
                state_lost = True
            if notice:
                error = f"{notice}\n{error}" if error else notice
            return CellResult(
                stdout=cap_output(result["stdout"], self.output_limit)[0],
                stderr=cap_output(result["stderr"], self.output_limit)[0],
                error=error,
                timed_out=bool(result["interrupted"]),
                duration_s=round(time.monotonic() - started, 4),
                state_lost=state_lost,
                truncated=bool(result["truncated"]),
                final=final,
            )

    async def _settle(self, pipes: Pipes, cell: int) -> bool:
        """Interrupt ``cell`` and wait for its result; False if the worker must go."""
        with anyio.move_on_after(self.stop_grace_s + KILL_MARGIN_S):
            try:
                await pipes.send({"type": "interrupt", "id": cell})
                while True:
                    message = await pipes.receive()
                    if message["type"] == "result" and message["id"] == cell:
                        return True
                    if message["type"] != "call":
                        return False
                    refusal = {"type": "refused", "id": message["id"]}
                    await pipes.send({**refusal, "message": "the cell was cancelled"})
            except (WorkerGone, ProtocolError):
                return False
        return False

    def _death(self, pipes: Pipes, exc: Exception) -> str:
        if isinstance(exc, ProtocolError):
            return f"the worker broke the protocol ({exc})"
        with contextlib.suppress(Exception):
            pipes.proc.wait(timeout=1)
        return f"the cell's worker process ended ({_exit_cause(pipes.proc.returncode)})"

    async def _run_cell(
        self, pipes: Pipes, cell: int, code: str, timeout: float, limit: float
    ) -> dict[str, Any] | None:
        result: dict[str, Any] | None = None
        async with anyio.create_task_group() as calls:
            cell_calls = CellCalls(
                pipes,
                self.bridge,
                cell,
                calls,
                gone=WorkerGone,
                fatal="the worker failed",
                name_errors=True,  # as in-process: the exception's type, never its message
            )
            failures = cell_calls.failures
            try:
                await pipes.send(
                    {
                        "type": "execute",
                        "id": cell,
                        "code": code,
                        "output_limit": self.output_limit,
                        "final_limit": self.value_limit,
                        "timeout": max(float(timeout), 0.0),
                    }
                )
                with anyio.move_on_after(limit):
                    result = await cell_calls.pump()
            except BaseException as exc:
                if not isinstance(exc, (WorkerGone, ProtocolError)):
                    calls.cancel_scope.cancel()
                    raise
                failures.append(exc)
            calls.cancel_scope.cancel()
        if failures:
            raise failures[0]
        return result


def _exit_cause(code: int | None) -> str:
    if code is None:
        return "it did not answer"
    if code < 0:
        sig = -code
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        if sig == signal.SIGXCPU:
            return f"{name}: it used up its CPU time limit"
        return f"killed by {name}"
    return f"exit status {code}"
