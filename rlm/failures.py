"""Why a model call failed: the one vocabulary of failure kinds.

A kind travels with every failure: on :class:`~rlm.errors.ModelCallError` and its
provider subclass, on a failed :class:`~rlm.subcalls.batcher.SubResult`, across the
bridge as the ``kind`` of a wire error, and into model code as ``LLMError.kind``, so
the model can tell "retry later" from "this prompt is too long". It is also a public
interface: trajectories, ``on_event`` callbacks and the service report it.
"""

from __future__ import annotations

from typing import Final, Literal

FailureKind = Literal[
    # The provider answered with an error status.
    "rate_limit",  # 429: too many requests; retried, and the global limit is cut
    "auth",  # 401/403: the API key was refused
    "not_found",  # 404: no such model
    "server",  # 5xx, or a stream that ended early
    "bad_request",  # another 4xx, or a redirect (never followed)
    "context_length",  # a 4xx that names the context length: the prompt is too long
    # No usable answer came.
    "connection",  # the server could not be reached, or dropped the connection
    "timeout",  # no answer within the request timeout
    "bad_response",  # an answer that is not a chat completion with text
    # The host refused to make the call.
    "budget",  # the run's token, cost or time budget is spent
    # A child RLM (rlm_query) did not answer.
    "limit",  # a run limit refused the child, or stopped it before it answered
    "child",  # the child failed: its root model, its sandbox or its context
    # Anything else (a bug in a client library, say).
    "error",
]


#: Kinds of failure that a later try may fix.
RETRYABLE_KINDS: Final[frozenset[FailureKind]] = frozenset(
    {"rate_limit", "server", "timeout", "connection"}
)
