"""What a run may do: the limits an operator or user sets, and what refusing looks like.

Plain data, read by the session (:mod:`rlm.session`), the run tree (:mod:`rlm.tree`)
and the bridge; nothing here is ever sent to a sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Which session limit refused work: the vocabulary of ``SessionState.refusals`` and
#: of :attr:`rlm.result.RLMResult.limits`.
LimitKind = Literal[
    "sub_calls",  # SessionLimits.max_sub_calls: the sub-call budget ran out
    "tokens",  # SessionLimits.max_tokens / max_cost_usd / max_wall_time_s: a call not made
    "children",  # SessionLimits.max_children: a child RLM was not started
    "tools",  # a tool's call limit: a tool call was refused
    "batch_size",  # SessionLimits.max_batch_size: a batch was too large
    "prompt_chars",  # SessionLimits.max_prompt_chars: a prompt was too long
]


@dataclass(frozen=True)
class SessionLimits:
    """Bounds on one run, children included. ``None`` means unbounded.

    ``max_sub_calls``, ``max_tokens``, ``max_cost_usd``, ``max_wall_time_s``,
    ``max_children`` count across the whole tree of runs (root, children, their
    sub-calls); reaching one stops the run (:data:`rlm.tree.StopReason`).
    ``max_consecutive_errors`` stops a run whose cells fail that many times in a
    row. The others bound single requests.
    """

    max_sub_calls: int | None = 10_000
    max_prompt_chars: int = 2_000_000
    max_batch_size: int = 10_000
    max_tokens: int | None = None
    #: Sub-calls in flight for the whole tree at once. 128: a batch of 1000 at 200 ms
    #: takes 1.09x the ideal time at 128 against 1.23x at 256 (beyond, the client's
    #: CPU binds), and 128 stays 1.6x faster than 64 with 429s and adaptive backoff
    #: (bench/README.md, bench_concurrency.py).
    max_concurrent: int = 128
    allowed_models: frozenset[str] | None = None
    #: US dollars, priced with :attr:`rlm.config.RLMConfig.prices`.
    max_cost_usd: float | None = None
    max_wall_time_s: float | None = None
    #: Child RLMs started in the whole tree.
    max_children: int | None = 100
    #: Child sandboxes alive at once in the whole tree.
    max_live_children: int = 8
    max_consecutive_errors: int | None = None
    #: Characters of a child's context (its JSON text).
    max_child_context_chars: int = 20_000_000
    #: Seconds the forced-final turn after a limit may take (past max_wall_time_s).
    final_grace_s: float = 30.0
