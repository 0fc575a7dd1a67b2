"""Counting what a run used: tokens, calls, retries and cache hits, per model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModelUsage:
    """What one model was asked to do."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failures: int = 0
    retries: int = 0
    cache_hits: int = 0
    dedup_hits: int = 0
    seconds: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Usage:
    """Usage per model name; ``sub_calls`` counts the calls made from model code."""

    by_model: dict[str, ModelUsage] = field(default_factory=dict)
    sub_calls: int = 0

    def model(self, name: str) -> ModelUsage:
        return self.by_model.setdefault(name, ModelUsage())

    @property
    def total_tokens(self) -> int:
        return sum(m.total_tokens for m in self.by_model.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "sub_calls": self.sub_calls,
            "total_tokens": self.total_tokens,
            "by_model": {
                name: {**asdict(m), "total_tokens": m.total_tokens}
                for name, m in self.by_model.items()
            },
        }
