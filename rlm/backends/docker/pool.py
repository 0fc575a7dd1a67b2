"""A warm pool of started sandbox containers, so a session need not wait for one.

Each container is handed out once and belongs to that session until it is removed:
nothing is ever reused across sessions. The pool refills itself in the background,
up to ``parallel`` starts at once (a start is mostly the engine's wait, not our
CPU), grows towards ``max_size`` while sessions find it empty, and removes whatever
it still holds when closed; as it starts, it sweeps the
containers of processes that died without removing theirs (:func:`sweep_orphans`)::

    async with ContainerPool(ContainerSpec(runtime="runsc"), size=2) as pool:
        sandbox = DockerSandbox(bridge, pool)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from rlm_sandbox import protocol

from rlm.backends.docker.checks import sweep_orphans
from rlm.backends.docker.container import ContainerSpec, SandboxContainer
from rlm.backends.docker.source import ColdStart

if TYPE_CHECKING:
    from docker import DockerClient

log = logging.getLogger(__name__)


class ContainerPool:
    """Up to ``size`` pre-started containers of one :class:`ContainerSpec`.

    A :class:`~rlm.backends.docker.source.ContainerSource`: when none is ready,
    :meth:`acquire` starts one cold. Use it inside ``async with``; :meth:`close` may
    also be called earlier, from any task, to stop it and remove its containers.
    """

    def __init__(
        self,
        spec: ContainerSpec | None = None,
        *,
        size: int = 2,
        max_size: int | None = None,
        parallel: int = 4,
        docker_client: DockerClient | None = None,
        max_message: int = protocol.DEFAULT_MAX_MESSAGE,
    ) -> None:
        if size < 0:
            raise ValueError("pool size must be >= 0")
        if max_size is not None and max_size < size:
            raise ValueError("max_size must be >= size")
        if parallel < 1:
            raise ValueError("parallel must be >= 1")
        # Warm and cold starts alike go through this one starter (same client,
        # same spec, same message limit).
        self._starter = ColdStart(spec, docker_client=docker_client, max_message=max_message)
        self.spec = self._starter.spec
        self.size = size
        #: Each container idle in the pool holds up to ``spec.memory``: bound the
        #: growth by what the machine can hold (default: no growth).
        self.max_size = size if max_size is None else max_size
        self.parallel = parallel
        #: How many containers the pool keeps ready now: ``size``, plus one for each
        #: session that found it empty, up to ``max_size``.
        self.target = size
        self._starting = 0
        self.max_message = max_message
        self._ready: list[SandboxContainer] = []
        self._wake = anyio.Event()
        self._tasks: anyio.abc.TaskGroup | None = None
        self._refill_scope: anyio.CancelScope | None = None
        self._refill_done: anyio.Event | None = None
        self._closed = False
        self._close_done: anyio.Event | None = None
        #: Why the last background start failed (shown when acquire has to start cold).
        self.last_error: BaseException | None = None
        self.handed_out = 0
        self.cold_starts = 0

    @property
    def client(self) -> DockerClient | None:
        """The engine client (``None`` until the pool is entered)."""
        return self._starter.client

    @property
    def ready(self) -> int:
        return len(self._ready)

    async def __aenter__(self) -> ContainerPool:
        client = await self._starter.connect()
        # Containers of hosts that died before their own clean-up (SIGKILL, a
        # crash) would hold memory and pids until someone removes them.
        try:
            swept = await anyio.to_thread.run_sync(sweep_orphans, client)
        except Exception as exc:  # housekeeping: the pool works without it
            log.warning("could not sweep orphaned sandbox containers: %s", exc)
        else:
            if swept:
                log.info("removed %d orphaned sandbox container(s)", swept)
        tasks = anyio.create_task_group()
        # Entered here and exited in __aexit__, which `async with` runs in this
        # same task; close() only stops the refill, so any task may call it.
        await tasks.__aenter__()
        self._tasks = tasks
        self._refill_scope, self._refill_done = anyio.CancelScope(), anyio.Event()
        tasks.start_soon(self._refill, self._refill_scope, self._refill_done)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.close()
        finally:
            tasks, self._tasks = self._tasks, None
            if tasks is not None:
                await tasks.__aexit__(None, None, None)

    async def wait_full(self, timeout: float = 60.0) -> None:
        """Wait until the pool holds ``size`` containers (benchmarks, tests)."""
        with anyio.fail_after(timeout):
            while len(self._ready) < self.size:
                if self.last_error is not None:
                    raise self.last_error
                await anyio.sleep(0.02)

    async def acquire(self, labels: Mapping[str, str] | None = None) -> SandboxContainer:
        """A started container for one session: from the pool if one is ready.

        ``labels`` go on a container started cold for this call only.
        """
        if self._closed or self._tasks is None:
            raise RuntimeError("use the pool inside `async with ContainerPool(...)`")
        while self._ready:
            box = self._ready.pop(0)
            self._poke()
            if box.alive():
                self.handed_out += 1
                return box
            await box.remove()
        # Demand outran the pool: keep one more ready from now on (within max_size).
        self.target = min(self.max_size, self.target + 1)
        self._poke()
        self.cold_starts += 1
        box = await self._starter.acquire({**(labels or {}), "rlm.pool": "cold"})
        self.handed_out += 1
        return box

    def _poke(self) -> None:
        self._wake.set()

    async def _refill(self, scope: anyio.CancelScope, done: anyio.Event) -> None:
        try:
            with scope:
                async with anyio.create_task_group() as starts:
                    while not self._closed:
                        while (
                            len(self._ready) + self._starting < self.target
                            and self._starting < self.parallel
                            and not self._closed
                        ):
                            self._starting += 1
                            starts.start_soon(self._start_one)
                        self._wake = anyio.Event()
                        await self._wake.wait()
        finally:
            done.set()

    async def _start_one(self) -> None:
        try:
            try:
                box = await self._starter.acquire({"rlm.pool": "warm"})
            except Exception as exc:
                # Starting containers fails for a reason a cold start will also hit
                # and report; this slot waits before trying again, so nothing spins.
                self.last_error = exc
                await anyio.sleep(5)
                return
            self.last_error = None
            if self._closed:
                await box.remove()
                return
            self._ready.append(box)
        finally:
            # Counted out only once the container is in the pool: the refill loop
            # must not see a gap and start one too many.
            self._starting -= 1
            self._poke()

    async def close(self) -> None:
        """Stop refilling and remove every container still in the pool.

        Safe to call twice and from any task (a later call waits for the first);
        ``async with`` calls it on the way out.
        """
        # Shielded: a caller being cancelled must not leave containers behind.
        with anyio.CancelScope(shield=True):
            if self._close_done is not None:
                await self._close_done.wait()
                return
            self._closed, self._close_done = True, anyio.Event()
            try:
                # A start in flight removes its own container when cancelled.
                if self._refill_scope is not None and self._refill_done is not None:
                    self._refill_scope.cancel()
                    await self._refill_done.wait()
                boxes, self._ready = self._ready, []
                for box in boxes:
                    await box.remove()
                await self._starter.aclose()
            finally:
                self._close_done.set()
