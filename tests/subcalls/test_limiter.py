"""The AIMD limit on its own."""

from __future__ import annotations

import pytest

from rlm.subcalls.limiter import AdaptiveLimit


def test_a_burst_of_refusals_from_one_round_cuts_once() -> None:
    limit = AdaptiveLimit(16)
    epoch = limit.epoch
    assert limit.on_overload(epoch) is True
    # The other calls of the same round were refused for the same reason.
    assert [limit.on_overload(epoch) for _ in range(15)] == [False] * 15
    assert (limit.current, limit.cuts) == (8, 1)
    assert limit.on_overload(limit.epoch) is True
    assert limit.current == 4


def test_cuts_stop_at_the_minimum() -> None:
    limit = AdaptiveLimit(16, minimum=2)
    for _ in range(10):
        limit.on_overload(limit.epoch)
    assert limit.current == limit.lowest == 2


def test_growth_is_about_one_per_round_of_successes() -> None:
    limit = AdaptiveLimit(16)
    for _ in range(10):
        limit.on_overload(limit.epoch)
    assert limit.current == 1
    successes = 0
    while limit.current < 16:
        limit.on_success()
        successes += 1
    # 1 + 2 + ... + 15 successes, one round at each limit on the way up.
    assert 110 <= successes <= 135
    limit.on_success()
    assert limit.current == 16
    assert [v for _, v in limit.history][:2] == [16, 8]
    assert [v for _, v in limit.history][-1] == 16


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        AdaptiveLimit(0)
    with pytest.raises(ValueError):
        AdaptiveLimit(4, minimum=5)
    with pytest.raises(ValueError):
        AdaptiveLimit(4, decrease=1.0)
