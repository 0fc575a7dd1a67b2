"""The events of a run: their names, and what each one carries.

Events are a public interface. ``RLM(on_event=...)`` receives each one as a dict as
it happens, ``trajectory_path`` appends them to a JSON-lines file, and the service
stores and streams them. Every event has ``event`` (one of :data:`EventName`) and
``t`` (seconds since the run started); events the batcher and the backends send
for a session also carry ``session`` (its id). Fields beyond these, per event:

=====================  =====================================================================
``run_start``          ``query``, ``context`` (its kind and size, never its text), ``model``,
                       ``sub_model``, ``backend``, ``backend_reason``
``sandbox_started``    ``backend``, ``container`` (Docker: a new container for the session)
``root_call``          ``iteration``, ``text`` (the root model's reply), ``prompt_tokens``,
                       ``completion_tokens``, ``seconds``
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
``concurrency_cut``    ``model``, ``concurrency``: a 429 made the global limit smaller
``cache_error``        ``error``: the response cache failed; the call went to the provider
``missing_variable``   ``name``: ``FINAL_VAR`` named a variable the sandbox does not have
``no_action``          ``iteration``: the reply had neither code nor a final answer
``final``              ``answer``, ``forced`` (the iteration bound made the model answer),
                       ``status`` (:data:`rlm.result.RunStatus`), ``limits`` (refusals by
                       :data:`rlm.session.LimitKind`)
``usage``              the run's usage (:meth:`rlm.usage.Usage.to_dict`)
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
    "concurrency_cut",
    "cache_error",
    "missing_variable",
    "no_action",
    "final",
    "usage",
]

EVENT_NAMES: Final[frozenset[str]] = frozenset(get_args(EventName))

#: Events too frequent to keep: callbacks get them, trajectories do not.
TRANSIENT_EVENTS: Final[frozenset[EventName]] = frozenset({"batch_progress", "root_delta"})

#: One event as callbacks receive it.
Event = dict[str, Any]
