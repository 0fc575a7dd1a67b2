"""One run's root loop: the root model writes cells, the sandbox runs them, until FINAL.

The same loop runs the root of a tree and each child RLM (with the child model as
its root). It holds the run's limits on its side of the bridge: before each root
call and after each cell it asks the run's tree whether a limit was reached
(:attr:`rlm.tree.RunTree.stopped`), bounds root calls and cells by the wall time
left, counts cells that fail in a row, and when one is reached ends the run
gracefully: one forced-final turn where a model may still be called, else with
what it has.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import anyio

from rlm.answers import AnswerSchema
from rlm.backends import CellResult, Sandbox
from rlm.compaction import Compaction, Messages
from rlm.config import RLMConfig
from rlm.errors import VariableNotFound
from rlm.parsing import parse_reply
from rlm.prompts import (
    FORCE_FINAL,
    NO_ACTION,
    first_message,
    invalid_answer,
    limit_reached,
    missing_variable,
    system_prompt,
)
from rlm.provider.client import ChatResult, ModelCallFailure, ModelClient
from rlm.session import SessionState
from rlm.subcalls.fairness import FairScheduler
from rlm.subcalls.retry import RetryPolicy
from rlm.tree import SPENDING_STOPS, StopReason

#: Root calls retry like sub-calls (the batcher's policy), with fewer tries: a
#: stuck root call stalls the whole run, so it should fail and say so sooner.
ROOT_RETRY = RetryPolicy(max_tries=4)


class Ending(NamedTuple):
    """How a root loop ended."""

    answer: str
    iterations: int
    #: The iteration bound (or a limit) ran out and the model was made to answer.
    forced: bool = False
    #: Made to answer, the model named a variable the sandbox does not have.
    missing: bool = False
    #: The limit that ended the run, if one did.
    stopped: StopReason | None = None
    #: The final value as given (``FINAL(obj)``) or validated against the answer
    #: schema; None when there is none.
    value: Any = None
    #: Why the answer did not match the answer schema, after every retry.
    invalid: str | None = None


class _TimeUp(Exception):
    """The run's wall time ran out during a root call."""


