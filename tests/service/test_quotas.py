"""Each quota refuses with the right status and Retry-After; slots are released once."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from rlm.service.quotas import (
    CONCURRENT_RETRY_AFTER_S,
    TOKENS_CACHE_S,
    Admission,
    QuotaExceeded,
    Quotas,
)
from rlm.service.settings import Profile, ServerSettings, ServiceConfig, Tenant

#: 2026-11-30 21:00:00 UTC: three hours before midnight.
EVENING = 1_796_072_400.0
TENANT = Tenant(
    "acme",
    "0" * 64,
    ("rlm",),
    max_concurrent_runs=2,
    runs_per_minute=None,
    max_context_bytes=1000,
)
CONFIG = ServiceConfig(ServerSettings(), {"rlm": Profile("rlm", "gpt-4.1")}, (TENANT,))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = EVENING

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds


class Store:
    """Stands in for the store's ``tokens_used``, counting the questions."""

    def __init__(self, used: int = 0) -> None:
        self.used = used
        self.asked: list[tuple[str, float]] = []

    async def tokens_used(self, tenant: str, since: float) -> int:
        self.asked.append((tenant, since))
        await asyncio.sleep(0)
        return self.used


def quotas(clock: Clock, store: Store | None = None) -> Quotas:
    store = store or Store()
    return Quotas(CONFIG, store.tokens_used, clock=lambda: clock.now, wall=lambda: clock.wall)


async def refusal(q: Quotas, tenant: Tenant, profile: str = "rlm", size: int = 10) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as caught:
        await q.admit(tenant, profile, size)
    return caught.value


async def test_a_profile_the_tenant_does_not_have_is_403_without_retry_after() -> None:
    q = quotas(Clock())
    refused = await refusal(q, TENANT, profile="gpt-4.1")
    assert (refused.status, refused.quota, refused.retry_after) == (403, "profile", None)
    assert refused.headers == {}
    assert "'gpt-4.1' is not available to tenant 'acme'; use one of: rlm" in refused.message
    assert q.active("acme") == 0


async def test_a_context_over_the_limit_is_413_and_says_waiting_will_not_help() -> None:
    q = quotas(Clock())
    (await q.admit(TENANT, "rlm", 1000)).release()  # at the limit is fine
    refused = await refusal(q, TENANT, size=1001)
    assert (refused.status, refused.quota, refused.headers) == (413, "context_bytes", {})
    assert "1001 bytes, over this tenant's limit of 1000" in refused.message
    assert "waiting will not help" in refused.message
    assert q.active("acme") == 0


async def test_concurrent_runs_are_429_until_a_slot_is_released() -> None:
    q = quotas(Clock())
    first = await q.admit(TENANT, "rlm", 10)
    second = await q.admit(TENANT, "rlm", 10)
    assert q.active("acme") == 2
    refused = await refusal(q, TENANT)
    assert (refused.status, refused.quota) == (429, "concurrent_runs")
    assert refused.retry_after == CONCURRENT_RETRY_AFTER_S
    assert refused.headers == {"Retry-After": "1"}
    assert "2 runs in flight" in refused.message
    first.release()
    third = await q.admit(TENANT, "rlm", 10)
    # Other tenants have slots of their own.
    other = replace(TENANT, name="globex", max_concurrent_runs=1)
    (await q.admit(other, "rlm", 10)).release()
    for admission in (second, third):
        admission.release()
    assert q.active("acme") == 0


async def test_release_is_idempotent() -> None:
    q = quotas(Clock())
    first = await q.admit(TENANT, "rlm", 10)
    second = await q.admit(TENANT, "rlm", 10)
    first.release()
    first.release()
    first.release()
    assert first.released and not second.released
    # A double release must not hand out a slot still held by `second`.
    assert q.active("acme") == 1
    third = await q.admit(TENANT, "rlm", 10)
    assert (await refusal(q, TENANT)).quota == "concurrent_runs"
    second.release()
    third.release()
    third.release()
    assert q.active("acme") == 0


async def test_the_slot_is_freed_when_a_run_fails() -> None:
    q = quotas(Clock())
    tenant = replace(TENANT, max_concurrent_runs=1)

    async def run(admission: Admission) -> None:
        with admission:
            await asyncio.sleep(0)
            raise RuntimeError("the run failed")

    with pytest.raises(RuntimeError):
        await run(await q.admit(tenant, "rlm", 10))
    assert q.active("acme") == 0
    task = asyncio.ensure_future(asyncio.sleep(10))
    admission = await q.admit(tenant, "rlm", 10)
    task.add_done_callback(lambda _: admission.release())
    task.cancel()  # a cancelled run frees its slot too
    with pytest.raises(asyncio.CancelledError):
        await task
    (await q.admit(tenant, "rlm", 10)).release()


async def test_runs_per_minute_is_a_sliding_window_with_retry_after() -> None:
    clock = Clock()
    q = quotas(clock)
    tenant = replace(TENANT, max_concurrent_runs=10, runs_per_minute=3)
    for _ in range(3):  # started at 0, 10 and 20 s
        (await q.admit(tenant, "rlm", 10)).release()
        clock.advance(10)
    # Now 30 s after the first start: its place in the window frees in 30 s.
    refused = await refusal(q, tenant)
    assert (refused.status, refused.quota) == (429, "runs_per_minute")
    assert refused.retry_after == pytest.approx(30.0)
    assert refused.headers == {"Retry-After": "30"}
    assert "3 runs in the last minute" in refused.message
    clock.advance(29.5)
    assert (await refusal(q, tenant)).headers == {"Retry-After": "1"}
    clock.advance(0.5)  # exactly 60 s after the first start: it has left the window
    (await q.admit(tenant, "rlm", 10)).release()
    assert (await refusal(q, tenant)).retry_after == pytest.approx(10.0)
    # Refused requests do not count against the window.
    clock.advance(10)
    (await q.admit(tenant, "rlm", 10)).release()


