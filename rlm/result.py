"""What an RLM run returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlm.usage import Usage


@dataclass
class RLMResult:
    """The answer and how it was reached.

    ``forced`` is True when the iteration bound ran out and the model was made to
    answer; ``trajectory`` holds the run's events (root calls, cells, sub-call
    batches, the final answer, usage) in order.
    """

    answer: str
    iterations: int
    usage: Usage
    wall_time_s: float
    backend: str
    session_id: str
    forced: bool = False
    trajectory: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "iterations": self.iterations,
            "forced": self.forced,
            "backend": self.backend,
            "session_id": self.session_id,
            "wall_time_s": round(self.wall_time_s, 4),
            "usage": self.usage.to_dict(),
        }
