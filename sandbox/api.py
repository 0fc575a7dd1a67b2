"""The functions model code sees for sub-calls, the same in every backend.

``llm_query`` / ``llm_batch`` / ``llm_batch_iter`` ask the sub model;
``rlm_query`` / ``rlm_batch`` / ``rlm_batch_iter`` run child RLMs (at the depth
limit the host answers them as plain model calls); host tools come from
:mod:`tools`.

Both functions turn into one request over a *transport*: a plain synchronous callable
``transport(method, params) -> result`` supplied by the backend (frames over stdio in
Docker, a hop to the host's event loop in the restricted backend). The host validates
and answers; this module only shapes requests and turns answers into Python values.

A sub-call that fails (the provider errored, a budget ran out mid-batch) comes back
as an :class:`LLMError`: still a ``str``, so code that joins or prints results keeps
working, but distinguishable with ``isinstance(r, LLMError)`` or ``r.failed``. A call
the host refuses outright (bad arguments, a batch over the size limit, a spent
budget) raises :class:`RLMCallError` in the model's code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

Transport = Callable[[str, dict[str, Any]], Any]


class LLMError(str):
    """The result of a failed sub-call: a ``str`` that says what went wrong."""

    message: str
    kind: str
    failed = True

    def __new__(cls, message: str, kind: str = "error") -> LLMError:
        self = super().__new__(cls, f"[LLMError: {kind}] {message}")
        self.message = message
        self.kind = kind
        return self


class RLMCallError(Exception):
    """The host refused a sub-call (invalid arguments, over a limit or budget)."""


def _to_value(item: Any) -> str:
    if isinstance(item, dict):
        text, error = item.get("text"), item.get("error")
        if isinstance(text, str):
            return text
        if isinstance(error, str):
            return LLMError(error, str(item.get("kind", "error")))
    raise RLMCallError(f"malformed answer from the host: {str(item)[:200]}")


def make_functions(
    transport: Transport, tools: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Build the names model code gets: ``llm_query``, ``rlm_query``, ``LLMError``...

    ``tools`` are the host tools' specs (see :mod:`tools`); each becomes a function.
    """

    def llm_query(prompt: str, model: str | None = None) -> str:
        """Ask a sub-model one prompt; returns its answer, or an LLMError on failure."""
        if not isinstance(prompt, str):
            raise TypeError(f"llm_query(prompt) takes a str, got {type(prompt).__name__}")
        if model is not None and not isinstance(model, str):
            raise TypeError("llm_query(model=...) takes a str or None")
        return _to_value(transport("llm_query", {"prompt": prompt, "model": model}))

    def llm_batch(
        prompts: list[str], max_concurrent: int | None = None, model: str | None = None
    ) -> list[str]:
        """Ask a sub-model many prompts at once; answers come back in input order.

        ``max_concurrent`` caps how many run at the same time (the host's own limits
        still apply). A failed prompt yields an LLMError in its place; the rest of
        the batch is unaffected.
        """
        prompts = _prompts(prompts, "llm_batch")
        _check_concurrency(max_concurrent, "llm_batch")
        if model is not None and not isinstance(model, str):
            raise TypeError("llm_batch(model=...) takes a str or None")
        if not prompts:
            return []
        answer = transport(
            "llm_batch",
            {"prompts": prompts, "max_concurrent": max_concurrent, "model": model},
        )
        if not isinstance(answer, list) or len(answer) != len(prompts):
            raise RLMCallError("malformed batch answer from the host")
        return [_to_value(item) for item in answer]

    def rlm_query(prompt: str, context: Any = None) -> str:
        """Run a child RLM on ``prompt`` over ``context`` (any JSON-able value).

        Returns the child's answer, or an LLMError saying why it has none. Without a
        context the prompt is the child's whole task. Beyond the depth limit the
        host answers it as a plain ``llm_query``.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"rlm_query(prompt) takes a str, got {type(prompt).__name__}")
        return _to_value(transport("rlm_query", {"prompt": prompt, "context": context}))

    def rlm_batch(
        prompts: list[str], contexts: list[Any] | None = None, max_concurrent: int | None = None
    ) -> list[str]:
        """Run child RLMs in parallel, one per prompt (with ``contexts[i]`` when given).

        Answers come back in input order; a child that fails yields an LLMError in
        its place. The host caps how many children live at once.
        """
        prompts, contexts = _children(prompts, contexts, max_concurrent, "rlm_batch")
        if not prompts:
            return []
        answer = transport(
            "rlm_batch",
            {"prompts": prompts, "contexts": contexts, "max_concurrent": max_concurrent},
        )
        if not isinstance(answer, list) or len(answer) != len(prompts):
            raise RLMCallError("malformed batch answer from the host")
        return [_to_value(item) for item in answer]

    def llm_batch_iter(
        prompts: list[str], max_concurrent: int | None = None, model: str | None = None
    ) -> Iterator[tuple[int, str]]:
        """Like ``llm_batch``, but yields ``(index, answer)`` pairs as they complete.

        Leaving the loop early (``break``, an exception, the end of the cell) cancels
        the prompts still queued or in flight at once; they are not billed further.
        """
        prompts = _prompts(prompts, "llm_batch_iter")
        _check_concurrency(max_concurrent, "llm_batch_iter")
        if model is not None and not isinstance(model, str):
            raise TypeError("llm_batch_iter(model=...) takes a str or None")
        params = {"prompts": prompts, "max_concurrent": max_concurrent, "model": model}
        return _stream("llm_batch", params, len(prompts))

    def rlm_batch_iter(
        prompts: list[str], contexts: list[Any] | None = None, max_concurrent: int | None = None
    ) -> Iterator[tuple[int, str]]:
        """Like ``rlm_batch``, but yields ``(index, answer)`` pairs as children finish.

        Leaving the loop early cancels the children still queued or running.
        """
        prompts, contexts = _children(prompts, contexts, max_concurrent, "rlm_batch_iter")
        params = {"prompts": prompts, "contexts": contexts, "max_concurrent": max_concurrent}
        return _stream("rlm_batch", params, len(prompts))

    def _stream(method: str, params: dict[str, Any], total: int) -> Iterator[tuple[int, str]]:
        if total == 0:
            return iter(())
        opened = transport("stream_open", {"method": method, **params})
        if not isinstance(opened, dict) or not isinstance(opened.get("stream"), int):
            raise RLMCallError("malformed stream answer from the host")
        return _follow(opened["stream"], total)

    def _follow(stream: int, total: int) -> Iterator[tuple[int, str]]:
        # The stream is opened before the first next(), so a refused batch raises at
        # the call, not at the first loop turn; closing it here (generator close on
        # break, exception or garbage collection) tells the host to cancel the rest.
        seen = 0
        try:
            while seen < total:
                answer = transport("stream_next", {"stream": stream})
                items = answer.get("items") if isinstance(answer, dict) else None
                if not isinstance(items, list):
                    raise RLMCallError("malformed stream answer from the host")
                for item in items:
                    if (
                        not isinstance(item, list)
                        or len(item) != 2
                        or isinstance(item[0], bool)
                        or not isinstance(item[0], int)
                        or not 0 <= item[0] < total
                    ):
                        raise RLMCallError("malformed stream answer from the host")
                    seen += 1
                    yield item[0], _to_value(item[1])
                if answer.get("done") and seen < total:
                    raise RLMCallError("the host ended the stream early")
        finally:
            if seen < total:
                # Refused when the cell that opened the stream has ended: the host
                # cancelled the cell's streams then, so there is nothing left to close,
                # and an error raised here would only surface as a warning wherever
                # the generator happened to be collected.
                with contextlib.suppress(RLMCallError):
                    transport("stream_close", {"stream": stream})

    functions: dict[str, Any] = {
        "llm_query": llm_query,
        "llm_batch": llm_batch,
        "llm_batch_iter": llm_batch_iter,
        "rlm_query": rlm_query,
        "rlm_batch": rlm_batch,
        "rlm_batch_iter": rlm_batch_iter,
        "LLMError": LLMError,
        "RLMCallError": RLMCallError,
    }
    if tools:
        from .tools import ToolError, make_tools

        functions.update(make_tools(tools, transport))
        functions["ToolError"] = ToolError
    return functions


def _prompts(prompts: Any, name: str) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise TypeError(f"{name}(prompts) takes a list of str")
    checked: list[str] = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"{name}: prompts[{i}] is {type(p).__name__}, not str")
        checked.append(p)
    return checked


def _check_concurrency(max_concurrent: Any, name: str) -> None:
    if max_concurrent is not None and (
        isinstance(max_concurrent, bool)
        or not isinstance(max_concurrent, int)
        or max_concurrent < 1
    ):
        raise ValueError(f"{name}(max_concurrent=...) takes a positive int or None")


def _children(
    prompts: Any, contexts: Any, max_concurrent: Any, name: str
) -> tuple[list[str], list[Any] | None]:
    prompts = _prompts(prompts, name)
    _check_concurrency(max_concurrent, name)
    if contexts is not None:
        if isinstance(contexts, (str, dict)) or not isinstance(contexts, (list, tuple)):
            raise TypeError(f"{name}(contexts=...) takes a list, one context per prompt")
        contexts = list(contexts)
        if len(contexts) != len(prompts):
            raise ValueError(
                f"{name}: {len(contexts)} contexts for {len(prompts)} prompts; give one each"
            )
    return prompts, contexts
