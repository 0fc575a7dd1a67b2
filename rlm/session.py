"""A session's identity, limits and running totals, all held on the host side.

The sandbox never names its session: the bridge it talks to was bound to one
:class:`SessionState` when the session started, so a forged tenant or session id in
a frame has nothing to change.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlm.errors import BudgetExceeded
from rlm.events import EventName
from rlm.limits import LimitKind, SessionLimits
from rlm.tree import RunTree
from rlm.usage import Usage

__all__ = ["EventSink", "LimitKind", "SessionLimits", "SessionState"]

EventSink = Callable[[dict[str, Any]], None]


@dataclass
class SessionState:
    """Who a session (one run of a tree) is, what it may do, and what it has used.

    ``usage`` is this run's own; the counts that limits hold against are the
    tree's (:class:`~rlm.tree.RunTree`), shared with every run of the tree.
    """

    sub_model: str
    limits: SessionLimits = field(default_factory=SessionLimits)
    tenant: str = "default"
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    usage: Usage = field(default_factory=Usage)
    emit: EventSink | None = None
    #: The tree this run belongs to (a new one for a root run).
    tree: RunTree = field(default=None)  # type: ignore[assignment]
    #: 0 for the root run, d + 1 for a child of a run at depth d.
    depth: int = 0
    #: The run whose code started this one (None for the root).
    parent_id: str | None = None

    def __post_init__(self) -> None:
        if self.tree is None:
            self.tree = RunTree(self.limits)
        self.tree.join(self)

    @property
    def run_id(self) -> str:
        return self.session_id

    @property
    def fair_key(self) -> str:
        """Whose share of the fair scheduler this run's calls take: its tree's, so a
        tree of many children gets no more than one session would."""
        return self.tree.root_id

    @property
    def calls_admitted(self) -> int:
        """Sub-calls admitted across the tree so far (counted before they run, so
        budgets hold under concurrency); ``usage.sub_calls`` counts those that finished."""
        return self.tree.calls_admitted

    @property
    def refusals(self) -> dict[LimitKind, int]:
        """Work a limit refused across the tree, per limit. A run that met one may be
        missing work the model asked for, and says so."""
        return self.tree.refusals

    def event(self, kind: EventName, /, **data: Any) -> None:
        if self.emit is not None:
            self.emit(
                {
                    "event": kind,
                    "session": self.session_id,
                    "run_id": self.session_id,
                    "parent_id": self.parent_id,
                    "depth": self.depth,
                    **data,
                }
            )

    def admit_calls(self, n: int) -> None:
        """Reserve ``n`` sub-calls against the tree's budget, or refuse them all."""
        tree = self.tree
        limit = self.limits.max_sub_calls
        if limit is not None and tree.calls_admitted + n > limit:
            left = max(0, limit - tree.calls_admitted)
            self.refuse("sub_calls", n)
            tree.stop("max_sub_calls")
            raise BudgetExceeded(
                f"sub-call budget exceeded: this run may make {limit} sub-calls, "
                f"{left} left, and this call needs {n}; answer with what you have"
            )
        tree.calls_admitted += n

    def refuse(self, limit: LimitKind, n: int = 1) -> None:
        """Record that ``limit`` turned away ``n`` calls."""
        refusals = self.tree.refusals
        refusals[limit] = refusals.get(limit, 0) + n

    def tokens_exhausted(self) -> bool:
        """Whether the tree's budget (tokens, cost or time) leaves no room for a call."""
        return self.tree.spent() is not None

    def budget_message(self) -> str:
        """Why a model call was not made, for model code to read."""
        reason = self.tree.stopped or "max_tokens"
        if reason == "max_cost_usd":
            return (
                f"cost budget spent: this run may cost ${self.limits.max_cost_usd:g} and has "
                f"cost ${self.tree.cost_usd():.4f}; this sub-call was not made. "
                "Answer with what you have."
            )
        if reason == "max_wall_time_s":
            return (
                f"time is up: this run may take {self.limits.max_wall_time_s:g} s; "
                "this sub-call was not made. Answer with what you have."
            )
        return (
            f"token budget spent: this run may use {self.limits.max_tokens or 0:,} tokens and "
            f"has used {self.tree.total_tokens():,}; this sub-call was not made. "
            "Answer with what you have."
        )
