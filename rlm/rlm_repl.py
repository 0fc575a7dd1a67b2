"""rlm-minimal's ``RLM_REPL`` on this runtime.

A script written for rlm-minimal (``from rlm.rlm_repl import RLM_REPL``) runs
unchanged: same constructor arguments and defaults, same ``completion(context,
query=None) -> str``. What differs is where the model's code runs: rlm-minimal
``exec``s it in the script's own process, with its files, environment and API key
in reach; here it runs in rlm's sandbox (Docker, or the restricted backend), and
sub-calls cross the bridge to the host's batcher.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from rlm.config import RLMConfig
from rlm.result import RLMResult
from rlm.usage import Usage

T = TypeVar("T")

#: rlm-minimal's query when none is given, word for word, so its scripts ask the same.
DEFAULT_QUERY = (
    "Please read through the context and answer any queries or respond to any "
    "instructions contained within it."
)


class RLM_REPL:
    """An RLM answering a query about a context, with rlm-minimal's interface.

    ``api_key`` defaults to ``OPENAI_API_KEY`` (``OPENAI_BASE_URL`` is honoured, as
    the ``openai`` client rlm-minimal uses would); ``recursive_model`` is the model
    ``llm_query`` calls; ``depth`` is accepted and unused, as in rlm-minimal.
    ``enable_logging`` shows the run's progress (iterations, cells, sub-call batches)
    on standard error. Arguments that rlm-minimal's forks add are accepted with a
    warning that they are ignored, so a script runs rather than stopping on one.
    Other settings (the backend, limits) come from the environment, as for
    :class:`rlm.RLM`.
    """

    def __init__(
        self,
        api_key: str | None = None,
        model: str = "gpt-5",
        recursive_model: str = "gpt-5",
        max_iterations: int = 20,
        depth: int = 0,
        enable_logging: bool = False,
        **ignored: Any,
    ) -> None:
        if ignored:
            warnings.warn(
                f"RLM_REPL ignores {', '.join(sorted(ignored))}: rlm-minimal's own "
                "arguments are the ones this runtime understands",
                stacklevel=2,
            )
        self.api_key = api_key
        self.model = model
        self.recursive_model = recursive_model
        self.depth = depth
        self.enable_logging = enable_logging
        self._max_iterations = max_iterations
        self.config = RLMConfig.from_env(
            api_key=api_key,
            model=model,
            sub_model=recursive_model,
            max_iterations=max_iterations,
        )
        self.query: str | None = None
        #: Every completion's result since the last :meth:`reset`.
        self.results: list[RLMResult] = []

    def completion(self, context: Any, query: str | None = None) -> str:
        """The answer to ``query`` (rlm-minimal's default query when None) about
        ``context`` (a string, a list, or a JSON-able dict)."""
        self.query = DEFAULT_QUERY if query is None else query
        result = _run_blocking(self._acompletion, context, self.query)
        self.results.append(result)
        return result.answer

    async def _acompletion(self, context: Any, query: str) -> RLMResult:
        from rlm.core import RLM

        if not self.enable_logging:
            return await RLM(self.config).acompletion(context, query)
        from rich.console import Console

        from rlm.progress import RunReporter

        with RunReporter(Console(stderr=True, highlight=False)) as reporter:
            result = await RLM(self.config, on_event=reporter).acompletion(context, query)
            reporter.console.print(
                f"[bold]answer[/] after {result.iterations} iterations, "
                f"{result.usage.sub_calls} sub-calls, {result.usage.total_tokens:,} tokens, "
                f"{result.wall_time_s:.2f} s"
            )
            return result

    def cost_summary(self) -> dict[str, Any]:
        """What the completions since the last :meth:`reset` used: calls and tokens per
        model, sub-calls, and the cost when ``RLM_PRICES`` prices every model (rlm-minimal
        itself raises NotImplementedError here)."""
        usage = Usage.combine((0, r.usage) for r in self.results)
        costs = [r.cost_usd for r in self.results]
        summary = usage.to_dict()
        summary.pop("by_depth", None)
        summary["completions"] = len(self.results)
        summary["cost_usd"] = (
            round(sum(c for c in costs if c is not None), 6)
            if costs and None not in costs
            else None
        )
        return summary

    def reset(self) -> None:
        """Forget the last query and the usage so far; each completion already runs in
        a fresh sandbox, so there is no REPL state to clear."""
        self.query = None
        self.results = []


def _run_blocking(fn: Callable[[Any, str], Awaitable[T]], context: Any, query: str) -> T:
    """``anyio.run(fn, context, query)``, in a thread when this one already runs an event loop
    (a notebook), where rlm-minimal's blocking call works and anyio.run would refuse."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.run(fn, context, query)
    value: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            value.append(anyio.run(fn, context, query))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="rlm-repl-completion")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return value[0]
