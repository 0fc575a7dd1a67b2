"""Assembling one session's stack: client → batcher → session → bridge → sandbox.

Every entry point builds sessions here: :class:`~rlm.core.RLM` (and so ``rlm run``
and ``rlm demo``), ``rlm exec``, the security harness, and the coming service. What
differs between them is passed in (a shared batcher, a warm pool, a recording
bridge, a sandbox factory of a security target); how the parts are wired, started
and closed is written once::

    backend = await choose_backend(config)
    stack = build_session(config, backend, emit=trajectory.emit)
    try:
        await stack.start(context)
        ...  # stack.sandbox.execute(...), stack.session.usage
    finally:
        await stack.aclose()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.to_thread

from rlm.backends import Sandbox, create_sandbox
from rlm.bridge import BatchRunner, ChildRunner, SessionBridge
from rlm.config import RLMConfig
from rlm.events import Event
from rlm.provider.client import ModelClient
from rlm.session import SessionState
from rlm.subcalls.batcher import Batcher
from rlm.tree import RunTree

if TYPE_CHECKING:
    from rlm.backends.docker import ContainerSource
    from rlm.tools import ToolSet

#: Makes the sandbox for one session, given the bridge bound to that session.
SandboxFactory = Callable[[SessionBridge], Sandbox]
#: Makes the bridge for one session (the security harness records what crosses it),
#: given its batcher, session, and keyword arguments ``children`` and ``tools``.
BridgeFactory = Callable[..., SessionBridge]


@dataclass(frozen=True)
class BackendChoice:
    """Which backend runs a configuration's sessions, and why (shown to users)."""

    name: Literal["restricted", "docker"]
    reason: str


def resolve_backend(config: RLMConfig) -> BackendChoice:
    """Pick the backend for ``config``; ``auto`` prefers Docker when it works.

    Blocking: ``auto`` asks the Docker engine. On an event loop use
    :func:`choose_backend`.
    """
    if config.backend == "restricted":
        return BackendChoice("restricted", "asked for")
    if config.backend == "docker":
        return BackendChoice("docker", "asked for")
    from rlm.backends.docker import unavailable_reason

    problem = unavailable_reason(config)
    if problem is None:
        return BackendChoice("docker", "Docker engine and image found")
    return BackendChoice("restricted", f"Docker not usable ({problem})")


async def choose_backend(config: RLMConfig) -> BackendChoice:
    """:func:`resolve_backend` without blocking the event loop on the engine."""
    if config.backend != "auto":
        return resolve_backend(config)
    return await anyio.to_thread.run_sync(resolve_backend, config)


def model_client(config: RLMConfig) -> ModelClient:
    """A client for ``config``'s provider; it holds the API key, on the host only."""
    return ModelClient(
        api_key=config.api_key, base_url=config.base_url, timeout=config.request_timeout
    )


def new_session(
    config: RLMConfig, *, emit: Callable[[Event], None] | None = None, sub_model: str | None = None
) -> SessionState:
    """A root run's session, bound to ``config``'s sub model, limits, prices and tenant."""
    return SessionState(
        sub_model=sub_model or config.effective_sub_model or "unconfigured",
        limits=config.limits,
        tenant=config.tenant,
        emit=emit,
        tree=RunTree(config.limits, config.prices),
    )


def sandbox_factory(
    config: RLMConfig, backend: BackendChoice, *, pool: ContainerSource | None = None
) -> SandboxFactory:
    """Makes ``backend``'s sandboxes as ``config`` says (from ``pool`` when given)."""

    def make(bridge: SessionBridge) -> Sandbox:
        if backend.name == "restricted" and config.restricted_isolation != "inprocess":
            from rlm.backends.restricted import make_restricted

            return make_restricted(
                bridge, isolation=config.restricted_isolation, output_limit=config.output_limit
            )
        return create_sandbox(backend.name, bridge, config, pool=pool)

    return make


@dataclass(eq=False)
class SessionStack:
    """One session's parts, wired together; :meth:`aclose` releases what it owns."""

    session: SessionState
    bridge: SessionBridge
    sandbox: Sandbox
    batcher: BatchRunner
    #: The provider client behind the batcher, for the root model's calls (None
    #: when the batcher is not a :class:`Batcher`, e.g. a stand-in with no model).
    client: ModelClient | None = None
    #: Whether this stack made ``client`` and so closes it.
    owns_client: bool = False

    async def start(self, context: Any = None) -> None:
        """Start the sandbox and bind ``context`` in it (when given).

        On any failure, cancellation included, everything is closed again.
        """
        try:
            await self.sandbox.start()
            if context is not None:
                await self.sandbox.load_context(context)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the sandbox and the stack's own client; safe to call twice."""
        with anyio.CancelScope(shield=True):
            try:
                try:
                    await self.bridge.aclose()
                finally:
                    await self.sandbox.close()
            finally:
                if self.owns_client and self.client is not None:
                    self.owns_client = False
                    await self.client.aclose()


def build_session(
    config: RLMConfig,
    backend: BackendChoice | None = None,
    *,
    batcher: BatchRunner | None = None,
    session: SessionState | None = None,
    pool: ContainerSource | None = None,
    emit: Callable[[Event], None] | None = None,
    sandboxes: SandboxFactory | None = None,
    bridge: BridgeFactory = SessionBridge,
    children: ChildRunner | None = None,
    tools: ToolSet | None = None,
) -> SessionStack:
    """Wire one session's stack; nothing is started yet (see :meth:`SessionStack.start`).

    Without ``batcher`` the stack gets a client and a batcher of its own, closed with
    it; a service passes its one shared batcher instead. ``session`` defaults to a
    new one from ``config``; ``sandboxes`` to ``backend``'s sandboxes from ``config``
    (and ``pool``); one of ``backend`` and ``sandboxes`` is needed. ``children``
    runs the session's ``rlm_query`` calls (without it they are plain sub-calls);
    ``tools`` are the host tools its code may call.
    """
    if sandboxes is None and backend is None:
        raise TypeError("build_session needs a backend (choose_backend) or a sandbox factory")
    owns_client = batcher is None
    if batcher is None:
        batcher = Batcher(model_client(config))
    if session is None:
        session = new_session(config, emit=emit)
    if sandboxes is None:
        assert backend is not None
        sandboxes = sandbox_factory(config, backend, pool=pool)
    session_bridge = bridge(batcher, session, children=children, tools=tools)
    return SessionStack(
        session=session,
        bridge=session_bridge,
        sandbox=sandboxes(session_bridge),
        batcher=batcher,
        client=batcher.client if isinstance(batcher, Batcher) else None,
        owns_client=owns_client,
    )
