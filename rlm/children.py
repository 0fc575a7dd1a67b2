"""Child RLMs: ``rlm_query`` and ``rlm_batch`` from model code, run on the host.

A child is a run of its own, one level deeper in its parent's tree: its own
session, its own sandbox of the same backend (from the pool when there is one), its
own root loop with the child model as its root, and the same sub model. Its root
calls and sub-calls go through the same batcher and take their turns in the fair
scheduler under the tree's one identity, so a tree of children gets no more of the
provider than a single session would; the tree caps how many children start and
how many sandboxes are alive at once (:class:`~rlm.tree.RunTree`).

A child that fails or is stopped by a limit becomes a failed
:class:`~rlm.subcalls.batcher.SubResult`: model code sees an ``LLMError`` and goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rlm.bridge import ResultCallback
from rlm.config import RLMConfig
from rlm.errors import RLMError
from rlm.loop import RootLoop
from rlm.prompts import describe_context
from rlm.provider.client import ModelCallFailure
from rlm.session import SessionState
from rlm.stack import BackendChoice, build_session
from rlm.subcalls.batcher import Batcher, SubResult

if TYPE_CHECKING:
    from rlm.backends.docker import ContainerSource
    from rlm.tools import ToolSet

log = logging.getLogger(__name__)

#: Characters of a child's prompt and answer shown in events.
_PREVIEW = 200


class Children:
    """Runs the child RLMs of every run in a tree (a :class:`~rlm.bridge.ChildRunner`)."""

    def __init__(
        self,
        config: RLMConfig,
        backend: BackendChoice,
        batcher: Batcher,
        *,
        pool: ContainerSource | None = None,
        tools: ToolSet | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.batcher = batcher
        self.pool = pool
        #: The tools children get (the RLM's ``child_tools``).
        self.tools = tools

    @property
    def model(self) -> str:
        model = self.config.child_model or self.config.effective_sub_model
        assert model is not None
        return model

    def can_spawn(self, parent: SessionState) -> bool:
        """Whether a child of ``parent`` would be within the depth limit."""
        return parent.depth + 1 < self.config.max_depth

    async def run(
        self,
        parent: SessionState,
        prompts: list[str],
        contexts: list[Any] | None,
        max_concurrent: int | None,
        *,
        on_result: ResultCallback | None = None,
    ) -> Sequence[SubResult]:
        """Run one child per prompt, at most ``max_concurrent`` at once; in input order."""
        total = len(prompts)
        results: list[SubResult | None] = [None] * total
        queue = iter(range(total))

        async def worker() -> None:
            for i in queue:
                context = None if contexts is None else contexts[i]
                result = await self.child(parent, prompts[i], context)
                results[i] = result
                if on_result is not None:
                    on_result(i, result)

        width = min(total, max_concurrent or total, parent.limits.max_live_children)
        async with asyncio.TaskGroup() as tg:
            for _ in range(max(1, width)):
                tg.create_task(worker())
        return [r if r is not None else SubResult(error="not run", kind="error") for r in results]

    async def child(self, parent: SessionState, prompt: str, context: Any) -> SubResult:
        """One child run of ``parent``; its answer, or why it has none."""
        tree = parent.tree
        refused = self._refusal(parent)
        if refused is not None:
            return refused
        tree.children_started += 1
        async with tree.live_children:
            session = SessionState(
                sub_model=parent.sub_model,
                limits=parent.limits,
                tenant=parent.tenant,
                emit=parent.emit,
                tree=tree,
                depth=parent.depth + 1,
                parent_id=parent.session_id,
            )
            data = _child_context(prompt, context)
            parent.event(
                "child_start",
                child_id=session.session_id,
                model=self.model,
                prompt=prompt[:_PREVIEW],
                context=describe_context(data),
            )
            started = time.monotonic()
            result, status, stopped = await self._run(session, prompt, data)
            parent.event(
                "child_end",
                child_id=session.session_id,
                status=status,
                stopped=stopped,
                answer=(result.text or "")[:_PREVIEW] if result.ok else None,
                error=result.error,
                failure=None if result.ok else result.kind,
                seconds=round(time.monotonic() - started, 4),
                usage=session.usage.to_dict(),
            )
            return result

    def _refusal(self, parent: SessionState) -> SubResult | None:
        tree = parent.tree
        if tree.stopped is not None:
            parent.refuse("children")
            return SubResult(
                error=f"the run has stopped at its {tree.stopped} limit; no child was started",
                kind="limit",
            )
        limit = parent.limits.max_children
        if limit is not None and tree.children_started >= limit:
            parent.refuse("children")
            tree.stop("max_children")
            return SubResult(
                error=f"this run may start {limit} child RLMs and has; no child was started. "
                "Answer with what you have.",
                kind="limit",
            )
        return None

    async def _run(
        self, session: SessionState, prompt: str, context: Any
    ) -> tuple[SubResult, str, str | None]:
        stack = build_session(
            self.config,
            self.backend,
            batcher=self.batcher,
            session=session,
            pool=self.pool,
            children=self,
            tools=self.tools,
        )
        try:
            await stack.start(context)
            loop = RootLoop(
                self.config,
                self.batcher.client,
                stack.sandbox,
                session,
                model=self.model,
                scheduler=self.batcher.scheduler,
                children=self.can_spawn(session),
                tools=self.tools.describe() if self.tools else "",
            )
            ending = await loop.run(prompt, describe_context(context))
        except ModelCallFailure as exc:
            return (
                SubResult(error=f"the child's root model failed: {exc}", kind="child"),
                "failed",
                None,
            )
        except RLMError as exc:
            return SubResult(error=f"the child run failed: {exc}", kind="child"), "failed", None
        except Exception:
            log.exception("a child run failed inside the host")
            return (
                SubResult(error="the child run failed (internal error)", kind="child"),
                "failed",
                None,
            )
        finally:
            await stack.aclose()
        if ending.stopped is not None:
            partial = f"; its last answer: {ending.answer[:2000]}" if not ending.missing else ""
            return (
                SubResult(
                    error=f"the child run stopped at its {ending.stopped} limit{partial}",
                    kind="limit",
                ),
                "limit",
                ending.stopped,
            )
        if ending.missing:
            return SubResult(error=ending.answer, kind="child"), "no_answer", None
        return SubResult(text=ending.answer), "forced" if ending.forced else "answered", None


def _child_context(prompt: str, context: Any) -> str | list[Any] | dict[str, Any]:
    """What a child sees as ``context``: the prompt itself when it was given none."""
    if context is None:
        return prompt
    if isinstance(context, (str, list, dict)):
        return context
    return json.dumps(context)
