"""The root loop: the root model writes cells, the sandbox runs them, until FINAL."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio

from rlm.backends import CellResult, Sandbox
from rlm.config import RLMConfig
from rlm.errors import ConfigurationError, VariableNotFound
from rlm.parsing import parse_reply
from rlm.prompts import (
    FORCE_FINAL,
    NO_ACTION,
    SYSTEM_PROMPT,
    describe_context,
    first_message,
    missing_variable,
)
from rlm.provider.client import ChatResult, ModelCallFailure, ModelClient
from rlm.result import RLMResult, finished_status
from rlm.session import SessionState
from rlm.stack import BackendChoice, build_session, choose_backend
from rlm.subcalls.batcher import Batcher
from rlm.subcalls.retry import RetryPolicy
from rlm.trajectory import Trajectory

if TYPE_CHECKING:
    from rlm.backends.docker import ContainerPool

EventCallback = Callable[[dict[str, Any]], None]

#: Root calls retry like sub-calls (the batcher's policy), with fewer tries: a
#: stuck root call stalls the whole run, so it should fail and say so sooner.
ROOT_RETRY = RetryPolicy(max_tries=4)


class _Ending(NamedTuple):
    """How the root loop ended."""

    answer: str
    iterations: int
    #: The iteration bound ran out and the model was made to answer.
    forced: bool = False
    #: Made to answer, the model named a variable the sandbox does not have.
    missing: bool = False


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
        started = time.monotonic()
        if self._backend is None:
            # Once per RLM, off the event loop: `auto` asks the Docker engine.
            self._backend = await choose_backend(config)
        trajectory = Trajectory(self.trajectory_path, on_event=self.on_event)
        try:
            stack = build_session(
                config, self._backend, batcher=self._batcher, pool=self._pool, emit=trajectory.emit
            )
        except BaseException:
            trajectory.close()
            raise
        session, sandbox = stack.session, stack.sandbox
        assert stack.client is not None  # a Batcher always has one
        trajectory.add(
            "run_start",
            query=query,
            context=describe_context(context),
            model=config.model,
            sub_model=session.sub_model,
            backend=sandbox.name,
            backend_reason=self._backend.reason,
        )
        try:
            await stack.start(context)
            run = _Run(config, stack.client, sandbox, session, trajectory, stream=self.stream)
            ending = await run.loop(query, context)
            limits = dict(session.refusals)
            status = finished_status(forced=ending.forced, missing=ending.missing, limits=limits)
            trajectory.add(
                "final", answer=ending.answer, forced=ending.forced, status=status, limits=limits
            )
            trajectory.add("usage", **session.usage.to_dict())
            return RLMResult(
                answer=ending.answer,
                iterations=ending.iterations,
                usage=session.usage,
                wall_time_s=time.monotonic() - started,
                backend=sandbox.name,
                session_id=session.session_id,
                forced=ending.forced,
                trajectory=trajectory.events,
                status=status,
                limits=limits,
            )
        finally:
            await stack.aclose()
            trajectory.close()


def _check_context(context: Any) -> None:
    if not isinstance(context, (str, list, dict)):
        raise TypeError(
            f"context must be a str, a list or a JSON-able dict, not {type(context).__name__}"
        )


class _Run:
    """One run's conversation with the root model."""

    def __init__(
        self,
        config: RLMConfig,
        client: ModelClient,
        sandbox: Sandbox,
        session: SessionState,
        trajectory: Trajectory,
        *,
        stream: bool,
    ) -> None:
        self.config = config
        self.client = client
        self.sandbox = sandbox
        self.session = session
        self.trajectory = trajectory
        self.stream = stream

    async def loop(self, query: str, context: Any) -> _Ending:
        system = SYSTEM_PROMPT.format(
            context_kind=describe_context(context),
            max_prompt_chars=self.config.limits.max_prompt_chars,
            output_limit=self.config.output_limit,
        )
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": first_message(query, context)},
        ]
        for iteration in range(1, self.config.max_iterations + 1):
            text = await self.root_call(messages, iteration)
            messages.append({"role": "assistant", "content": text})
            reply = parse_reply(text)
            feedback = [await self.run_cell(code, iteration) for code in reply.cells]
            if reply.final is not None:
                if reply.final.variable is None:
                    return _Ending(reply.final.answer or "", iteration)
                try:
                    return _Ending(await self.sandbox.get_variable(reply.final.variable), iteration)
                except VariableNotFound:
                    feedback.append(missing_variable(reply.final.variable))
                    self.trajectory.add("missing_variable", name=reply.final.variable)
            if reply.problem:
                feedback.append(f"Note: {reply.problem}; that block was not run.")
            if not feedback:
                feedback.append(NO_ACTION)
                self.trajectory.add("no_action", iteration=iteration)
            messages.append({"role": "user", "content": "\n\n".join(feedback)})
        return await self.forced_final(messages)

    async def forced_final(self, messages: list[dict[str, str]]) -> _Ending:
        iteration = self.config.max_iterations + 1
        messages.append({"role": "user", "content": FORCE_FINAL})
        text = await self.root_call(messages, iteration)
        final = parse_reply(text).final
        if final is not None and final.variable is not None:
            try:
                answer = await self.sandbox.get_variable(final.variable)
                return _Ending(answer, iteration, forced=True)
            except VariableNotFound:
                self.trajectory.add("missing_variable", name=final.variable)
                return _Ending(
                    f"(no answer: FINAL_VAR named a missing variable {final.variable!r})",
                    iteration,
                    forced=True,
                    missing=True,
                )
        if final is not None:
            return _Ending(final.answer or "", iteration, forced=True)
        return _Ending(text.strip(), iteration, forced=True)

    async def root_call(self, messages: list[dict[str, str]], iteration: int) -> str:
        model = self.config.model
        assert model is not None
        usage = self.session.usage.model(model)
        started = time.monotonic()
        tries = 0
        while True:
            tries += 1
            try:
                answer = await self._chat(model, messages)
                break
            except ModelCallFailure as exc:
                delay = ROOT_RETRY.delay(tries, exc, time.monotonic() - started)
                if delay is None:
                    usage.failures += 1
                    raise
                usage.retries += 1
                self.trajectory.add("root_retry", attempt=tries, kind=exc.kind, delay=delay)
                await anyio.sleep(delay)
        seconds = time.monotonic() - started
        usage.calls += 1
        usage.prompt_tokens += answer.prompt_tokens
        usage.completion_tokens += answer.completion_tokens
        usage.seconds += seconds
        self.trajectory.add(
            "root_call",
            iteration=iteration,
            text=answer.text,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            seconds=round(seconds, 4),
        )
        return answer.text

    async def _chat(self, model: str, messages: list[dict[str, str]]) -> ChatResult:
        if not self.stream:
            return await self.client.chat(model, messages)
        async for part in self.client.chat_stream(model, messages):
            if isinstance(part, ChatResult):
                return part
            self.trajectory.add("root_delta", text=part)
        raise ModelCallFailure(f"the stream from {model!r} ended early", kind="server")

    async def run_cell(self, code: str, iteration: int) -> str:
        self.trajectory.add("cell", iteration=iteration, code=code)
        result = await self.sandbox.execute(code, self.config.cell_timeout)
        self.trajectory.add("output", iteration=iteration, **result.to_dict())
        return format_output(result, self.config.output_limit, self.config.cell_timeout)


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
