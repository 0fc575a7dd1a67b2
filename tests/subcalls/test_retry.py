"""The retry policy on its own: which failures, how long, how often."""

from __future__ import annotations

import random

import pytest

from rlm.provider.client import ModelCallFailure
from rlm.subcalls.retry import RetryPolicy


def failure(kind: str, retry_after: float | None = None) -> ModelCallFailure:
    return ModelCallFailure(f"failed: {kind}", kind=kind, retry_after=retry_after)


@pytest.mark.parametrize("kind", ["bad_request", "auth", "not_found", "context_length"])
def test_failures_a_retry_cannot_fix_are_not_retried(kind: str) -> None:
    policy = RetryPolicy()
    assert policy.delay(1, failure(kind), 0.0) is None
    assert policy.gave_up(1, failure(kind), 0.0) == f"failed: {kind}"


@pytest.mark.parametrize("kind", ["rate_limit", "server", "timeout", "connection"])
def test_passing_failures_are_retried_with_growing_jittered_backoff(kind: str) -> None:
    policy = RetryPolicy(max_tries=10, base_delay=0.5, max_delay=4.0)
    rng = random.Random(1)
    for tries, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (8, 4.0)]:
        waits = [policy.delay(tries, failure(kind), 0.0, rng) for _ in range(200)]
        assert all(w is not None and 0 <= w <= ceiling for w in waits)
        # Full jitter: spread over the whole range, not bunched at the top.
        assert min(w for w in waits if w is not None) < ceiling / 4


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy(base_delay=0.01)
    rng = random.Random(2)
    waits = [policy.delay(1, failure("rate_limit", 2.0), 0.0, rng) for _ in range(100)]
    assert all(w is not None and 2.0 <= w <= 2.2 for w in waits)


def test_tries_and_time_are_bounded() -> None:
    policy = RetryPolicy(max_tries=3, max_elapsed=10.0)
    assert policy.delay(2, failure("server"), 0.0) is not None
    assert policy.delay(3, failure("server"), 0.0) is None
    assert "gave up after 3 tries" in policy.gave_up(3, failure("server"), 1.0)
    assert policy.delay(1, failure("rate_limit", 20.0), 0.0) is None
    message = policy.gave_up(1, failure("rate_limit", 20.0), 0.0)
    assert "10 s retry budget" in message and "lower max_concurrent" in message
