"""What an RLM run returns, and the one vocabulary of how a run ended."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from rlm.limits import LimitKind
from rlm.tree import StopReason
from rlm.usage import Usage

RunStatus = Literal[
    # The run finished: RLMResult.status is one of these.
    "answered",  # the model answered with FINAL / FINAL_VAR within the iteration bound
    "forced",  # the iteration bound ran out and the model was made to answer
    "no_answer",  # made to answer, it named a variable that does not exist
    "invalid_answer",  # the answer did not match the answer schema, after every retry
    "limit",  # a run limit stopped the run, or refused work; the answer may lack it
    # The run did not finish (only `rlm run --json` reports these; the library raises).
    "config_error",  # bad flags, no model or key, an unreadable context (ConfigurationError)
    "provider_error",  # the root model could not be reached or refused, after retries
    "sandbox_error",  # Docker unavailable, a sandbox that broke the protocol or would not start
    "interrupted",  # SIGINT, SIGTERM or SIGHUP: the run was cancelled and its sandbox closed
]

RUN_STATUSES: Final[frozenset[str]] = frozenset(get_args(RunStatus))

#: The exit code of ``rlm run`` for each status. ``interrupted`` is 128 + the signal
#: (130 SIGINT, 143 SIGTERM, 129 SIGHUP), as shells report a process a signal ended.
EXIT_CODES: Final[dict[RunStatus, int]] = {
    "answered": 0,
    "forced": 3,
    "no_answer": 3,
    "invalid_answer": 3,
    "limit": 4,
    "config_error": 2,
    "provider_error": 5,
    "sandbox_error": 6,
    "interrupted": 130,
}


def finished_status(
    *,
    forced: bool,
    missing: bool,
    limits: dict[LimitKind, int],
    stopped: StopReason | None = None,
    invalid: bool = False,
) -> RunStatus:
    """How a finished run ended; a limit outranks a forced or missing answer, because
    the model may have been made to answer *because* its work was refused."""
    if limits or stopped is not None:
        return "limit"
    if invalid:
        return "invalid_answer"
    if missing:
        return "no_answer"
    return "forced" if forced else "answered"


@dataclass
class RLMResult:
    """The answer and how it was reached.

    ``status`` says how the run ended (a :data:`RunStatus`): ``"answered"``;
    ``"forced"`` when the iteration bound ran out and the model was made to answer;
    ``"no_answer"`` when, made to answer, it named a variable that does not exist
    (``answer`` then says so); ``"limit"`` when a session budget refused work the
    model asked for (sub-calls, tokens, a batch or prompt too large), so the answer
    may lack it. ``limits`` counts those refusals per :data:`~rlm.session.LimitKind`.
    ``stopped`` names the run limit that ended the run (a :data:`~rlm.tree.StopReason`,
    such as ``"max_cost_usd"``), None when it finished by itself.

    ``usage`` sums the whole tree of runs (the root, every child, every sub-call),
    with ``usage.by_depth`` breaking it down by depth and model; ``cost_usd`` is its
    cost by the configured price table (None without one); ``children`` counts the
    child RLMs started.
    ``forced`` stays True whenever the iteration bound made the model answer, whatever
    the status. ``trajectory`` holds the run's events (root calls, cells, sub-call
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
    status: RunStatus = "answered"
    limits: dict[LimitKind, int] = field(default_factory=dict)
    stopped: StopReason | None = None
    cost_usd: float | None = None
    children: int = 0
    #: The final value: what ``FINAL(obj)`` gave, or the answer validated against
    #: the answer schema (a Pydantic object for a Pydantic model); None without one.
    value: Any = None
    #: Which turn of its session this run was (1 for a single completion).
    turn: int = 1
    #: The sandbox had to be restarted during the run: variables were lost.
    state_lost: bool = False
    #: Why the answer did not match the answer schema (status ``invalid_answer``).
    invalid_answer: str | None = None

    @property
    def exit_code(self) -> int:
        """What ``rlm run`` exits with for this result (see :data:`EXIT_CODES`)."""
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "status": self.status,
            "exit_code": self.exit_code,
            "iterations": self.iterations,
            "forced": self.forced,
            "limits": dict(self.limits),
            "stopped": self.stopped,
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
            "children": self.children,
            "value": _plain(self.value),
            "turn": self.turn,
            "state_lost": self.state_lost,
            "invalid_answer": self.invalid_answer,
            "backend": self.backend,
            "session_id": self.session_id,
            "wall_time_s": round(self.wall_time_s, 4),
            "usage": self.usage.to_dict(),
        }


def _plain(value: Any) -> Any:
    """``value`` as JSON can carry it (a Pydantic object as its dict)."""
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else value
