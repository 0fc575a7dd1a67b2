"""The host-side batcher: every sub-call from every sandbox runs through here."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anyio

from rlm.client import ModelCallFailure, ModelClient
from rlm.session import SessionState


@dataclass
class SubResult:
    """One sub-call's outcome: ``text`` on success, else ``error`` and its ``kind``."""

    text: str | None = None
    error: str | None = None
    kind: str = "ok"

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_wire(self) -> dict[str, Any]:
        if self.error is None:
            return {"text": self.text or ""}
        return {"error": self.error, "kind": self.kind}


class Batcher:
    """Runs sub-calls for many sessions under shared limits."""

    def __init__(self, client: ModelClient, *, max_concurrent: int = 256) -> None:
        self.client = client
        self._global = anyio.CapacityLimiter(max_concurrent)

    async def run(
        self,
        session: SessionState,
        model: str,
        prompts: list[str],
        max_concurrent: int | None = None,
    ) -> list[SubResult]:
        """Answer ``prompts`` in input order; a failed prompt fails alone."""
        results: list[SubResult] = [SubResult() for _ in prompts]
        limit = min(max_concurrent or len(prompts), session.limits.max_concurrent)
        local = anyio.CapacityLimiter(max(1, limit))
        started = time.monotonic()
        done = 0
        session.event("batch_start", model=model, size=len(prompts))

        async def one(i: int, prompt: str) -> None:
            nonlocal done
            async with local, self._global:
                results[i] = await self._call(session, model, prompt)
            done += 1
            session.event("batch_progress", done=done, total=len(prompts))

        async with anyio.create_task_group() as tg:
            for i, prompt in enumerate(prompts):
                tg.start_soon(one, i, prompt)
        session.event(
            "batch_end",
            model=model,
            size=len(prompts),
            failures=sum(1 for r in results if not r.ok),
            seconds=round(time.monotonic() - started, 4),
        )
        return results

    async def _call(self, session: SessionState, model: str, prompt: str) -> SubResult:
        usage = session.usage.model(model)
        if session.tokens_exhausted():
            usage.failures += 1
            return SubResult(error="token budget for this session is spent", kind="budget")
        started = time.monotonic()
        try:
            answer = await self.client.chat(model, [{"role": "user", "content": prompt}])
        except ModelCallFailure as exc:
            usage.failures += 1
            return SubResult(error=str(exc), kind=exc.kind)
        finally:
            usage.seconds += time.monotonic() - started
            session.usage.sub_calls += 1
        usage.calls += 1
        usage.prompt_tokens += answer.prompt_tokens
        usage.completion_tokens += answer.completion_tokens
        return SubResult(text=answer.text)
