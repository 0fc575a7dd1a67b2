"""``llm_query`` and ``llm_batch`` as model code sees them, the same in every backend.

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

from collections.abc import Callable
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


def make_functions(transport: Transport) -> dict[str, Any]:
    """Build the names model code gets: ``llm_query``, ``llm_batch``, ``LLMError``..."""

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
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise TypeError("llm_batch(prompts) takes a list of str")
        prompts = list(prompts)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"llm_batch: prompts[{i}] is {type(p).__name__}, not str")
        if max_concurrent is not None and (
            isinstance(max_concurrent, bool)
            or not isinstance(max_concurrent, int)
            or max_concurrent < 1
        ):
            raise ValueError("llm_batch(max_concurrent=...) takes a positive int or None")
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

    return {
        "llm_query": llm_query,
        "llm_batch": llm_batch,
        "LLMError": LLMError,
        "RLMCallError": RLMCallError,
    }
