"""The host side of every sub-call from model code: validate, bound, hand to the batcher.

Both backends deliver sandbox requests here as ``(method, params)`` taken straight
from the untrusted side. Nothing is assumed about them: the method must be known,
the arguments must have the right types and sizes, and the session's limits apply.
A request that fails validation raises :class:`~rlm.errors.BridgeRefusal`, which the
backend returns to model code as ``RLMCallError``; it never reaches the provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from rlm.errors import BridgeRefusal, BudgetExceeded
from rlm.session import SessionState

if TYPE_CHECKING:
    from rlm.subcalls.batcher import SubResult

METHODS = ("llm_query", "llm_batch")
_MAX_MODEL_NAME = 200


class BatchRunner(Protocol):
    """What the bridge needs from a batcher: run one session's prompts, in order.

    :class:`~rlm.subcalls.batcher.Batcher` is the real one; a failed prompt comes back
    as a :class:`~rlm.subcalls.batcher.SubResult` with ``error`` set, never raised.
    """

    async def run(
        self, session: SessionState, model: str, prompts: list[str], max_concurrent: int | None
    ) -> Sequence[SubResult]: ...


class SessionBridge:
    """One session's door to the batcher."""

    def __init__(self, batcher: BatchRunner, session: SessionState) -> None:
        self.batcher = batcher
        self.session = session

    async def call(self, method: object, params: object) -> Any:
        """Handle one request from the sandbox; returns a JSON-able answer."""
        if method not in METHODS:
            raise BridgeRefusal(f"unknown method {str(method)[:50]!r}; use llm_query or llm_batch")
        if not isinstance(params, dict):
            raise BridgeRefusal("malformed request: params must be an object")
        model = self._model(params.get("model"))
        prompts: object
        max_concurrent: int | None
        if method == "llm_query":
            allowed = {"prompt", "model"}
            prompts = [params.get("prompt")]
            max_concurrent = 1
        else:
            allowed = {"prompts", "max_concurrent", "model"}
            prompts = params.get("prompts")
            max_concurrent = self._max_concurrent(params.get("max_concurrent"))
        extra = set(params) - allowed
        if extra:
            raise BridgeRefusal(f"malformed request: unexpected fields {sorted(extra)[:5]}")
        prompts = self._check_prompts(prompts)
        self.session.admit_calls(len(prompts))
        results = await self.batcher.run(self.session, model, prompts, max_concurrent)
        items = [r.to_wire() for r in results]
        return items[0] if method == "llm_query" else items

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
            if len(prompt) > limits.max_prompt_chars:
                self.session.refuse("prompt_chars", len(prompts))
                raise BudgetExceeded(
                    f"prompt {i} has {len(prompt):,} characters, over this session's "
                    f"limit of {limits.max_prompt_chars:,}; send a smaller chunk"
                )
        return prompts