class RootLoop:
    """One run's conversation with its root model."""

    def __init__(
        self,
        config: RLMConfig,
        client: ModelClient,
        sandbox: Sandbox,
        session: SessionState,
        *,
        model: str,
        scheduler: FairScheduler | None = None,
        stream: bool = False,
        children: bool = False,
        tools: str = "",
        schema: AnswerSchema | None = None,
        ready: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.sandbox = sandbox
        self.session = session
        self.model = model
        self.scheduler = scheduler
        self.stream = stream
        self.children = children
        self.tools = tools
        self.schema = schema
        #: Awaited before the sandbox is first used: a session's first turn starts the
        #: sandbox and loads its context while the first root call is in flight.
        self._ready = ready
        self.invalid_answers = 0
        self.compaction = Compaction(config)
        #: Every message of the conversation, kept whole when it is compacted.
        self.transcript: Messages = []
        self.errors_in_a_row = 0
        #: A limit of this run's own (consecutive errors), beside the tree's.
        self.own_stop: StopReason | None = None

    async def run(self, query: str, context_kind: str, *, note: str = "") -> Ending:
        """Answer ``query`` over a context :func:`~rlm.prompts.describe_context` called
        ``context_kind``; ``note`` is added to the first message (a session's turn)."""
        system = system_prompt(
            context_kind,
            max_prompt_chars=self.config.limits.max_prompt_chars,
            output_limit=self.config.output_limit,
            children=self.children,
            tools=self.tools,
            schema=self.schema.describe() if self.schema else "",
        )
        first = first_message(query, context_kind) + (f"\n\n{note}" if note else "")
        messages: Messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": first},
        ]
        self.transcript = list(messages)
        for iteration in range(1, self.config.max_iterations + 1):
            stop = self._stop()
            if stop is not None:
                return await self._end_at_limit(messages, stop, iteration)
            try:
                await self.compaction.maybe_compact(self, messages, iteration)
                text = await self.root_call(messages, iteration)
            except _TimeUp:
                return await self._end_at_limit(messages, "max_wall_time_s", iteration)
            self._say(messages, "assistant", text)
            reply = parse_reply(text)
            feedback = []
            failed = 0
            final: dict[str, Any] | None = None
            for code in reply.cells:
                result = await self.run_cell(code, iteration)
                failed += bool(result.error or result.timed_out)
                feedback.append(
                    format_output(result, self.config.output_limit, self.config.cell_timeout)
                )
                final = result.final
                if final is not None:
                    # FINAL() in a cell ends the run after that cell: the rest wait.
                    break
            self._count_errors(len(reply.cells), failed)
            ending: Ending | str | None = None
            if final is not None:
                ending = self._finish(final["value"], iteration, how=final.get("how", "FINAL"))
            elif reply.final is not None:
                if reply.final.variable is None:
                    ending = self._finish(reply.final.answer or "", iteration)
                else:
                    try:
                        value = await (await self._sandbox()).get_variable(reply.final.variable)
                        ending = self._finish(value, iteration, how="FINAL_VAR")
                    except VariableNotFound:
                        ending = missing_variable(reply.final.variable)
                        self.session.event("missing_variable", name=reply.final.variable)
            if isinstance(ending, Ending):
                return ending
            if ending is not None:
                feedback.append(ending)
            if reply.problem:
                feedback.append(f"Note: {reply.problem}; that block was not run.")
            if not feedback:
                feedback.append(NO_ACTION)
                self.session.event("no_action", iteration=iteration)
            self._say(messages, "user", "\n\n".join(feedback))
        stop = self._stop()
        if stop is not None:
            return await self._end_at_limit(messages, stop, self.config.max_iterations + 1)
        return await self._forced_final(messages, FORCE_FINAL, self.config.max_iterations + 1)

    def _say(self, messages: Messages, role: str, content: str) -> None:
        message = {"role": role, "content": content}
        messages.append(message)
        self.transcript.append(message)

    def _finish(self, value: Any, iteration: int, *, how: str = "FINAL") -> Ending | str:
        """The run's ending with ``value``, or, when it does not match the answer
        schema and retries are left, what to tell the model instead."""
        schema = self.schema
        if schema is None:
            return Ending(_as_text(value), iteration, value=value)
        verdict = schema.check(value)
        if verdict.ok:
            return Ending(_as_text(value), iteration, value=verdict.value)
        self.invalid_answers += 1
        self.session.event("invalid_answer", iteration=iteration, problem=verdict.problem, how=how)
        if self.invalid_answers > self.config.max_answer_retries:
            return Ending(
                _as_text(value), iteration, invalid=verdict.problem or "invalid", value=None
            )
        return invalid_answer(verdict.problem or "it does not match")

    # -- limits --------------------------------------------------------------------------

    def _stop(self) -> StopReason | None:
        tree = self.session.tree
        return tree.stopped or self.own_stop or tree.spent()

    def _count_errors(self, cells: int, failed: int) -> None:
        if not cells:
            return
        self.errors_in_a_row = self.errors_in_a_row + 1 if failed == cells else 0
        limit = self.session.limits.max_consecutive_errors
        if limit is not None and self.errors_in_a_row >= limit:
            self.own_stop = "max_consecutive_errors"

    async def _end_at_limit(self, messages: Messages, stop: StopReason, iteration: int) -> Ending:
        self.session.event("limit_reached", limit=stop, iteration=iteration)
        if stop in SPENDING_STOPS:
            # Another model call would spend past the budget: end with what there is.
            return Ending(
                f"(no answer: the run reached its {stop} limit before the model answered)",
                iteration,
                forced=True,
                missing=True,
                stopped=stop,
            )
        limits = self.session.limits
        what = f"{stop} = {getattr(limits, stop)}"
        ending = await self._forced_final(messages, limit_reached(what), iteration, grace=True)
        return ending._replace(stopped=stop)

    async def _forced_final(
        self, messages: Messages, prompt: str, iteration: int, *, grace: bool = False
    ) -> Ending:
        self._say(messages, "user", prompt)
        try:
            text = await self.root_call(messages, iteration, grace=grace)
        except _TimeUp:
            return Ending(
                "(no answer: the run's time was up before the model answered)",
                iteration,
                forced=True,
                missing=True,
                stopped="max_wall_time_s",
            )
        self.transcript.append({"role": "assistant", "content": text})
        final = parse_reply(text).final
        if final is not None and final.variable is not None:
            try:
                answer = await (await self._sandbox()).get_variable(final.variable)
                return self._forced(answer, iteration)
            except VariableNotFound:
                self.session.event("missing_variable", name=final.variable)
                return Ending(
                    f"(no answer: FINAL_VAR named a missing variable {final.variable!r})",
                    iteration,
                    forced=True,
                    missing=True,
                )
        if final is not None:
            return self._forced(final.answer or "", iteration)
        return self._forced(text.strip(), iteration)

    def _forced(self, value: Any, iteration: int) -> Ending:
        """The forced answer: checked against the schema once, with no retry left."""
        if self.schema is None:
            return Ending(_as_text(value), iteration, forced=True, value=value)
        verdict = self.schema.check(value)
        if verdict.ok:
            return Ending(_as_text(value), iteration, forced=True, value=verdict.value)
        self.session.event("invalid_answer", iteration=iteration, problem=verdict.problem)
        return Ending(_as_text(value), iteration, forced=True, invalid=verdict.problem)

    # -- the root model ------------------------------------------------------------------

    async def root_call(self, messages: Messages, iteration: int, *, grace: bool = False) -> str:
        """One reply of the root model, bounded by the run's wall time.

        ``grace`` is the forced-final turn after a limit: it gets
        ``SessionLimits.final_grace_s`` of its own, even when the time is up.
        """
        limit = self.session.tree.remaining()
        if grace:
            limit = self.session.limits.final_grace_s
        if limit is None:
            return await self._root_call(messages, iteration)
        with anyio.move_on_after(limit) as scope:
            return await self._root_call(messages, iteration)
        assert scope.cancelled_caught
        self.session.tree.stop("max_wall_time_s")
        raise _TimeUp

    async def _root_call(self, messages: Messages, iteration: int) -> str:
        model = self.model
        usage = self.session.usage.model(model)
        started = time.monotonic()
        tries = 0
        while True:
            tries += 1
            try:
                answer = await self._fair_chat(model, messages)
                break
            except ModelCallFailure as exc:
                delay = ROOT_RETRY.delay(tries, exc, time.monotonic() - started)
                if delay is None:
                    usage.failures += 1
                    raise
                usage.retries += 1
                self.session.event("root_retry", attempt=tries, kind=exc.kind, delay=delay)
                await anyio.sleep(delay)
        seconds = time.monotonic() - started
        usage.calls += 1
        usage.prompt_tokens += answer.prompt_tokens
        usage.completion_tokens += answer.completion_tokens
        usage.seconds += seconds
        self.compaction.heard(messages, answer.prompt_tokens, answer.completion_tokens)
        self.session.event(
            "root_call",
            iteration=iteration,
            model=model,
            text=answer.text,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            seconds=round(seconds, 4),
        )
        return answer.text

    async def _fair_chat(self, model: str, messages: Messages) -> ChatResult:
        # A child's root calls take their turn in the fair scheduler with the tree's
        # sub-calls, so a tree of children cannot crowd out other sessions.
        scheduler = self.scheduler
        session = self.session
        if scheduler is None:
            return await self._chat(model, messages)
        await scheduler.acquire(session.tenant, session.fair_key, session.limits.max_concurrent)
        try:
            return await self._chat(model, messages)
        finally:
            scheduler.release(session.tenant, session.fair_key)

    async def _chat(self, model: str, messages: Messages) -> ChatResult:
        if not self.stream:
            return await self.client.chat(model, messages)
        async for part in self.client.chat_stream(model, messages):
            if isinstance(part, ChatResult):
                return part
            self.session.event("root_delta", text=part)
        raise ModelCallFailure(f"the stream from {model!r} ended early", kind="server")

    # -- cells ---------------------------------------------------------------------------

    async def _sandbox(self) -> Sandbox:
        """The sandbox, once it is ready."""
        if self._ready is not None:
            await self._ready()
            self._ready = None
        return self.sandbox

    async def run_cell(self, code: str, iteration: int) -> CellResult:
        self.session.event("cell", iteration=iteration, code=code)
        timeout = self.config.cell_timeout
        left = self.session.tree.remaining()
        if left is not None:
            timeout = max(0.001, min(timeout, left))
        sandbox = await self._sandbox()
        try:
            result = await sandbox.execute(code, timeout)
        finally:
            # Streams the cell left open are cancelled with it.
            await sandbox.bridge.cell_finished()
        self.session.event("output", iteration=iteration, **result.to_dict())
        if result.timed_out and left is not None and left < self.config.cell_timeout:
            self.session.tree.stop("max_wall_time_s")
        return result


def format_output(result: CellResult, limit: int, timeout: float) -> str:
    """A cell's result as the root model reads it, cut to ``limit`` characters."""
    parts = [result.stdout]
    if result.stderr:
        parts.append(f"[stderr]\n{result.stderr}")
    if result.error:
        parts.append(f"[error]\n{result.error}")
    if result.timed_out:
        parts.append(f"[the cell was stopped after {timeout:g} s]")
    if result.state_lost:
        parts.append(
            "[the sandbox was restarted: every variable you defined is gone; "
            "`context`, `llm_query` and `llm_batch` are still there]"
        )
    text = "\n".join(p.rstrip("\n") for p in parts if p)
    if len(text) > limit or result.truncated:
        shown = text[:limit]
        return (
            f"{shown}\n[output truncated: showing {len(shown):,} of "
            f"{len(text):,}{'+' if result.truncated else ''} characters; "
            "print less, or slice what you print]"
        )
    return text or "[no output]"


def _as_text(value: Any) -> str:
    """A final value as the answer's text: a str as it is, anything else as JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)
