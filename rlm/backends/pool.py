"""A warm pool of started sandbox containers, so a session need not wait for one.

Each container is handed out once and belongs to that session until it is removed:
nothing is ever reused across sessions. The pool refills itself in the background
and removes whatever it still holds when closed::

    async with ContainerPool(ContainerSpec(runtime="runsc"), size=2) as pool:
        sandbox = DockerSandbox(bridge, pool=pool)
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import anyio
import anyio.abc
from rlm_sandbox import protocol

from rlm.backends.docker import ContainerSpec, SandboxContainer, _client, launch


class ContainerPool:
    """Up to ``size`` pre-started containers of one :class:`ContainerSpec`."""

    def __init__(
        self,
        spec: ContainerSpec | None = None,
        *,
        size: int = 2,
        docker_client: Any = None,
        max_message: int = protocol.DEFAULT_MAX_MESSAGE,
    ) -> None:
        if size < 0:
            raise ValueError("pool size must be >= 0")
        self.spec = spec or ContainerSpec()
        self.size = size
        self.max_message = max_message
        self._client_arg = docker_client
        self.client: Any = None
        self._ready: list[SandboxContainer] = []
        self._wake = anyio.Event()
        self._tasks: anyio.abc.TaskGroup | None = None
        self._closed = False
        #: Why the last background start failed (shown when acquire has to start cold).
        self.last_error: BaseException | None = None
        self.handed_out = 0
        self.cold_starts = 0

    @property
    def ready(self) -> int:
        return len(self._ready)

    async def __aenter__(self) -> ContainerPool:
        self.client = await anyio.to_thread.run_sync(_client, self._client_arg)
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(self._refill)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_full(self, timeout: float = 60.0) -> None:
        """Wait until the pool holds ``size`` containers (benchmarks, tests)."""
        with anyio.fail_after(timeout):
            while len(self._ready) < self.size:
                if self.last_error is not None:
                    raise self.last_error
                await anyio.sleep(0.02)

    async def acquire(self) -> SandboxContainer:
        """A started container for one session: from the pool if one is ready."""
        if self._closed or self.client is None:
            raise RuntimeError("use the pool inside `async with ContainerPool(...)`")
        while self._ready:
            box = self._ready.pop(0)
            self._poke()
            if box.alive():
                self.handed_out += 1
                return box
            await box.remove()
        self._poke()
        self.cold_starts += 1
        box = await launch(self.client, self.spec, labels={"rlm.pool": "cold"})
        self.handed_out += 1
        return box

    def _poke(self) -> None:
        self._wake.set()

    async def _refill(self) -> None:
        while not self._closed:
            while len(self._ready) < self.size and not self._closed:
                try:
                    box = await launch(
                        self.client,
                        self.spec,
                        labels={"rlm.pool": "warm"},
                        max_message=self.max_message,
                    )
                except Exception as exc:
                    # Starting containers fails for a reason a cold start will also
                    # hit and report; do not spin on it.
                    self.last_error = exc
                    await anyio.sleep(5)
                    continue
                self.last_error = None
                if self._closed:
                    await box.remove()
                    return
                self._ready.append(box)
            self._wake = anyio.Event()
            await self._wake.wait()

    async def close(self) -> None:
        """Remove every container still in the pool; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, None
        if tasks is not None:
            # A start in flight removes its own container when cancelled.
            tasks.cancel_scope.cancel()
            await tasks.__aexit__(None, None, None)
        with anyio.CancelScope(shield=True):
            boxes, self._ready = self._ready, []
            for box in boxes:
                await box.remove()
            if self._client_arg is None and self.client is not None:
                self.client.close()