async def test_tokens_per_day_is_429_until_utc_midnight() -> None:
    clock = Clock()
    store = Store(used=5000)
    q = quotas(clock, store)
    tenant = replace(TENANT, tokens_per_day=5000)
    refused = await refusal(q, tenant)
    assert (refused.status, refused.quota) == (429, "tokens_per_day")
    assert refused.retry_after == pytest.approx(3 * 3600)
    assert refused.headers == {"Retry-After": "10800"}
    assert "used 5000 tokens today" in refused.message and "midnight UTC" in refused.message
    # The store is asked for the tokens since this UTC day's midnight.
    assert store.asked == [("acme", EVENING - 21 * 3600)]
    assert q.active("acme") == 0
    clock.advance(3 * 3600)  # a new day
    store.used = 0
    (await q.admit(tenant, "rlm", 10)).release()
    assert store.asked[-1] == ("acme", EVENING + 3 * 3600)


async def test_tokens_used_is_cached_briefly_and_counts_what_runs_report() -> None:
    clock = Clock()
    store = Store(used=100)
    q = quotas(clock, store)
    tenant = replace(TENANT, max_concurrent_runs=100, tokens_per_day=1000)
    for _ in range(5):
        (await q.admit(tenant, "rlm", 10)).release()
    assert len(store.asked) == 1
    q.record_tokens("acme", 900)  # a run just ended: the cache is at the limit now
    assert (await refusal(q, tenant)).quota == "tokens_per_day"
    assert len(store.asked) == 1
    clock.advance(TOKENS_CACHE_S)
    (await q.admit(tenant, "rlm", 10)).release()  # the store says 100 again
    assert len(store.asked) == 2


async def test_slots_are_checked_again_after_asking_the_store() -> None:
    q = quotas(Clock(), Store(used=0))
    tenant = replace(TENANT, max_concurrent_runs=1, tokens_per_day=10)
    results = await asyncio.gather(
        *(q.admit(tenant, "rlm", 10) for _ in range(5)), return_exceptions=True
    )
    admitted = [r for r in results if isinstance(r, Admission)]
    assert len(admitted) == 1
    assert all(
        isinstance(r, QuotaExceeded) and r.status == 429 for r in results if r not in admitted
    )
    assert q.active("acme") == 1


async def test_a_refusal_on_slots_does_not_ask_the_store() -> None:
    store = Store()
    q = quotas(Clock(), store)
    tenant = replace(TENANT, max_concurrent_runs=1, tokens_per_day=10)
    held = await q.admit(tenant, "rlm", 10)
    asked = len(store.asked)
    for _ in range(20):
        assert (await refusal(q, tenant)).quota == "concurrent_runs"
    assert len(store.asked) == asked
    held.release()


async def test_usage_reports_where_the_tenant_stands() -> None:
    clock = Clock()
    q = quotas(clock, Store(used=42))
    tenant = replace(TENANT, runs_per_minute=5, tokens_per_day=1000)
    held = await q.admit(tenant, "rlm", 10)
    usage = await q.usage(tenant)
    assert usage["concurrent_runs"] == {"used": 1, "limit": 2}
    assert usage["runs_per_minute"] == {"used": 1, "limit": 5}
    assert usage["tokens_per_day"] == {"used": 42, "limit": 1000, "resets_in_s": 10800.0}
    assert usage["profiles"] == ["rlm"]
    held.release()


async def test_runs_on_other_replicas_count_against_the_same_quotas() -> None:
    from dataclasses import replace

    from rlm.service.store.base import TenantLoad

    tenant = replace(TENANT, max_concurrent_runs=2, runs_per_minute=3)
    clock = Clock()
    seen: list[tuple[str, float]] = []
    others = TenantLoad()

    async def others_load(name: str, since: float) -> TenantLoad:
        seen.append((name, since))
        return others

    q = Quotas(
        CONFIG,
        Store().tokens_used,
        clock=lambda: clock.now,
        wall=lambda: clock.wall,
        others_load=others_load,
    )
    held = [await q.admit(tenant, "rlm", 10)]
    assert seen == [("acme", clock.wall - 60.0)]
    # The other replicas run the rest of the tenant's slots: none is left here.
    others = TenantLoad(in_flight=1)
    refused = await refusal(q, tenant)
    assert (refused.status, refused.quota) == (429, "concurrent_runs")
    assert q.active("acme") == 1
    # Runs per minute: one here and two there. The others' first start frees the
    # window sooner than this replica's own, so it decides Retry-After.
    others = TenantLoad(started=2, oldest_start=clock.wall - 50.0)
    refused = await refusal(q, tenant)
    assert (refused.status, refused.quota) == (429, "runs_per_minute")
    assert "started 3 runs in the last minute" in refused.message
    assert refused.retry_after == pytest.approx(10.0)
    others = TenantLoad()
    held.append(await q.admit(tenant, "rlm", 10))
    for admission in held:
        admission.release()
