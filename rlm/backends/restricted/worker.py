"""The restricted backend's worker process: RestrictedPython behind an OS boundary.

Started by :class:`~rlm.backends.restricted.process.ProcessSandbox` as
``python -I -m rlm.backends.restricted.worker LIMITS`` with an empty environment
and no descriptors but its stdin and stdout, which carry the sandbox wire protocol
(:mod:`rlm_sandbox.protocol`, the Docker runner's): frames in, frames out. Before
it reads anything it moves the protocol onto private descriptors (0, 1 and 2
become /dev/null) and confines itself (:mod:`.confine`: resource limits, seccomp).

Inside, cells run exactly as in-process: a :class:`RestrictedSandbox`, its guards,
its soft stops and its memory watchdog (which now measures this process alone).
Its bridge is the wire: a sub-call becomes a ``call`` frame and waits for the
host's ``reply`` or ``refused``. The host's ``execute`` carries the cell's
timeout as one field more than the Docker runner's (:data:`FROM_HOST`); when the
soft stop fails (a C call holding the interpreter lock) the host kills this
process. End of file on stdin means the host is gone: the process ends at once.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, cast

import anyio
import anyio.abc
import anyio.lowlevel
from rlm_sandbox import protocol

from rlm.backends.restricted.confine import Limits, apply
from rlm.backends.restricted.sandbox import RestrictedSandbox
from rlm.bridge import SessionBridge
from rlm.errors import BridgeRefusal, SnapshotError, VariableNotFound

#: What the host sends a worker: the runner's messages, with the cell's timeout.
FROM_HOST: dict[str, dict[str, tuple[type, ...]]] = {
    **protocol.FROM_HOST,
    "execute": {**protocol.FROM_HOST["execute"], "timeout": (int, float)},
    "get_variable": {**protocol.FROM_HOST["get_variable"], "timeout": (int, float)},
}
#: Says a worker's RestrictedSandbox gave up a namespace (a thread would not stop).
RESET_MARK = "the sandbox was reset"


class WireBridge:
    """What a :class:`RestrictedSandbox` needs of its bridge, over the wire."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.tool_specs: list[dict[str, Any]] | None = None

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        return await self.worker.call(method, params)


