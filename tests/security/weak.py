"""Deliberately unsafe sandboxes, to show that payloads are live and the checker can fail.

Never use these outside tests: ``NakedSandbox`` runs model code with the host's full
builtins in the host process.
"""

from __future__ import annotations

import builtins
import io
import os
import time
import traceback
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
from rlm_sandbox.api import RLMCallError, make_functions

from rlm.backends.base import CellResult, Sandbox
from rlm.dispatch import SessionBridge
from rlm.errors import BridgeRefusal, VariableNotFound

# Payloads that cash in through a transport's module look for ``os`` here.
assert os is not None


class NakedSandbox(Sandbox):
    """Plain ``exec`` with every builtin: what the corpus's payloads are written to beat."""

    name = "naked"

    def __init__(self, bridge: SessionBridge, *, output_limit: int = 100_000) -> None:
        super().__init__(bridge, output_limit=output_limit)
        self.namespace: dict[str, Any] = {}

    def _transport(self, method: str, params: dict[str, Any]) -> Any:
        try:
            return anyio.from_thread.run(self.bridge.call, method, params)
        except BridgeRefusal as exc:
            raise RLMCallError(str(exc)) from None

    async def start(self) -> None:
        self.namespace = {"__builtins__": builtins, "__name__": "__main__"}
        self.namespace.update(make_functions(self._transport))

    async def load_context(self, context: Any) -> None:
        self.namespace["context"] = context

    async def execute(self, code: str, timeout: float) -> CellResult:
        out = io.StringIO()

        def write(*args: Any, sep: str = " ", end: str = "\n", **kw: Any) -> None:
            if kw.get("file") is None:
                out.write(sep.join(str(a) for a in args) + end)

        def run() -> str | None:
            self.namespace["print"] = write
            try:
                exec(compile(code, "<cell>", "exec"), self.namespace)
            except BaseException:
                return traceback.format_exc()
            return None

        started = time.monotonic()
        error = await anyio.to_thread.run_sync(run)
        text = out.getvalue()
        return CellResult(
            stdout=text[: self.output_limit],
            error=error,
            duration_s=time.monotonic() - started,
            truncated=len(text) > self.output_limit,
        )

    async def get_variable(self, name: str) -> str:
        if name not in self.namespace:
            raise VariableNotFound(name)
        return str(self.namespace[name])

    async def close(self) -> None:
        self.namespace.clear()
