"""One session's Docker sandbox: cells, context and sub-calls over the channel.

Everything the container sends is untrusted: each frame is size-checked and each
message validated (:mod:`rlm_sandbox.protocol`) before it is acted upon, and a
violation stops that session's container with :class:`~rlm.errors.ProtocolError`.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from rlm_sandbox import protocol

from rlm.backends.base import MIN_SNAPSHOT_BYTES, CellResult, Sandbox, Snapshot
from rlm.backends.calls import CellCalls
from rlm.backends.checks import bound_final, cap_output
from rlm.backends.docker.channel import ContainerGone
from rlm.backends.docker.container import ContainerSpec, SandboxContainer, describe_exit
from rlm.backends.docker.source import ColdStart, ContainerSource
from rlm.backends.values import check_bind
from rlm.errors import (
    ProtocolError,
    SandboxError,
    SnapshotError,
    VariableNotFound,
)

if TYPE_CHECKING:
    from rlm.bridge import SessionBridge

log = logging.getLogger(__name__)

_VARIABLE_TIMEOUT = 30.0
_MAX_VARIABLE_CHARS = 8_000_000
_SNAPSHOT_TIMEOUT = 300.0
#: Room in a snapshot reply for what is not the blob (names, skipped, framing).
_MESSAGE_MARGIN = 16 << 20


class DockerSandbox(Sandbox):
    """One session's sandbox: a container of its own, replaced if it dies.

    Cells that overrun ``timeout`` are interrupted (SIGINT inside the runner) and
    keep their state; a cell that will not stop, or a container that dies, costs a
    fresh container with the context reloaded, and the cell's result says the
    variables were lost.

    Containers come from ``source`` (a :class:`ContainerPool`, a shared
    :class:`ColdStart`); without one, from a cold-start source of the sandbox's own
    for ``spec`` (default :class:`ContainerSpec`), whose engine connection
    :meth:`close` closes.
    """

    def __init__(
        self,
        bridge: SessionBridge,
        source: ContainerSource | None = None,
        *,
        spec: ContainerSpec | None = None,
        output_limit: int = 100_000,
        interrupt_grace: float = 2.0,
    ) -> None:
        if source is not None and spec is not None:
            raise TypeError("give DockerSandbox a source or a spec, not both")
        super().__init__(bridge, output_limit=output_limit)
        #: The source this sandbox made for itself, and so closes with itself.
        self._own_source: ColdStart | None = None
        if source is None:
            source = self._own_source = ColdStart(spec)
        self.source: ContainerSource = source
        self.name = f"docker:{self.spec.runtime}"
        self.interrupt_grace = interrupt_grace
        self._box: SandboxContainer | None = None
        self._context: Any = None
        self._has_context = False
        self._ids = itertools.count(1)
        self._broken: str | None = None
        self._closed = False
        #: Containers this session has used (the first plus any restarts).
        self.containers_started = 0

    @property
    def spec(self) -> ContainerSpec:
        """How this sandbox's containers are made."""
        return self.source.spec

    @property
    def container_id(self) -> str | None:
        return self._box.id if self._box is not None else None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        if self._closed:
            raise SandboxError("this sandbox was closed; create a new one")
        if self._box is None:
            await self._new_container()

    async def _new_container(self) -> None:
        box = await self.source.acquire({"rlm.session": self.bridge.session.session_id})
        self._box = box
        self.containers_started += 1
        self.bridge.session.event("sandbox_started", backend=self.name, container=box.id[:12])
        # Before any cell, in every container: a restart must not lose the tools.
        specs = self.bridge.tool_specs
        if specs:
            await self._send_loading({"type": "define_tools", "tools": specs}, "defining the tools")

    async def _discard(self) -> None:
        box, self._box = self._box, None
        if box is not None:
            if not self._closed:
                self.resets += 1
            await box.remove()

    async def close(self) -> None:
        self._closed = True
        await self._discard()
        if self._own_source is not None:
            await self._own_source.aclose()

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise ProtocolError(self._broken)
        if self._closed:
            raise SandboxError("this sandbox was closed; create a new one")

    async def _fail(self, exc: ProtocolError) -> ProtocolError:
        self._broken = (
            f"the sandbox broke the wire protocol ({exc}); its container was stopped "
            "and this session cannot run more code -- start a new session"
        )
        log.warning("session %s: %s", self.bridge.session.session_id, self._broken)
        await self._discard()
        return ProtocolError(self._broken)

    async def _ready_box(self) -> tuple[SandboxContainer, bool]:
        """The live container, starting a fresh one (context reloaded) if needed."""
        self._check_usable()
        fresh = False
        if self._box is None:
            await self._new_container()
            fresh = True
            if self._has_context:
                await self._send_context()
        assert self._box is not None
        return self._box, fresh

    # -- requests --------------------------------------------------------------

    async def load_context(self, context: Any) -> None:
        self._check_usable()
        if not isinstance(context, (str, list, dict)):
            raise TypeError(f"context must be a str, list or dict, not {type(context).__name__}")
        self._context, self._has_context = context, True
        if self._box is None:
            await self._ready_box()  # loads it
        else:
            await self._send_context()

    async def bind(self, name: str, value: Any) -> None:
        self._check_usable()
        tools = [str(spec["name"]) for spec in self.bridge.tool_specs or []]
        plain = check_bind(name, value, tools)
        await self._ready_box()
        await self._send_loading(
            {"type": "bind", "name": name, "value": plain}, f"binding {name!r}"
        )

    async def _send_context(self) -> None:
        await self._send_loading(
            {"type": "load_context", "context": self._context}, "loading the context"
        )

    async def _send_loading(self, message: dict[str, Any], doing: str) -> None:
        """Send ``message`` (given an id here) and wait for its ``loaded``."""
        box = self._box
        assert box is not None
        req = next(self._ids)
        try:
            await box.channel.send({**message, "id": req})
            reply = await self._await_reply(box, req, "loaded", timeout=None)
        except ProtocolError as exc:
            raise await self._fail(exc) from None
        except ContainerGone as exc:
            cause = await self._death_cause(box, exc)
            await self._discard()
            raise SandboxError(f"the sandbox died while {doing}: {cause}") from None
        except BaseException:
            # Cancelled mid-load: a late "loaded" would confuse the next request.
            await self._discard()
            raise
        del reply

    async def get_variable(self, name: str) -> str:
        box, fresh = await self._ready_box()
        if fresh:
            raise VariableNotFound(f"variable {name!r} was lost when the sandbox restarted")
        req = next(self._ids)
        try:
            await box.channel.send(
                {"type": "get_variable", "id": req, "name": name, "max_chars": _MAX_VARIABLE_CHARS}
            )
            reply = await self._await_reply(box, req, "variable", timeout=_VARIABLE_TIMEOUT)
        except ProtocolError as exc:
            raise await self._fail(exc) from None
        except ContainerGone as exc:
            cause = await self._death_cause(box, exc)
            await self._discard()
            raise VariableNotFound(
                f"variable {name!r} is lost: the sandbox died ({cause})"
            ) from None
        except TimeoutError:
            await self._discard()
            raise VariableNotFound(
                f"variable {name!r} could not be read: the sandbox stopped answering "
                "and was restarted"
            ) from None
        except BaseException:
            await self._discard()
            raise
        if not reply["found"]:
            raise VariableNotFound(f"no variable named {name!r} in the sandbox")
        value = str(reply["value"])
        if reply["truncated"]:
            value += f"\n... [value truncated at {_MAX_VARIABLE_CHARS:,} characters]"
        return value

    # -- snapshots -------------------------------------------------------------

    async def snapshot(self, max_bytes: int) -> Snapshot:
        if max_bytes < MIN_SNAPSHOT_BYTES:
            raise ValueError(f"max_bytes must be at least {MIN_SNAPSHOT_BYTES}, not {max_bytes}")
        # The blob travels as a JSON string, where each '"' and '\\' doubles: the
        # reply must fit the host's message cap, or the session would end on it.
        cap = getattr(self.source, "max_message", protocol.DEFAULT_MAX_MESSAGE)
        max_bytes = max(0, min(max_bytes, (cap - _MESSAGE_MARGIN) // 2))
        reply = await self._snapshot_request({"type": "snapshot", "max_bytes": max_bytes})
        try:
            # Bytes as the source wrote them; nothing here reads them.
            blob = reply["blob"].encode("utf-8")
        except UnicodeEncodeError:
            raise SnapshotError("the sandbox's snapshot is not valid text") from None
        if len(blob) > max_bytes:
            raise SnapshotError(
                f"the sandbox's snapshot is {len(blob):,} bytes, over the {max_bytes:,} asked for"
            )
        return Snapshot(blob=blob, names=list(reply["names"]), skipped=dict(reply["skipped"]))

    async def restore(self, blob: bytes) -> list[str]:
        text = self.snapshot_text(blob)
        reply = await self._snapshot_request({"type": "restore", "blob": text})
        if reply["error"] is not None:
            raise SnapshotError(f"the snapshot cannot be restored: {reply['error'][:1000]}")
        return list(reply["names"])

    async def _snapshot_request(self, message: dict[str, Any]) -> dict[str, Any]:
        box, _fresh = await self._ready_box()
        req = next(self._ids)
        kind = "snapshot" if message["type"] == "snapshot" else "restored"
        doing = "taking a snapshot" if kind == "snapshot" else "restoring a snapshot"
        try:
            await box.channel.send({**message, "id": req})
            return await self._await_reply(box, req, kind, timeout=_SNAPSHOT_TIMEOUT)
        except ProtocolError as exc:
            raise await self._fail(exc) from None
        except ContainerGone as exc:
            cause = await self._death_cause(box, exc)
            await self._discard()
            raise SnapshotError(f"the sandbox died while {doing}: {cause}") from None
        except TimeoutError:
            await self._discard()
            raise SnapshotError(
                f"the sandbox took over {_SNAPSHOT_TIMEOUT:g} s {doing} and was restarted: "
                "every variable except `context` is lost"
            ) from None
        except BaseException:
            await self._discard()
            raise

    async def _await_reply(
        self, box: SandboxContainer, req: int, kind: str, timeout: float | None
    ) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            while True:
                message = await box.channel.receive()
                if message["type"] == "call":
                    await self._refuse_outside_cell(box, message)
                    continue
                if message["type"] == "fatal":
                    raise ContainerGone(f"runner failed: {message['message'][:300]}")
                if message["type"] != kind or message["id"] != req:
                    raise ProtocolError(
                        f"unexpected {message['type']} message (waiting for {kind})"
                    )
                return message

    async def _refuse_outside_cell(self, box: SandboxContainer, message: dict[str, Any]) -> None:
        await box.channel.send(
            {
                "type": "refused",
                "id": message["id"],
                "message": "sub-calls can only be made while a cell is running",
            }
        )

    async def execute(self, code: str, timeout: float) -> CellResult:
        if not isinstance(code, str):
            return CellResult(error="TypeError: a cell must be a str of Python code")
        started = time.monotonic()
        notice = ""
        if self._box is not None and not self._box.alive():
            # It died between cells (killed from outside, or a leftover thread ran it
            # out of memory): run this cell in a fresh one and say what was lost.
            dead = self._box
            cause = await self._death_cause(dead, ContainerGone("found dead before the cell"))
            await self._discard()
            notice = (
                f"[sandbox] the sandbox container had died since the last cell ({cause}); "
                "this cell ran in a fresh one: every variable except `context` is lost.\n"
            )
        box, _ = await self._ready_box()
        cell = next(self._ids)
        try:
            message, timed_out = await self._run_cell(box, cell, code, timeout)
        except ProtocolError as exc:
            raise await self._fail(exc) from None
        except ContainerGone as exc:
            cause = await self._death_cause(box, exc)
            await self._discard()
            return CellResult(
                error=(
                    f"SandboxDied: the sandbox container died while running this cell: "
                    f"{cause}. A fresh sandbox will run the next cell; every variable "
                    "except `context` is lost."
                ),
                duration_s=time.monotonic() - started,
                state_lost=True,
            )
        except BaseException as exc:
            # Cancelled (Ctrl-C on a turn): stop the cell as a timeout would, and
            # keep the container and its variables if the runner says it stopped.
            if isinstance(exc, anyio.get_cancelled_exc_class()) and await self._settle(box, cell):
                raise
            # Otherwise the container's state is unknown: it must not be used again.
            await self._discard()
            raise
        duration = time.monotonic() - started
        if message is None:
            await self._discard()
            await self._ready_box()
            return CellResult(
                error=(
                    f"TimeoutError: the cell ran over its {timeout:g} s limit and did not stop "
                    "when interrupted, so the sandbox was restarted: every variable except "
                    "`context` is lost. Make cells shorter or process the data in pieces."
                ),
                timed_out=True,
                duration_s=duration,
                state_lost=True,
            )
        stdout, cut_out = cap_output(message["stdout"], self.output_limit)
        stderr, cut_err = cap_output(message["stderr"], self.output_limit)
        # The final's shape was checked with the frame.
        final, error = bound_final(message["final"], message["error"], self.value_limit)
        if timed_out:
            error = (
                f"TimeoutError: the cell ran over its {timeout:g} s limit and was interrupted; "
                "variables are kept (anything the cell did before it stopped stays done)."
                + (f"\n{error}" if error else "")
            )
        return CellResult(
            stdout=stdout,
            stderr=notice + stderr,
            error=error,
            timed_out=timed_out,
            duration_s=duration,
            truncated=message["truncated"] or cut_out or cut_err,
            state_lost=bool(notice),
            final=final,
        )

    async def _run_cell(
        self, box: SandboxContainer, cell: int, code: str, timeout: float
    ) -> tuple[dict[str, Any] | None, bool]:
        result: dict[str, Any] | None = None
        timed_out = False
        # Failures are carried out of the task group by hand so callers see the
        # exception itself, not an ExceptionGroup around it.
        async with anyio.create_task_group() as calls:
            cell_calls = CellCalls(
                box.channel, self.bridge, cell, calls, gone=ContainerGone, fatal="runner failed"
            )
            failures = cell_calls.failures
            try:
                await box.channel.send(
                    {
                        "type": "execute",
                        "id": cell,
                        "code": code,
                        "output_limit": self.output_limit,
                        "final_limit": self.value_limit,
                    }
                )
                with anyio.move_on_after(timeout):
                    result = await cell_calls.pump()
                if result is None and not failures:
                    timed_out = True
                    await box.channel.send({"type": "interrupt", "id": cell})
                    with anyio.move_on_after(self.interrupt_grace):
                        result = await cell_calls.pump()
            except (ContainerGone, ProtocolError) as exc:
                failures.append(exc)
            calls.cancel_scope.cancel()
        if failures:
            raise failures[0]
        return result, timed_out

    async def _settle(self, box: SandboxContainer, cell: int) -> bool:
        """After a cancelled cell: interrupt it and wait (shielded, at most
        ``interrupt_grace``) for its result, refusing the sub-calls it still makes.
        True when the runner answered, so the container can run the next cell."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.interrupt_grace):
            try:
                await box.channel.send({"type": "interrupt", "id": cell})
                while True:
                    message = await box.channel.receive()
                    if message["type"] == "result" and message["id"] == cell:
                        return True
                    if message["type"] != "call":
                        return False
                    await box.channel.send(
                        {
                            "type": "refused",
                            "id": message["id"],
                            "message": "the cell was cancelled",
                        }
                    )
            except (ContainerGone, ProtocolError):
                return False
        return False

    async def _death_cause(self, box: SandboxContainer, exc: Exception) -> str:
        state = await box.inspect_state()
        tail = bytes(box.channel.stderr).decode("utf-8", "replace").strip()[-300:]
        return describe_exit(state, box.spec, detail=str(exc), stderr=tail)