class Worker:
    """Serves one host over the protocol; built on the event loop (:func:`_serve`)."""

    def __init__(self, proto_in: int, proto_out: int, limits: Limits) -> None:
        self._in = proto_in
        self._out = proto_out
        self._send_lock = anyio.Lock()
        self._calls: dict[int, list[Any]] = {}
        self._next_call = 0
        self.bridge = WireBridge(self)
        self.box = RestrictedSandbox(
            cast(SessionBridge, self.bridge),
            memory_limit_bytes=limits.memory_bytes,
            stop_grace_s=limits.stop_grace_s,
        )
        self._requests, self._queue = anyio.create_memory_object_stream[dict[str, Any]](64)
        self._current: anyio.CancelScope | None = None
        self._current_id: int | None = None

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            for chunk in protocol.encode(message):
                view = memoryview(chunk)
                while view:
                    try:
                        view = view[os.write(self._out, view) :]
                    except BlockingIOError:
                        await anyio.wait_writable(self._out)

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        self._next_call += 1
        call_id = self._next_call
        slot: list[Any] = [anyio.Event(), None, None]
        self._calls[call_id] = slot
        try:
            await self.send({"type": "call", "id": call_id, "method": method, "params": params})
            await slot[0].wait()
        finally:
            self._calls.pop(call_id, None)
        if slot[2] is not None:
            raise BridgeRefusal(slot[2])
        return slot[1]

    async def serve(self) -> None:
        await self.box.start()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._handle_all)
            await self._read_loop()

    async def _read_loop(self) -> None:
        decoder = protocol.Decoder(max_message=1 << 40)
        while True:
            try:
                data = os.read(self._in, 1 << 20)
            except BlockingIOError:
                await anyio.wait_readable(self._in)
                continue
            if not data:
                os._exit(0)  # the host is gone
            payloads = decoder.feed(data)
            if not payloads:  # part of a large message: let the loop run between reads
                await anyio.lowlevel.checkpoint()
            for payload in payloads:
                message = protocol.parse(payload, FROM_HOST)
                del payload
                await self._route(message)
            del payloads

    async def _route(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind in ("reply", "refused"):
            slot = self._calls.get(message["id"])
            if slot is not None:
                slot[1] = message.get("result")
                slot[2] = message.get("message")
                slot[0].set()
        elif kind == "interrupt":
            if self._current is not None and self._current_id == message["id"]:
                self._current.cancel()
        else:
            await self._requests.send(message)

    async def _handle_all(self) -> None:
        async for message in self._queue:
            await self.send(await self._handle(message))

    async def _handle(self, message: dict[str, Any]) -> dict[str, Any]:
        kind = message["type"]
        req = message.get("id")
        box = self.box
        if kind == "hello":
            return {"type": "hello", "protocol": protocol.PROTOCOL_VERSION, "python": sys.version}
        if kind == "load_context":
            await box.load_context(message.pop("context"))
            return {"type": "loaded", "id": req}
        if kind == "define_tools":
            self.bridge.tool_specs = message["tools"]
            box.define_tools()
            return {"type": "loaded", "id": req}
        if kind == "bind":
            await box.bind(message["name"], message.pop("value"))
            return {"type": "loaded", "id": req}
        if kind == "snapshot":
            snap = await box.snapshot(message["max_bytes"])
            return {
                "type": "snapshot",
                "id": req,
                "blob": snap.blob.decode("utf-8"),
                "names": snap.names,
                "skipped": snap.skipped,
            }
        if kind == "restore":
            try:
                names = await box.restore(message.pop("blob").encode("utf-8"))
            except SnapshotError as exc:
                return {"type": "restored", "id": req, "names": [], "error": str(exc)[:2000]}
            return {"type": "restored", "id": req, "names": names, "error": None}
        if kind == "execute":
            return await self._execute(message)
        if kind == "get_variable":
            try:
                with anyio.fail_after(message["timeout"]):
                    text = await box.get_variable(message["name"])
            except VariableNotFound:
                return {
                    "type": "variable",
                    "id": req,
                    "found": False,
                    "value": "",
                    "truncated": False,
                }
            limit = message["max_chars"]
            return {
                "type": "variable",
                "id": req,
                "found": True,
                "value": text[:limit],
                "truncated": len(text) > limit,
            }
        return {"type": "fatal", "message": f"unexpected {kind} request"}

    async def _execute(self, message: dict[str, Any]) -> dict[str, Any]:
        box = self.box
        box.output_limit = message["output_limit"]
        box.value_limit = message["final_limit"]
        reply: dict[str, Any] = {"type": "result", "id": message["id"], "final": None}
        with anyio.CancelScope() as scope:
            self._current, self._current_id = scope, message["id"]
            try:
                result = await box.execute(message["code"], message["timeout"])
            finally:
                self._current = self._current_id = None
            return {
                **reply,
                "stdout": result.stdout,
                "stderr": result.stderr,
                "error": result.error,
                "truncated": result.truncated,
                "interrupted": result.timed_out,
                "final": result.final,
            }
        # Interrupted by the host (its caller was cancelled): the cell was stopped.
        return {
            **reply,
            "stdout": "",
            "stderr": "",
            "error": "the cell was interrupted",
            "truncated": False,
            "interrupted": True,
        }


def main() -> None:
    limits = Limits(**json.loads(sys.argv[1]))
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.set_blocking(proto_in, False)
    os.set_blocking(proto_out, False)
    apply(limits)

    async def serve() -> None:
        await Worker(proto_in, proto_out, limits).serve()

    try:
        anyio.run(serve)
    except BaseException:
        os._exit(3)
    os._exit(0)


if __name__ == "__main__":
    main()
