"""The events of a run: their names, and what each one carries.

Events are a public interface. ``RLM(on_event=...)`` receives each one as a dict as
it happens, ``trajectory_path`` appends them to a JSON-lines file, and the service
stores and streams them. Every event has ``event`` (one of :data:`EventName`) and
``t`` (seconds since the run started); every event of a run also carries
``run_id`` (the run it belongs to: the root, or a child RLM), ``parent_id`` (the run
whose code started it; None for the root), ``depth`` (0 for the root) and
``session`` (the same id as ``run_id``). A trajectory holds the whole tree: a
child's events follow its parent's ``child_start``. Fields beyond these, per event:

=====================  =====================================================================
``run_start``          ``query``, ``context`` (its kind and size, never its text), ``model``,
                       ``sub_model``, ``backend``, ``backend_reason``, ``max_depth``,
                       ``tools`` (their names), ``turn`` (of its session; 1 alone)
``sandbox_started``    ``backend``, ``container`` (Docker: a new container for the session)
``root_call``          ``iteration``, ``model``, ``text`` (the root model's reply),
                       ``prompt_tokens``, ``completion_tokens``, ``seconds``
``root_delta``         ``text``: a piece of the streamed reply (``stream=True``; transient)
``root_retry``         ``attempt``, ``kind`` (a failure kind), ``delay`` (seconds)
``cell``               ``iteration``, ``code``
``output``             ``iteration`` and the cell's result: ``stdout``, ``stderr``, ``error``,
                       ``timed_out``, ``duration_s``, ``state_lost``, ``truncated``
``batch_start``        ``batch`` (its number), ``model``, ``size``, ``unique`` (distinct
                       prompts), ``max_concurrent``
``batch_progress``     ``batch``, ``done``, ``total``, ``failures``, ``eta_s`` (seconds left,
                       estimated from the time per prompt so far and the concurrency;
                       None until an answer has come; 0 when done) (throttled; transient)
``batch_end``          ``batch``, ``model``, ``size``, ``done``, ``failures``, ``retries``,
                       ``cache_hits``, ``dedup_hits``, ``prompt_tokens``,
                       ``completion_tokens``, ``cancelled``
``subcall_start``       ``method`` (``llm_query``, ``llm_batch``, ``rlm_batch`` as plain prompts),
                       ``model``, ``size``, ``prompt`` (a preview, for one prompt)
``subcall_end``         ``method``, ``model``, ``size``, ``failures``, ``cancelled`` (prompts a
                       closed stream never ran), ``seconds``
``child_start``        ``child_id`` (the child's ``run_id``), ``model``, ``prompt`` (a preview),
                       ``context`` (its kind and size)
``child_end``          ``child_id``, ``status`` (``answered``, ``forced``, ``limit``,
                       ``no_answer``, ``failed``), ``stopped`` (its limit), ``answer`` (a
                       preview), ``error``, ``failure`` (its kind), ``seconds``, ``usage``
                       (the child's own)
``tool_call``          ``name``: model code called a host tool
``tool_end``           ``name``, ``ok``, ``error`` (the message model code got), ``seconds``
``limit_reached``      ``limit`` (a :data:`rlm.tree.StopReason`), ``iteration``: the run stops
``concurrency_cut``    ``model``, ``concurrency``: a 429 made the global limit smaller
``cache_error``        ``error``: the response cache failed; the call went to the provider
``missing_variable``   ``name``: ``FINAL_VAR`` named a variable the sandbox does not have
``invalid_answer``     ``iteration``, ``problem``: the answer did not match the answer schema
``compaction``         ``iteration``, ``tokens_before``, ``tokens_after``, ``messages`` (in the
                       transcript): older turns were summarized by the root model
``no_action``          ``iteration``: the reply had neither code nor a final answer
``final``              ``answer``, ``forced`` (the iteration bound made the model answer),
                       ``status`` (:data:`rlm.result.RunStatus`), ``limits`` (refusals by
                       :data:`rlm.session.LimitKind`), ``stopped`` (the limit that ended it)
``session_closed``     ``reason`` (``idle_close``), ``turns``: a session ended without a call
``usage``              the tree's usage (:meth:`rlm.usage.Usage.to_dict`, with ``by_depth``)
                       and ``cost_usd`` (None without a price table), ``cost_by_depth``
                       (depth → model → USD, priced models only; None without a table)
=====================  =====================================================================

Failure kinds inside events are :data:`rlm.failures.FailureKind`.
"""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

EventName = Literal[
    "run_start",
    "sandbox_started",
    "root_call",
    "root_delta",
    "root_retry",
    "cell",
    "output",
    "batch_start",
    "batch_progress",
    "batch_end",
    "subcall_start",
    "subcall_end",
    "child_start",
    "child_end",
    "tool_call",
    "tool_end",
    "limit_reached",
    "concurrency_cut",
    "cache_error",
    "missing_variable",
    "invalid_answer",
    "compaction",
    "no_action",
    "final",
    "session_closed",
    "usage",
]

EVENT_NAMES: Final[frozenset[str]] = frozenset(get_args(EventName))

#: Events too frequent to keep: callbacks get them, trajectories do not.
TRANSIENT_EVENTS: Final[frozenset[EventName]] = frozenset({"batch_progress", "root_delta"})

#: One event as callbacks receive it.
Event = dict[str, Any]
