"""Where a run's sandbox goes: the Docker engines of ``[[engines]]``, least loaded first.

One :class:`Placement` holds, on every engine, one warm pool per container shape
(the profiles' image, runtime and limits) and hands each new sandbox to the
healthy engine with the fewest live sandboxes of this replica, of any shape (ties
go to the engine listed first); an engine's ``max_sandboxes`` bounds them all.
An engine whose health check (a ping, every few seconds) fails, or that fails
to start a container, is drained: it gets no new
sandboxes until a check passes again, while the sandboxes already on it run on
(or fail on their own, with their run). With no ``[[engines]]``, the one engine
of the environment (``DOCKER_HOST`` and friends, or the local socket) is the
only one.

An engine over TCP must use TLS (``ca_cert``, and a client certificate where the
engine asks for one): a plain-TCP Docker API is root on that machine for anyone
who can reach the port, so it is refused unless the engine's entry says
``insecure_plaintext = true``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.to_thread
from rlm_sandbox import protocol

from rlm.errors import ConfigurationError, SandboxUnavailable
from rlm.service.settings import Engine

if TYPE_CHECKING:
    import docker.tls
    from docker import DockerClient

    from rlm.backends.docker import ContainerPool, ContainerSpec, SandboxContainer

log = logging.getLogger("rlm.service")

#: Seconds between two health checks of every engine.
CHECK_INTERVAL_S = 5.0
#: A ping slower than this fails the check.
CHECK_TIMEOUT_S = 5.0
_UNCHECKED = "not checked yet"
#: How long a run waits for room when every healthy engine is at ``max_sandboxes``.
ROOM_WAIT_S = 60.0


def tls_config(engine: Engine) -> docker.tls.TLSConfig | bool:
    """How to reach ``engine``: its TLS settings, or False for plain TCP where the
    entry allows it. Raises ConfigurationError for a plain-TCP engine not marked
    insecure."""
    import docker.tls

    if engine.ca_cert is not None or engine.client_cert is not None:
        client_cert = None
        if engine.client_cert is not None and engine.client_key is not None:
            client_cert = (engine.client_cert, engine.client_key)
        return docker.tls.TLSConfig(
            client_cert=client_cert,
            ca_cert=engine.ca_cert,
            verify=engine.ca_cert if engine.ca_cert is not None else True,
        )
    if engine.url.startswith(("tcp://", "http://")) and not engine.insecure_plaintext:
        raise ConfigurationError(
            f"engine {engine.url} has no TLS: a plain-TCP Docker API gives anyone who can "
            "reach it root on that machine. Give its ca_cert (and client_cert/client_key), "
            "or set insecure_plaintext = true in its [[engines]] entry if the network "
            "itself is trusted"
        )
    return False


def engine_client(engine: Engine | None) -> DockerClient:
    """A client of ``engine`` (the environment's engine when None).

    Blocking (it asks the engine for its API version): call it off the event loop.
    """
    import docker

    from rlm.backends.docker.engine import connect

    if engine is None:
        return connect()
    tls = tls_config(engine)
    if tls is False:
        return docker.DockerClient(base_url=engine.url, timeout=120)
    # A fixed API version (Docker 20.10's, which later engines still serve), so that
    # nothing is sent before trust_env is off: with it on, requests would let
    # REQUESTS_CA_BUNDLE from the environment replace the engine's own CA.
    client = docker.DockerClient(base_url=engine.url, tls=tls, timeout=120, version="1.41")
    client.api.trust_env = False
    client.ping()
    return client


def engine_name(engine: Engine | None) -> str:
    from rlm.backends.docker.engine import engine_address

    return engine.url if engine is not None else engine_address()


@dataclass(eq=False)
class EngineSlot:
    """One engine as the placement sees it: its pools, its health, its load."""

    name: str
    engine: Engine | None
    client: DockerClient | None = None
    #: One warm pool per container shape, while the engine is connected.
    pools: dict[ContainerSpec, ContainerPool] = field(default_factory=dict)
    healthy: bool = False
    #: Why the engine is drained (None while healthy).
    error: str | None = _UNCHECKED
    #: Containers handed out from this engine whose session has not closed them.
    handed: list[SandboxContainer] = field(default_factory=list)
    placed: int = 0
    #: Sandboxes being started here now: counted as load, so that runs starting at
    #: the same moment spread out instead of all picking the engine idle before them.
    starting: int = 0

    @property
    def live(self) -> int:
        self.handed = [box for box in self.handed if not box.channel.closed]
        return len(self.handed)

    @property
    def load(self) -> int:
        return self.live + self.starting

    @property
    def ready(self) -> int:
        return sum(pool.ready for pool in self.pools.values())

    @property
    def full(self) -> bool:
        bound = self.engine.max_sandboxes if self.engine is not None else None
        return bound is not None and self.load >= bound

    def drain(self, why: str) -> None:
        if self.healthy or self.error == _UNCHECKED:
            log.error("engine %s drained: %s", self.name, why)
        self.healthy, self.error = False, why

    def restore(self) -> None:
        if not self.healthy and self.error != _UNCHECKED:
            log.warning("engine %s is healthy again", self.name)
        self.healthy, self.error = True, None

    def stats(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "healthy": self.healthy,
            "error": self.error,
            "live_sandboxes": self.live,
            "ready": self.ready,
            "max_sandboxes": self.engine.max_sandboxes if self.engine is not None else None,
            "placed": self.placed,
        }


class Placement:
    """Containers of one or more shapes over several engines.

    Use it inside ``async with``: entering connects to every engine (one that
    cannot be reached starts drained, and is checked again like any other), opens
    a warm pool of ``pool_size`` per shape on each, and starts the health checks.
    :meth:`source` is a :class:`~rlm.backends.docker.source.ContainerSource` for
    one shape; with a single shape the placement is one itself.
    """

    def __init__(
        self,
        specs: ContainerSpec | Sequence[ContainerSpec],
        engines: Sequence[Engine] = (),
        *,
        pool_size: int = 2,
        max_message: int = protocol.DEFAULT_MAX_MESSAGE,
        check_interval_s: float = CHECK_INTERVAL_S,
        room_wait_s: float = ROOM_WAIT_S,
    ) -> None:
        shapes = list(specs) if isinstance(specs, Sequence) else [specs]
        if not shapes:
            raise ValueError("a placement needs at least one container shape")
        #: The container shapes, each once.
        self.specs: list[ContainerSpec] = list(dict.fromkeys(shapes))
        self.pool_size = pool_size
        self.max_message = max_message
        self.check_interval_s = check_interval_s
        self.room_wait_s = room_wait_s
        listed: Sequence[Engine | None] = engines or [None]
        self.slots = [EngineSlot(engine_name(e), e) for e in listed]
        self._tasks: anyio.abc.TaskGroup | None = None
        self._closing = anyio.Event()
        #: The health checks and engines' connect loops, cancelled on close.
        self._scopes: list[anyio.CancelScope] = []

    @property
    def spec(self) -> ContainerSpec:
        """The one shape of a single-shape placement."""
        if len(self.specs) != 1:
            raise ValueError("this placement has several shapes: use source(spec)")
        return self.specs[0]

    def source(self, spec: ContainerSpec) -> ShapeSource:
        """The containers of ``spec`` (one of :attr:`specs`) from this placement."""
        if spec not in self.specs:
            raise ValueError(f"this placement has no pools for {spec!r}")
        return ShapeSource(self, spec)

    @property
    def ready(self) -> int:
        """Warm containers ready on the healthy engines."""
        return sum(slot.ready for slot in self.slots if slot.healthy)

    @property
    def placeable(self) -> bool:
        """Whether a sandbox could be placed now: some engine is healthy."""
        return any(slot.healthy for slot in self.slots)

    @property
    def live(self) -> int:
        return sum(slot.live for slot in self.slots)

    def stats(self) -> list[dict[str, Any]]:
        return [slot.stats() for slot in self.slots]

    async def __aenter__(self) -> Placement:
        for slot in self.slots:
            if slot.engine is not None:
                tls_config(slot.engine)  # a plain-TCP engine is refused before anything
        tasks = anyio.create_task_group()
        await tasks.__aenter__()
        self._tasks, self._closing = tasks, anyio.Event()
        try:
            first_tries = []
            for slot in self.slots:
                tried = anyio.Event()
                first_tries.append(tried)
                tasks.start_soon(self._serve_engine, slot, tried)
            for tried in first_tries:
                await tried.wait()
            tasks.start_soon(self._check_forever)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tasks, self._tasks = self._tasks, None
        if tasks is None:
            return
        # Each engine's task closes its own pool (entered in that task) on the way out.
        self._closing.set()
        for scope in self._scopes:
            scope.cancel()
        await tasks.__aexit__(None, None, None)

    async def _serve_engine(self, slot: EngineSlot, tried: anyio.Event) -> None:
        """Connect to one engine (again and again until it answers) and keep its
        warm pool open until the placement closes."""
        from rlm.backends.docker import ContainerPool

        with anyio.CancelScope() as scope:
            self._scopes.append(scope)
            if self._closing.is_set():  # closed before this task first ran
                scope.cancel()
            while slot.client is None:
                try:
                    slot.client = await anyio.to_thread.run_sync(
                        engine_client, slot.engine, abandon_on_cancel=True
                    )
                except Exception as exc:
                    slot.drain(f"cannot connect: {_short(exc)}")
                    tried.set()
                    await anyio.sleep(self.check_interval_s)
        if slot.client is None:
            tried.set()
            return
        try:
            async with AsyncExitStack() as pools:
                for spec in self.specs:
                    pool = ContainerPool(
                        spec,
                        size=self.pool_size,
                        docker_client=slot.client,
                        max_message=self.max_message,
                    )
                    slot.pools[spec] = await pools.enter_async_context(pool)
                slot.restore()
                tried.set()
                await self._closing.wait()
        finally:
            tried.set()
            slot.pools = {}
            slot.client.close()

    # -- placing a sandbox -----------------------------------------------------------

    def _choices(self, spec: ContainerSpec) -> list[EngineSlot]:
        open_slots = [s for s in self.slots if s.healthy and spec in s.pools and not s.full]
        # Stable: among engines equally loaded, the one listed first.
        return sorted(open_slots, key=lambda s: s.load)

    async def acquire(
        self, labels: Mapping[str, str] | None = None, *, spec: ContainerSpec | None = None
    ) -> SandboxContainer:
        """A started container of ``spec`` (the one shape, when there is one) from
        the least-loaded healthy engine with room.

        An engine that fails to start one is drained and the next one is tried;
        when every healthy engine is full, waits up to ``room_wait_s`` for room.
        """
        spec = spec if spec is not None else self.spec
        if spec not in self.specs:
            raise ValueError(f"this placement has no pools for {spec!r}")
        deadline = time.monotonic() + self.room_wait_s
        while True:
            for slot in self._choices(spec):
                pool = slot.pools.get(spec)
                if pool is None:  # the engine went away since the choice was made
                    continue
                slot.starting += 1
                try:
                    box = await pool.acquire(labels)
                except SandboxUnavailable as exc:
                    slot.drain(f"could not start a sandbox: {_short(exc)}")
                    continue
                finally:
                    slot.starting -= 1
                slot.handed.append(box)
                slot.placed += 1
                return box
            if any(s.healthy and s.pools for s in self.slots):
                if time.monotonic() < deadline:
                    await anyio.sleep(0.1)
                    continue
                raise SandboxUnavailable(
                    f"every healthy Docker engine is at its max_sandboxes and none had room "
                    f"within {self.room_wait_s:g} s; try again later, or raise max_sandboxes"
                )
            reasons = "; ".join(f"{s.name}: {s.error}" for s in self.slots)
            raise SandboxUnavailable(
                f"no Docker engine can take a sandbox now ({reasons}); the operator must "
                "bring an engine back (see /healthz)"
            )

    # -- health ----------------------------------------------------------------------

    async def check(self) -> None:
        """Ping every engine once: drain the ones that fail, restore the ones back."""
        async with anyio.create_task_group() as tasks:
            for slot in self.slots:
                tasks.start_soon(self._check_one, slot)

    async def _check_one(self, slot: EngineSlot) -> None:
        if slot.client is None or not slot.pools:
            return  # not connected: its own task keeps trying
        try:
            with anyio.fail_after(CHECK_TIMEOUT_S):
                await anyio.to_thread.run_sync(slot.client.ping, abandon_on_cancel=True)
        except TimeoutError:
            slot.drain(f"health check: no answer within {CHECK_TIMEOUT_S:g} s")
        except Exception as exc:
            slot.drain(f"health check: {_short(exc)}")
        else:
            slot.restore()

    async def _check_forever(self) -> None:
        with anyio.CancelScope() as scope:
            self._scopes.append(scope)
            if self._closing.is_set():  # closed before this task first ran
                scope.cancel()
            while True:
                await anyio.sleep(self.check_interval_s)
                await self.check()


@dataclass(frozen=True)
class ShapeSource:
    """A :class:`~rlm.backends.docker.source.ContainerSource` of one shape of a
    :class:`Placement`."""

    placement: Placement
    spec: ContainerSpec

    @property
    def ready(self) -> int:
        return sum(
            slot.pools[self.spec].ready
            for slot in self.placement.slots
            if slot.healthy and self.spec in slot.pools
        )

    async def acquire(self, labels: Mapping[str, str] | None = None) -> SandboxContainer:
        return await self.placement.acquire(labels, spec=self.spec)


_TLS_FAILURE = re.compile(r"\[SSL: [A-Z_]+\] ([^(')\"]+)")
_OS_FAILURE = re.compile(r"\[Errno \d+\] ([^(')\"]+)")


def _short(exc: BaseException, limit: int = 200) -> str:
    """The reason an engine failed, in a line: the SDK's errors wrap the one that
    matters (a TLS or socket error) in a paragraph of connection-pool detail."""
    text = str(exc).strip()
    tls = _TLS_FAILURE.search(text)
    if tls:
        reason = tls.group(1).strip().rstrip(":")
        return f"TLS failed: {reason} (check ca_cert, client_cert and client_key)"
    os_error = _OS_FAILURE.search(text)
    if os_error:
        return f"cannot reach it: {os_error.group(1).strip()}"
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
