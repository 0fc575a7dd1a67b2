"""The failed-token limiter on its own: its window, and its bounded memory."""

from __future__ import annotations

from rlm.service.guard import FailureLimiter, client_address


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_frees_when_the_oldest_failure_is_a_minute_old() -> None:
    clock = Clock()
    limiter = FailureLimiter(3, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("a") is None
        limiter.failed("a")
        clock.now += 10
    assert limiter.retry_after("a") == 30  # the first failure was 30 s ago
    assert limiter.retry_after("b") is None
    clock.now += 30
    assert limiter.retry_after("a") is None


def test_the_memory_is_bounded_least_recent_first() -> None:
    clock = Clock()
    limiter = FailureLimiter(2, clock=clock, size=100)
    for i in range(10_000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    limiter.failed("attacker")
    limiter.failed("attacker")
    assert len(limiter) == 100
    assert limiter.retry_after("attacker") is not None
    assert limiter.retry_after("10.0.0.0") is None  # forgotten
    for _ in range(200):  # many more failures of one address keep only the limit's
        limiter.failed("attacker")
    assert len(limiter._failures["attacker"]) == 2


def test_forwarded_for_is_believed_from_the_trusted_proxy_only() -> None:
    headers = [(b"x-forwarded-for", b"6.6.6.6, 10.0.0.7")]
    scope = {"client": ("127.0.0.1", 5000), "headers": headers}
    assert client_address(scope, None) == "127.0.0.1"
    assert client_address(scope, "127.0.0.9") == "127.0.0.1"
    assert client_address(scope, "127.0.0.1") == "10.0.0.7"
    assert client_address({"client": ("127.0.0.1", 1), "headers": []}, "127.0.0.1") == "127.0.0.1"
