"""A session's identity, limits and running totals, all held on the host side.

The sandbox never names its session: the bridge it talks to was bound to one
:class:`SessionState` when the session started, so a forged tenant or session id in
a frame has nothing to change.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from rlm.errors import BudgetExceeded
from rlm.events import EventName
from rlm.usage import Usage

EventSink = Callable[[dict[str, Any]], None]

#: Which session limit refused work: the vocabulary of ``SessionState.refusals`` and
#: of :attr:`rlm.result.RLMResult.limits`.
LimitKind = Literal[
    "sub_calls",  # SessionLimits.max_sub_calls: the sub-call budget ran out
    "tokens",  # SessionLimits.max_tokens: the token budget was spent
    "batch_size",  # SessionLimits.max_batch_size: a batch was too large
    "prompt_chars",  # SessionLimits.max_prompt_chars: a prompt was too long
]


@dataclass(frozen=True)
class SessionLimits:
    """Per-session bounds on sub-calls. ``None`` means unbounded."""

    max_sub_calls: int | None = 10_000
    max_prompt_chars: int = 2_000_000
    max_batch_size: int = 10_000
    max_tokens: int | None = None
    max_concurrent: int = 64
    allowed_models: frozenset[str] | None = None


@dataclass
class SessionState:
    """Who a session is, what it may do, and what it has used so far."""

    sub_model: str
    limits: SessionLimits = field(default_factory=SessionLimits)
    tenant: str = "default"
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    usage: Usage = field(default_factory=Usage)
    emit: EventSink | None = None
    #: Sub-calls admitted so far (counted before they run, so budgets hold under
    #: concurrency); ``usage.sub_calls`` counts those that finished.
    calls_admitted: int = 0
    #: Work a limit refused, per limit: how many calls (or requests) were turned
    #: away. A run that met one may be missing work the model asked for, and says so.
    refusals: dict[LimitKind, int] = field(default_factory=dict)

    def event(self, kind: EventName, **data: Any) -> None:
        if self.emit is not None:
            self.emit({"event": kind, "session": self.session_id, **data})

    def admit_calls(self, n: int) -> None:
        """Reserve ``n`` sub-calls against the budget, or refuse them all."""
        limit = self.limits.max_sub_calls
        if limit is not None and self.calls_admitted + n > limit:
            left = max(0, limit - self.calls_admitted)
            self.refuse("sub_calls", n)
            raise BudgetExceeded(
                f"sub-call budget exceeded: this session may make {limit} sub-calls, "
                f"{left} left, and this call needs {n}; answer with what you have"
            )
        self.calls_admitted += n

    def refuse(self, limit: LimitKind, n: int = 1) -> None:
        """Record that ``limit`` turned away ``n`` calls."""
        self.refusals[limit] = self.refusals.get(limit, 0) + n

    def tokens_exhausted(self) -> bool:
        limit = self.limits.max_tokens
        return limit is not None and self.usage.total_tokens >= limit
