"""One run's tree: the root run, its child RLMs, and the limits they share.

A run of depth > 1 is a tree of runs (the root at depth 0, each child one deeper),
each with its own session, sandbox and root loop. Every limit a user sets for "the
run" holds for the whole tree, and is kept here, on the host: the sandbox never
sees a budget, a depth or a count it could change, and the frames it sends name no
run (the bridge each sandbox talks to was bound to its run when it started).

What is counted across the tree: sub-calls admitted, tokens and their cost, wall
time, children started and live, tool calls. The first tree-wide limit reached is
:attr:`RunTree.stopped`; each run's root loop sees it after its current cell and
ends (the root with one forced-final turn where that is still possible).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, Protocol, get_args

import anyio

from rlm.limits import LimitKind, SessionLimits
from rlm.usage import Usage

#: Which run limit ended a run: the vocabulary of :attr:`rlm.result.RLMResult.stopped`.
#: Each is the name of the :class:`~rlm.session.SessionLimits` field that set it.
StopReason = Literal[
    "max_sub_calls",  # the tree asked for more sub-calls than allowed
    "max_tokens",  # the tree's tokens (root, children, sub-calls) reached the budget
    "max_cost_usd",  # their cost, by the configured price table, reached the budget
    "max_wall_time_s",  # the run has been going for longer than allowed
    "max_children",  # more child RLMs were asked for than allowed
    "max_consecutive_errors",  # this many cells in a row ended in an error
]

STOP_REASONS: Final[frozenset[str]] = frozenset(get_args(StopReason))

#: Stops after which no model may be called at all (the forced-final turn would
#: spend past the budget): the run ends with what it has.
SPENDING_STOPS: Final[frozenset[StopReason]] = frozenset({"max_tokens", "max_cost_usd"})


@dataclass(frozen=True)
class ModelPrice:
    """What a model costs, in US dollars per million tokens."""

    input: float
    output: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


class Member(Protocol):
    """What the tree knows of each run in it (a :class:`~rlm.session.SessionState`)."""

    @property
    def session_id(self) -> str: ...
    @property
    def depth(self) -> int: ...
    @property
    def usage(self) -> Usage: ...


class RunTree:
    """The shared state of one run and all its children."""

    def __init__(
        self,
        limits: SessionLimits,
        prices: Mapping[str, ModelPrice] | None = None,
        *,
        started: float | None = None,
    ) -> None:
        self.limits = limits
        self.prices = dict(prices or {})
        self.started = time.monotonic() if started is None else started
        #: Every run's session, the root's first, in the order they started.
        self.sessions: list[Member] = []
        #: Sub-calls admitted across the tree (counted before they run).
        self.calls_admitted = 0
        #: Child runs started across the tree (refused ones not counted).
        self.children_started = 0
        #: The first tree-wide limit that was reached (None while none has been).
        self.stopped: StopReason | None = None
        #: Work a limit refused across the tree, per limit.
        self.refusals: dict[LimitKind, int] = {}
        #: Tool calls per tool name across the tree.
        self.tool_calls: Counter[str] = Counter()
        self.live_children = anyio.CapacityLimiter(max(1, limits.max_live_children))

    # -- identity ------------------------------------------------------------------------

    def join(self, session: Member) -> None:
        self.sessions.append(session)

    @property
    def root_id(self) -> str:
        """The root run's id: the tree's one identity in the fair scheduler."""
        return self.sessions[0].session_id if self.sessions else "unstarted"

    # -- limits --------------------------------------------------------------------------

    def stop(self, reason: StopReason) -> None:
        """Record that ``reason`` stopped the tree (the first one wins)."""
        if self.stopped is None:
            self.stopped = reason

    def deadline(self) -> float | None:
        limit = self.limits.max_wall_time_s
        return None if limit is None else self.started + limit

    def remaining(self) -> float | None:
        """Seconds left before ``max_wall_time_s`` (None when unbounded)."""
        deadline = self.deadline()
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def spent(self) -> StopReason | None:
        """Which budget leaves no room for another model call, if any; records it."""
        limits = self.limits
        reason: StopReason | None = None
        if limits.max_tokens is not None and self.total_tokens() >= limits.max_tokens:
            reason = "max_tokens"
        elif limits.max_cost_usd is not None and self.cost_usd() >= limits.max_cost_usd:
            reason = "max_cost_usd"
        elif (left := self.remaining()) is not None and left <= 0:
            reason = "max_wall_time_s"
        if reason is not None:
            self.stop(reason)
        return reason

    # -- totals --------------------------------------------------------------------------

    def total_tokens(self) -> int:
        return sum(s.usage.total_tokens for s in self.sessions)

    def cost_usd(self) -> float:
        """The tree's cost by the price table (models without a price cost nothing)."""
        total = 0.0
        for session in self.sessions:
            for name, used in session.usage.by_model.items():
                price = self.prices.get(name)
                if price is not None:
                    total += price.cost(used.prompt_tokens, used.completion_tokens)
        return total

    def cost_by_depth(self) -> dict[str, dict[str, float]]:
        """:meth:`cost_usd` broken down by depth and model (priced models only)."""
        costs: dict[str, dict[str, float]] = {}
        for depth, models in sorted(self.usage().by_depth.items()):
            for name, used in models.items():
                price = self.prices.get(name)
                if price is not None:
                    level = costs.setdefault(str(depth), {})
                    level[name] = price.cost(used.prompt_tokens, used.completion_tokens)
        return costs

    def usage(self) -> Usage:
        """The tree's usage summed, with the breakdown by depth and model."""
        return Usage.combine((s.depth, s.usage) for s in self.sessions)
