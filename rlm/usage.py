"""Counting what a run used: tokens, calls, retries and cache hits, per model."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
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

    def add(self, other: ModelUsage) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_tokens": self.total_tokens}


@dataclass
class Usage:
    """Usage per model name; ``sub_calls`` counts the calls made from model code.

    A run tree's usage (:meth:`combine`) also breaks it down by depth: ``by_depth``
    maps each depth (0 for the root run) to its usage per model.
    """

    by_model: dict[str, ModelUsage] = field(default_factory=dict)
    sub_calls: int = 0
    by_depth: dict[int, dict[str, ModelUsage]] = field(default_factory=dict)

    def add(self, other: Usage) -> None:
        """Add ``other`` (a run's or a tree's usage) into this one, depths included."""
        self.sub_calls += other.sub_calls
        for name, used in other.by_model.items():
            self.model(name).add(used)
        for depth, models in other.by_depth.items():
            level = self.by_depth.setdefault(depth, {})
            for name, used in models.items():
                level.setdefault(name, ModelUsage()).add(used)

    @classmethod
    def combine(cls, parts: Iterable[tuple[int, Usage]]) -> Usage:
        """The sum of runs' usages, each given with its depth."""
        total = cls()
        for depth, usage in parts:
            total.sub_calls += usage.sub_calls
            level = total.by_depth.setdefault(depth, {})
            for name, used in usage.by_model.items():
                total.model(name).add(used)
                level.setdefault(name, ModelUsage()).add(used)
        return total

    def model(self, name: str) -> ModelUsage:
        return self.by_model.setdefault(name, ModelUsage())

    @property
    def total_tokens(self) -> int:
        return sum(m.total_tokens for m in self.by_model.values())

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "sub_calls": self.sub_calls,
            "total_tokens": self.total_tokens,
            "by_model": {name: m.to_dict() for name, m in self.by_model.items()},
        }
        if self.by_depth:
            data["by_depth"] = {
                str(depth): {name: m.to_dict() for name, m in models.items()}
                for depth, models in sorted(self.by_depth.items())
            }
        return data
