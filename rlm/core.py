"""The public entry point: :class:`RLM` answers a query about a context.

A single completion is a one-turn session (:mod:`rlm.sessions`), which assembles
the run: the backend (chosen once per RLM), the stack of the root run
(:mod:`rlm.stack`), child RLMs when ``max_depth`` allows them (:mod:`rlm.children`),
host tools (:mod:`rlm.tools`), and the root loop (:mod:`rlm.loop`); then reports
the whole tree's answer, usage and trajectory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from rlm.config import RLMConfig
from rlm.result import RLMResult
from rlm.sessions import DEFAULT_MAX_SNAPSHOT, RLMSession
from rlm.stack import BackendChoice, choose_backend
from rlm.subcalls.batcher import Batcher
from rlm.tools import Tools, ToolSet

if TYPE_CHECKING:
    from rlm.backends.docker import ContainerSource

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
        pool: ContainerSource | None = None,
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

    # -- what sessions share -------------------------------------------------------------

    async def backend(self) -> BackendChoice:
        """The backend this RLM's runs use, chosen once (``auto`` asks the engine,
        off the event loop)."""
        if self._backend is None:
            self._backend = await choose_backend(self.config)
        return self._backend

    @property
    def backend_reason(self) -> str:
        return self._backend.reason if self._backend is not None else ""

    @property
    def shared_batcher(self) -> Batcher | None:
        """The batcher given to this RLM (None: each session makes its own)."""
        return self._batcher

    @property
    def pool(self) -> ContainerSource | None:
        return self._pool

    # -- one question ------------------------------------------------------------------

    def completion(self, context: Any, query: str, *, answer_schema: Any = None) -> RLMResult:
        """Answer ``query`` about ``context`` (blocking)."""

        async def run() -> RLMResult:
            return await self.acompletion(context, query, answer_schema=answer_schema)

        return anyio.run(run)

    async def acompletion(
        self, context: Any, query: str, *, answer_schema: Any = None
    ) -> RLMResult:
        """Answer ``query`` about ``context``.

        With ``answer_schema`` (a JSON Schema dict, or a Pydantic model class) the
        answer is validated and returned as ``result.value``; an answer that does
        not match goes back to the root model with what is wrong, up to
        ``config.max_answer_retries`` times.
        """
        _check_context(context)
        async with self.session(idle_timeout=None) as session:
            return await session.acompletion(context, query, answer_schema=answer_schema)

    # -- sessions ----------------------------------------------------------------------

    def session(
        self, *, idle_timeout: float | None = 600.0, max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT
    ) -> RLMSession:
        """A session that keeps one sandbox across questions: ``async with`` it (or
        ``with`` it for the blocking API). See :class:`~rlm.sessions.RLMSession`."""
        return RLMSession(self, idle_timeout=idle_timeout, max_snapshot_bytes=max_snapshot_bytes)

    async def arestore(self, blob: bytes, *, idle_timeout: float | None = 600.0) -> RLMSession:
        """A started session whose sandbox holds the variables of ``blob`` (from
        :meth:`RLMSession.asnapshot`); close it with ``aclose()``."""
        return await RLMSession(self, idle_timeout=idle_timeout, _restore=blob).start()

    def restore(self, blob: bytes, *, idle_timeout: float | None = 600.0) -> RLMSession:
        """:meth:`arestore` for the blocking API: use the result in a ``with`` block."""
        return RLMSession(self, idle_timeout=idle_timeout, _restore=blob)


def _check_context(context: Any) -> None:
    if not isinstance(context, (str, list, dict)):
        raise TypeError(
            f"context must be a str, a list or a JSON-able dict, not {type(context).__name__}"
        )
