"""What the host does while a runner's cell runs: wait for the cell's result and
serve the sub-calls the cell makes meanwhile, each over the bridge in a task of
its own.

The Docker sandbox and the restricted backend's worker process both run
``sandbox/runner.py``'s protocol, over an attach socket and over pipes; this is
the part of it that is the same on both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from rlm.errors import BridgeRefusal, ProtocolError

if TYPE_CHECKING:
    import anyio.abc

    from rlm.bridge import SessionBridge

log = logging.getLogger(__name__)

#: Sub-calls one cell may have open at once; more are refused (llm_batch is the
#: way to send many), so a cell cannot flood the host with tasks.
MAX_OPEN_CALLS = 256


class Wire(Protocol):
    """Protocol messages to and from one runner."""

    async def send(self, message: dict[str, Any]) -> None: ...
    async def receive(self) -> dict[str, Any]: ...


@dataclass(eq=False)
class CellCalls:
    """The sub-calls of cell ``cell``, served in ``calls`` until its result comes.

    ``gone`` is what ``wire`` raises when the runner is gone (and what a ``fatal``
    message from it becomes, introduced by ``fatal``). A failure of the wire in a
    call's task is kept in :attr:`failures` and stops :meth:`pump`; ``name_errors``
    tells model code the type of a host exception behind a failed call (never its
    message), else only that the host failed.
    """

    wire: Wire
    bridge: SessionBridge
    cell: int
    calls: anyio.abc.TaskGroup
    gone: type[Exception]
    fatal: str
    name_errors: bool = False
    open_calls: set[int] = field(default_factory=set)
    failures: list[Exception] = field(default_factory=list)

    async def pump(self) -> dict[str, Any] | None:
        """Serve messages until the cell's result (returned), or until a call's
        task failed (None; the failure is in :attr:`failures`)."""
        while not self.failures:
            message = await self.wire.receive()
            kind = message["type"]
            if kind == "result":
                if message["id"] != self.cell:
                    raise ProtocolError(
                        f"result for cell {message['id']} while cell {self.cell} runs"
                    )
                return message
            if kind == "call":
                call_id = message["id"]
                if call_id in self.open_calls:
                    raise ProtocolError(f"sub-call id {call_id} reused while still open")
                if len(self.open_calls) >= MAX_OPEN_CALLS:
                    await self.wire.send(
                        {
                            "type": "refused",
                            "id": call_id,
                            "message": f"more than {MAX_OPEN_CALLS} sub-calls at once; "
                            "use llm_batch for many prompts",
                        }
                    )
                    continue
                self.open_calls.add(call_id)
                self.calls.start_soon(self._serve, message)
            elif kind == "fatal":
                raise self.gone(f"{self.fatal}: {message['message'][:300]}")
            else:
                raise ProtocolError(f"unexpected {kind} message while a cell runs")
        return None

    async def _serve(self, message: dict[str, Any]) -> None:
        call_id = message["id"]
        try:
            try:
                value = await self.bridge.call(message["method"], message["params"])
                reply: dict[str, Any] = {"type": "reply", "id": call_id, "result": value}
            except BridgeRefusal as exc:
                reply = {"type": "refused", "id": call_id, "message": str(exc)}
            except Exception as exc:
                # Model code learns that the call failed, never why inside the host.
                log.exception("sub-call %s failed inside the host", message["method"])
                why = type(exc).__name__ if self.name_errors else "internal error"
                reply = {
                    "type": "refused",
                    "id": call_id,
                    "message": f"the host could not complete this sub-call ({why})",
                }
            await self.wire.send(reply)
        except self.gone as exc:
            self.failures.append(exc)
            self.calls.cancel_scope.cancel()
        finally:
            self.open_calls.discard(call_id)
