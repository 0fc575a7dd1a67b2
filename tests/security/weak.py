"""Deliberately unsafe sandboxes, to show that payloads are live and the checker can fail.

Never use these outside tests: ``NakedSandbox`` runs model code with the host's full
builtins in the host process, and :func:`leaky_docker_target` makes containers that
get the host's environment and share its network namespace -- the two classic
misconfigurations of a sandbox (``docker run --env-file`` / ``--network host``).
Only the corpus's loopback-only payloads ever run against them.
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
from rlm.backends.docker import ContainerSpec
from rlm.bridge import SessionBridge
from rlm.errors import BridgeRefusal, VariableNotFound
from rlm.security.targets import Target, spec_target

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


def naked_target() -> Target:
    """The naked sandbox as a corpus target of the ``restricted`` kind."""
    return Target(name="naked", kind="restricted", factory=lambda bridge: NakedSandbox(bridge))


class LeakySpec(ContainerSpec):
    """A container spec with the host's environment and the host's network."""

    def create_kwargs(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        kwargs = super().create_kwargs(name, labels)
        kwargs["environment"] = dict(os.environ)
        kwargs["network_mode"] = "host"
        return kwargs


def leaky_docker_target(runtime: str, image: str, output_limit: int) -> Target:
    """A Docker target whose containers leak the environment and share the network."""
    # The environment is read as each container is created, so it holds the
    # harness's canary by then.
    leaky = spec_target(LeakySpec(image=image, runtime=runtime), output_limit)
    leaky.name = f"leaky-docker:{runtime}"
    return leaky
