"""The host side of every call out of model code: validate, bound, then act.

Both backends deliver sandbox requests here as ``(method, params)`` taken straight
from the untrusted side. Nothing is assumed about them: the method must be known,
the arguments must have the right types and sizes, and the run's limits apply.
A request that fails validation raises :class:`~rlm.errors.BridgeRefusal`, which the
backend returns to model code as ``RLMCallError``; it never reaches the provider,
a child run or a tool.

The methods, and who answers them:

- ``llm_query`` / ``llm_batch``: the batcher (:class:`BatchRunner`);
- ``rlm_query`` / ``rlm_batch``: child RLMs (:class:`ChildRunner`), or the batcher
  as plain prompts where a child would reach the depth limit;
- ``stream_open`` / ``stream_next`` / ``stream_close``: either kind of batch, its
  answers handed over as they complete (:class:`~rlm.streams.StreamTable`);
- ``tool``: a host tool (:class:`~rlm.tools.ToolSet`).

Nothing in a frame names a run, a depth or a budget: the bridge was bound to one
:class:`~rlm.session.SessionState` when its run started, and every count lives
there and in the run's tree, on the host.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from rlm.errors import BridgeRefusal, BudgetExceeded
from rlm.session import SessionState
from rlm.streams import StreamTable

if TYPE_CHECKING:
    from rlm.subcalls.batcher import SubResult
    from rlm.tools import ToolSet

#: Called with each prompt's index and result as it completes.
ResultCallback = Callable[[int, "SubResult"], None]
#: A validated batch, not started yet: run it, hearing each result as it completes.
Work = Callable[[ResultCallback | None], Awaitable[Sequence["SubResult"]]]

METHODS = (
    "llm_query",
    "llm_batch",
    "rlm_query",
    "rlm_batch",
    "stream_open",
    "stream_next",
    "stream_close",
    "tool",
)
_MAX_MODEL_NAME = 200
#: Characters of a prompt shown in events.
_PREVIEW = 200


class BatchRunner(Protocol):
    """What the bridge needs from a batcher: run one session's prompts, in order.

    :class:`~rlm.subcalls.batcher.Batcher` is the real one; a failed prompt comes back
    as a :class:`~rlm.subcalls.batcher.SubResult` with ``error`` set, never raised.
    ``on_result`` hears each prompt's result as it completes.
    """

    async def run(
        self,
        session: SessionState,
        model: str,
        prompts: list[str],
        max_concurrent: int | None,
        *,
        on_result: ResultCallback | None = None,
    ) -> Sequence[SubResult]: ...


class ChildRunner(Protocol):
    """What the bridge needs to run child RLMs for a run's code.

    :class:`~rlm.children.Children` is the real one. ``contexts`` are JSON values
    already checked for size; a child that fails or hits a limit comes back as a
    result with ``error`` set, never raised.
    """

    def can_spawn(self, parent: SessionState) -> bool:
        """Whether a child of ``parent`` is within the depth limit."""
        ...

    async def run(
        self,
        parent: SessionState,
        prompts: list[str],
        contexts: list[Any] | None,
        max_concurrent: int | None,
        *,
        on_result: ResultCallback | None = None,
    ) -> Sequence[SubResult]: ...


def plain_prompt(prompt: str, context: Any) -> str:
    """``rlm_query(prompt, context)`` as one prompt, for when no child may run."""
    if context is None:
        return prompt
    text = context if isinstance(context, str) else json.dumps(context, ensure_ascii=False)
    return f"{prompt}\n\n---\n{text}"


class SessionBridge:
    """One run's door to the batcher, its children and the host's tools."""

    def __init__(
        self,
        batcher: BatchRunner,
        session: SessionState,
        *,
        children: ChildRunner | None = None,
        tools: ToolSet | None = None,
    ) -> None:
        self.batcher = batcher
        self.session = session
        self.children = children
        self.tools = tools
        self.streams = StreamTable()

    @property
    def tool_specs(self) -> list[dict[str, Any]] | None:
        """The tools' specs the sandbox turns into functions (None without tools)."""
        return self.tools.specs() if self.tools else None

    async def call(self, method: object, params: object) -> Any:
        """Handle one request from the sandbox; returns a JSON-able answer."""
        if method not in METHODS:
            raise BridgeRefusal(
                f"unknown method {str(method)[:50]!r}; use llm_query, llm_batch, "
                "rlm_query, rlm_batch or a tool"
            )
        if not isinstance(params, dict):
            raise BridgeRefusal("malformed request: params must be an object")
        if method == "tool":
            return await self._tool(params)
        if method == "stream_next":
            _expect(params, {"stream"})
            return await self.streams.next(params.get("stream"))
        if method == "stream_close":
            _expect(params, {"stream"})
            await self.streams.close(params.get("stream"))
            return None
        if method == "stream_open":
            kind = params.get("method")
            if kind not in ("llm_batch", "rlm_batch"):
                raise BridgeRefusal("stream_open needs method llm_batch or rlm_batch")
            rest = {k: v for k, v in params.items() if k != "method"}
            self.streams.check_room()  # before the batch's budget is reserved
            work, total = self._batch_work(kind, rest)
            return {"stream": self.streams.open(total, work)}
        if method in ("llm_query", "rlm_query"):
            single = dict(params)
            single["prompts"] = [single.pop("prompt", None)]
            if method == "rlm_query":
                single["contexts"] = [single.pop("context", None)]
            work, _ = self._batch_work(method, single, single=True)
            results = await work(None)
            return results[0].to_wire()
        work, _ = self._batch_work(str(method), params)
        return [r.to_wire() for r in await work(None)]

    async def cell_finished(self) -> None:
        """Cancel what a cell left running (streams it did not read to the end)."""
        await self.streams.close_all()

    async def aclose(self) -> None:
        await self.streams.close_all()

    # -- batches -------------------------------------------------------------------------

    def _batch_work(
        self, method: str, params: dict[str, Any], *, single: bool = False
    ) -> tuple[Work, int]:
        """Validate a batch request; returns the work to run it, and its size.

        The work is not started: a stream runs it in the background, a plain call
        awaits it. Its sub-calls (or children) are admitted here, before it runs, so
        budgets hold however many requests race.
        """
        children = method.startswith("rlm")
        if children:
            allowed = {"prompts", "contexts", "max_concurrent"}
        else:
            allowed = {"prompts", "max_concurrent", "model"}
        if single:
            allowed.discard("max_concurrent")
        _expect(params, allowed)
        prompts = self._check_prompts(params.get("prompts"))
        max_concurrent = 1 if single else self._max_concurrent(params.get("max_concurrent"))
        session = self.session
        if children:
            contexts = self._check_contexts(params.get("contexts"), len(prompts))
            return self._children_work(prompts, contexts, max_concurrent), len(prompts)
        model = self._model(params.get("model"))
        session.admit_calls(len(prompts))
        return self._llm_work(
            model, prompts, max_concurrent, "llm_query" if single else method
        ), len(prompts)

    def _llm_work(
        self, model: str, prompts: list[str], max_concurrent: int | None, method: str
    ) -> Work:
        session = self.session

        async def work(on_result: ResultCallback | None) -> Sequence[SubResult]:
            answered = 0

            def heard(index: int, result: SubResult) -> None:
                nonlocal answered
                answered += 1
                if on_result is not None:
                    on_result(index, result)

            started = time.monotonic()
            preview = {"prompt": prompts[0][:_PREVIEW]} if len(prompts) == 1 else {}
            session.event("subcall_start", method=method, model=model, size=len(prompts), **preview)
            results: Sequence[SubResult] = ()
            try:
                results = await self.batcher.run(
                    session, model, prompts, max_concurrent, on_result=heard
                )
            finally:
                # A closed stream's unanswered prompts stay admitted: some were at the
                # provider already, and admitted calls must cover every request made.
                session.event(
                    "subcall_end",
                    method=method,
                    model=model,
                    size=len(prompts),
                    failures=sum(1 for r in results if not r.ok),
                    cancelled=len(prompts) - max(answered, len(results)),
                    seconds=round(time.monotonic() - started, 4),
                )
            return results

        return work

    def _children_work(
        self, prompts: list[str], contexts: list[Any] | None, max_concurrent: int | None
    ) -> Work:
        session = self.session
        children = self.children

        async def work(on_result: ResultCallback | None) -> Sequence[SubResult]:
            if children is not None and children.can_spawn(session):
                return await children.run(
                    session, prompts, contexts, max_concurrent, on_result=on_result
                )
            # At the depth limit, or where no child can run (rlm exec, a bare
            # bridge): plain prompts, the context after the question.
            plain = [
                plain_prompt(p, None if contexts is None else contexts[i])
                for i, p in enumerate(prompts)
            ]
            for p in plain:
                self._check_prompt_size(0, p)
            session.admit_calls(len(plain))
            return await self._llm_work(session.sub_model, plain, max_concurrent, "rlm_batch")(
                on_result
            )

        return work

    # -- tools ---------------------------------------------------------------------------

    async def _tool(self, params: dict[str, Any]) -> Any:
        _expect(params, {"name", "arguments"})
        if self.tools is None:
            raise BridgeRefusal("this run has no tools")
        name = params.get("name")
        session = self.session
        shown = name[:100] if isinstance(name, str) else "?"
        started = time.monotonic()
        session.event("tool_call", name=shown)
        answer: dict[str, Any] = {"error": "refused", "kind": "refused"}
        try:
            answer = await self.tools.call(name, params.get("arguments"), session.tree.tool_calls)
            return answer
        except BudgetExceeded:
            session.refuse("tools")
            raise
        finally:
            session.event(
                "tool_end",
                name=shown,
                ok="error" not in answer,
                error=str(answer.get("error"))[:300] if "error" in answer else None,
                seconds=round(time.monotonic() - started, 4),
            )

    # -- checks --------------------------------------------------------------------------

    def _model(self, value: object) -> str:
        if value is None:
            return self.session.sub_model
        if not isinstance(value, str) or not value or len(value) > _MAX_MODEL_NAME:
            raise BridgeRefusal("model must be a non-empty str naming a permitted model")
        allowed = self.session.limits.allowed_models
        if value != self.session.sub_model and (allowed is None or value not in allowed):
            raise BridgeRefusal(
                f"model {value[:50]!r} is not permitted for this session; "
                f"omit model= to use {self.session.sub_model!r}"
            )
        return value

    def _max_concurrent(self, value: object) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BridgeRefusal("max_concurrent must be a positive int or None")
        return value

    def _check_prompts(self, prompts: object) -> list[str]:
        limits = self.session.limits
        if not isinstance(prompts, list):
            raise BridgeRefusal("malformed request: prompts must be a list of str")
        if len(prompts) > limits.max_batch_size:
            self.session.refuse("batch_size", len(prompts))
            raise BudgetExceeded(
                f"batch of {len(prompts)} prompts is over this session's limit of "
                f"{limits.max_batch_size}; split it into smaller batches"
            )
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise BridgeRefusal(f"prompt {i} is not a str")
            self._check_prompt_size(i, prompt)
        return prompts

    def _check_prompt_size(self, i: int, prompt: str) -> None:
        limit = self.session.limits.max_prompt_chars
        if len(prompt) > limit:
            self.session.refuse("prompt_chars")
            raise BudgetExceeded(
                f"prompt {i} has {len(prompt):,} characters, over this session's "
                f"limit of {limit:,}; send a smaller chunk"
            )

    def _check_contexts(self, contexts: object, n: int) -> list[Any] | None:
        if contexts is None:
            return None
        if not isinstance(contexts, list) or len(contexts) != n:
            raise BridgeRefusal("malformed request: contexts must be a list, one per prompt")
        limit = self.session.limits.max_child_context_chars
        budget = limit
        for i, context in enumerate(contexts):
            if context is None:
                continue
            size = len(context) if isinstance(context, str) else _json_size(context, budget)
            if size > limit:
                more = "" if isinstance(context, str) else "+"
                raise BudgetExceeded(
                    f"context {i} has {size:,}{more} characters, over the {limit:,} a child run "
                    "may take; give each child a slice of the data, or filter it first"
                )
        return contexts


def _expect(params: dict[str, Any], allowed: set[str]) -> None:
    extra = set(params) - allowed
    if extra:
        # str(): a restricted backend's params may hold keys of any JSON-like type.
        shown = sorted(str(k)[:50] for k in extra)[:5]
        raise BridgeRefusal(f"malformed request: unexpected fields {shown}")


def _json_size(value: Any, limit: int) -> int:
    """Characters of ``value`` as JSON, counting no further than just past ``limit``."""
    size = 0
    for piece in json.JSONEncoder(ensure_ascii=False).iterencode(value):
        size += len(piece)
        if size > limit:
            break
    return size
