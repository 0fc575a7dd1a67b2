"""The public entry point: :class:`RLM` answers a query about a context.

It assembles one run: the backend (chosen once per RLM), the stack of the root run
(:mod:`rlm.stack`), child RLMs when ``max_depth`` allows them (:mod:`rlm.children`),
host tools (:mod:`rlm.tools`), and the root loop (:mod:`rlm.loop`); then reports
the whole tree's answer, usage and trajectory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from rlm.children import Children
from rlm.config import RLMConfig
from rlm.errors import ConfigurationError
from rlm.loop import RootLoop
from rlm.prompts import describe_context
from rlm.result import RLMResult, finished_status
from rlm.stack import BackendChoice, build_session, choose_backend, model_client
from rlm.subcalls.batcher import Batcher
from rlm.tools import Tools, ToolSet
from rlm.trajectory import Trajectory

if TYPE_CHECKING:
    from rlm.backends.docker import ContainerPool

EventCallback = Callable[[dict[str, Any]], None]


class RLM:
    """A Recursive Language Model over a pluggable sandbox.

    >>> rlm = RLM(model="gpt-4.1", sub_model="gpt-4.1-mini")
    >>> result = rlm.completion(context=huge_text, query="Who signed the contract?")
    >>> result.answer

    Settings not given here come from the environment and ``.env`` (see
    :class:`~rlm.config.RLMConfig`). ``on_event`` receives every event of a run as it
    happens (root calls, streamed root tokens when ``stream=True``, cells, batch
    progress); ``trajectory_path`` appends them as JSON lines to a file.

    A service running many sessions shares one ``batcher`` (global limits,
    fairness across sessions and tenants, one cache) and, for Docker, one warm
    ``pool`` of containers; each run still gets its own session and container.

    ``tools`` (callables with type hints, :class:`~rlm.tools.Tool` objects, or a
    name → callable mapping) become functions of the same name in the sandbox; they
    run on the host, with the host's rights. Child RLMs (``max_depth`` > 1) get the
    same tools unless ``child_tools`` says otherwise (``[]`` for none).
    """

    def __init__(
        self,
        config: RLMConfig | None = None,
        *,
        on_event: EventCallback | None = None,
        trajectory_path: str | Path | None = None,
        stream: bool = False,
        batcher: Batcher | None = None,
        pool: ContainerPool | None = None,
        tools: Tools | None = None,
        child_tools: Tools | None = None,
        **settings: Any,
    ) -> None:
        base = config if config is not None else RLMConfig.from_env()
        self.config = base.with_(**{k: v for k, v in settings.items() if v is not None})
        self.on_event = on_event
        self.trajectory_path = trajectory_path
        self.stream = stream
        self._batcher = batcher
        self._pool = pool
        self._backend: BackendChoice | None = None
        self.tools = ToolSet.build(tools)
        self.child_tools = self.tools if child_tools is None else ToolSet.build(child_tools)

    def completion(self, context: Any, query: str) -> RLMResult:
        """Answer ``query`` about ``context`` (blocking)."""
        return anyio.run(self.acompletion, context, query)

    async def acompletion(self, context: Any, query: str) -> RLMResult:
        """Answer ``query`` about ``context``."""
        config = self.config
        if not config.model:
            raise ConfigurationError(
                "no root model: set RLM_MODEL (or pass model=...), "
                "e.g. RLM_MODEL=gpt-4.1 with OPENAI_API_KEY set"
            )
        _check_context(context)
        if config.limits.max_cost_usd is not None and (unpriced := config.unpriced_models()):
            raise ConfigurationError(
                f"max_cost_usd needs a price for every model; add {', '.join(unpriced)} to "
                "the price table (RLM_PRICES='{\"model\": [input, output]}', US dollars "
                "per million tokens)"
            )
        started = time.monotonic()
        if self._backend is None:
            # Once per RLM, off the event loop: `auto` asks the Docker engine.
            self._backend = await choose_backend(config)
        backend = self._backend
        trajectory = Trajectory(self.trajectory_path, on_event=self.on_event)
        batcher = self._batcher
        owns_client = batcher is None
        if batcher is None:
            batcher = Batcher(model_client(config))
        try:
            children = None
            if config.max_depth > 1:
                children = Children(
                    config, backend, batcher, pool=self._pool, tools=self.child_tools
                )
            stack = build_session(
                config,
                backend,
                batcher=batcher,
                pool=self._pool,
                emit=trajectory.emit,
                children=children,
                tools=self.tools,
            )
            stack.owns_client = owns_client
            owns_client = False
        except BaseException:
            trajectory.close()
            if owns_client:
                await batcher.client.aclose()
            raise
        session, sandbox = stack.session, stack.sandbox
        session.event(
            "run_start",
            query=query,
            context=describe_context(context),
            model=config.model,
            sub_model=session.sub_model,
            backend=sandbox.name,
            backend_reason=backend.reason,
            max_depth=config.max_depth,
            tools=list(self.tools.names),
        )
        try:
            await stack.start(context)
            loop = RootLoop(
                config,
                batcher.client,
                sandbox,
                session,
                model=config.model,
                scheduler=batcher.scheduler,
                stream=self.stream,
                children=children is not None and children.can_spawn(session),
                tools=self.tools.describe(),
            )
            ending = await loop.run(query, context)
            tree = session.tree
            limits = dict(session.refusals)
            status = finished_status(
                forced=ending.forced,
                missing=ending.missing,
                limits=limits,
                stopped=ending.stopped,
            )
            usage = tree.usage()
            cost = tree.cost_usd() if config.prices else None
            session.event(
                "final",
                answer=ending.answer,
                forced=ending.forced,
                status=status,
                limits=limits,
                stopped=ending.stopped,
            )
            session.event("usage", **usage.to_dict(), cost_usd=cost)
            return RLMResult(
                answer=ending.answer,
                iterations=ending.iterations,
                usage=usage,
                wall_time_s=time.monotonic() - started,
                backend=sandbox.name,
                session_id=session.session_id,
                forced=ending.forced,
                trajectory=trajectory.events,
                status=status,
                limits=limits,
                stopped=ending.stopped,
                cost_usd=cost,
                children=tree.children_started,
            )
        finally:
            await stack.aclose()
            trajectory.close()


def _check_context(context: Any) -> None:
    if not isinstance(context, (str, list, dict)):
        raise TypeError(
            f"context must be a str, a list or a JSON-able dict, not {type(context).__name__}"
        )
