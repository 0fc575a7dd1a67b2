"""What a tenant may start now: profiles, context size, runs at once, runs per minute,
tokens per day.

A refusal is a :class:`QuotaExceeded` whose status tells the client whether waiting
helps: 429 with ``Retry-After`` (a slot frees, the minute rolls on, the UTC day ends)
or 403 / 413 where it never will (a profile the tenant does not have, a context over
its size limit). An accepted run holds an :class:`Admission` until it ends.

This replica's own runs are counted in its memory, on one event loop: there is no
await between the last check and taking the slot, so two requests here cannot both
take the last one. With several replicas sharing a store, the runs the others have
in flight and started in the last minute are read from the store at each admission
(after the local checks, so a flood refused here costs no queries) and added in;
tokens per day come from the store too (briefly cached). Two replicas admitting the
same tenant's last slot at the same instant can both take it: a tenant may go over
by at most one run per other replica, for as long as those runs last.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from rlm.service.settings import ServiceConfig, Tenant
from rlm.service.store.base import TenantLoad

Quota = Literal["profile", "context_bytes", "concurrent_runs", "runs_per_minute", "tokens_per_day"]

#: The window runs_per_minute counts over.
WINDOW_S = 60.0
#: Tokens used today are asked of the store at most this often per tenant: a flood of
#: requests must not become a flood of SUM queries.
TOKENS_CACHE_S = 5.0
#: When a run will end is unknown; this is a hint to retry soon, not a promise.
CONCURRENT_RETRY_AFTER_S = 1.0
_DAY_S = 86_400.0


class QuotaExceeded(Exception):
    """A run refused by a quota; ``message`` says which and what to do."""

    def __init__(
        self, quota: Quota, status: int, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.quota = quota
        self.status = status
        self.message = message
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        """``Retry-After`` in whole seconds (at least 1) when waiting helps."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class Admission:
    """A run's held slot. :meth:`release` when the run ends, however it ends; a second
    release does nothing, so every path out of a run may call it."""

    def __init__(self, quotas: Quotas, tenant: str, profile: str) -> None:
        self._quotas = quotas
        self.tenant = tenant
        self.profile = profile
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._quotas._release(self.tenant)

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Quotas:
    """The tenants' quotas on one replica."""

    def __init__(
        self,
        config: ServiceConfig,
        tokens_used: Callable[[str, float], Awaitable[int]],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        tokens_cache_s: float = TOKENS_CACHE_S,
        others_load: Callable[[str, float], Awaitable[TenantLoad]] | None = None,
    ) -> None:
        self.config = config
        self._tokens_used = tokens_used
        #: (tenant, since) -> what other replicas run for the tenant; None: no others.
        self._others_load = others_load
        self._others: dict[str, TenantLoad] = {}
        self._clock = clock
        self._wall = wall
        self._tokens_cache_s = tokens_cache_s
        self._active: dict[str, int] = {}
        self._starts: dict[str, deque[float]] = {}
        #: tenant → (the UTC day it counts, when it was read, tokens used that day).
        self._tokens: dict[str, tuple[float, float, int]] = {}

    async def admit(self, tenant: Tenant, profile: str, context_bytes: int) -> Admission:
        """Take a slot for a run, or raise :class:`QuotaExceeded` saying why not."""
        if profile not in tenant.profiles:
            raise QuotaExceeded(
                "profile",
                403,
                f"profile {profile!r} is not available to tenant {tenant.name!r}; "
                f"use one of: {', '.join(tenant.profiles)} (the operator grants profiles)",
            )
        if context_bytes > tenant.max_context_bytes:
            raise QuotaExceeded(
                "context_bytes",
                413,
                f"the context is {context_bytes} bytes, over this tenant's limit of "
                f"{tenant.max_context_bytes} bytes per run; send a smaller context "
                "(waiting will not help)",
            )
        # Refuse on slots before asking the store, so a flood costs no queries; then
        # check again after the await, which other admissions may have run through.
        self._check_slots(tenant)
        if tenant.tokens_per_day is not None:
            await self._check_tokens(tenant, tenant.tokens_per_day)
            self._check_slots(tenant)
        if self._others_load is not None:
            since = self._wall() - WINDOW_S
            self._others[tenant.name] = await self._others_load(tenant.name, since)
            try:
                self._check_slots(tenant)
            finally:
                self._others.pop(tenant.name, None)
        self._active[tenant.name] = self._active.get(tenant.name, 0) + 1
        if tenant.runs_per_minute is not None:
            self._starts.setdefault(tenant.name, deque()).append(self._clock())
        return Admission(self, tenant.name, profile)

    def active(self, tenant: str) -> int:
        """Runs of ``tenant`` holding a slot now."""
        return self._active.get(tenant, 0)

    def record_tokens(self, tenant: str, tokens: int) -> None:
        """Count tokens a run just spent into the cached day total, so a tenant near
        its daily limit is stopped before the cache would next ask the store."""
        cached = self._tokens.get(tenant)
        if cached is not None and tokens > 0:
            day, read_at, used = cached
            self._tokens[tenant] = (day, read_at, used + tokens)

    async def usage(self, tenant: Tenant) -> dict[str, Any]:
        """The tenant's quotas and where it stands (for ``GET /v1/usage``)."""
        day = self._today()
        return {
            "concurrent_runs": {
                "used": self.active(tenant.name),
                "limit": tenant.max_concurrent_runs,
            },
            "runs_per_minute": {
                "used": len(self._window(tenant.name)),
                "limit": tenant.runs_per_minute,
            },
            "tokens_per_day": {
                "used": await self._tokens_today(tenant.name, day),
                "limit": tenant.tokens_per_day,
                "resets_in_s": round(day + _DAY_S - self._wall(), 3),
            },
            "max_context_bytes": tenant.max_context_bytes,
            "profiles": list(tenant.profiles),
        }

    # -- the checks ------------------------------------------------------------------------

    def _check_slots(self, tenant: Tenant) -> None:
        others = self._others.get(tenant.name, TenantLoad())
        if self.active(tenant.name) + others.in_flight >= tenant.max_concurrent_runs:
            raise QuotaExceeded(
                "concurrent_runs",
                429,
                f"tenant {tenant.name!r} has {tenant.max_concurrent_runs} runs in flight, "
                "its limit; retry when one ends (or cancel one)",
                CONCURRENT_RETRY_AFTER_S,
            )
        if tenant.runs_per_minute is None:
            return
        window = self._window(tenant.name)
        started = len(window) + others.started
        if started >= tenant.runs_per_minute:
            frees = [window[0] + WINDOW_S - self._clock()] if window else []
            if others.oldest_start is not None:
                frees.append(others.oldest_start + WINDOW_S - self._wall())
            frees_in = min(frees) if frees else WINDOW_S
            raise QuotaExceeded(
                "runs_per_minute",
                429,
                f"tenant {tenant.name!r} started {started} runs in the last minute, its "
                f"limit of {tenant.runs_per_minute}; retry in {math.ceil(frees_in)} s",
                max(frees_in, 0.0),
            )

    async def _check_tokens(self, tenant: Tenant, limit: int) -> None:
        day = self._today()
        used = await self._tokens_today(tenant.name, day)
        if used >= limit:
            until_midnight = day + _DAY_S - self._wall()
            raise QuotaExceeded(
                "tokens_per_day",
                429,
                f"tenant {tenant.name!r} has used {used} tokens today, its daily limit of "
                f"{limit}; it resets at midnight UTC, in {math.ceil(until_midnight)} s",
                max(until_midnight, 0.0),
            )

    def _window(self, tenant: str) -> deque[float]:
        """Start times of the tenant's runs in the last minute (older ones dropped)."""
        starts = self._starts.setdefault(tenant, deque())
        horizon = self._clock() - WINDOW_S
        while starts and starts[0] <= horizon:
            starts.popleft()
        return starts

    def _today(self) -> float:
        """The epoch seconds of this UTC day's midnight."""
        return math.floor(self._wall() / _DAY_S) * _DAY_S

    async def _tokens_today(self, tenant: str, day: float) -> int:
        cached = self._tokens.get(tenant)
        now = self._clock()
        if cached is not None and cached[0] == day and now - cached[1] < self._tokens_cache_s:
            return cached[2]
        used = int(await self._tokens_used(tenant, day))
        self._tokens[tenant] = (day, now, used)
        return used

    def _release(self, tenant: str) -> None:
        left = self._active.get(tenant, 0) - 1
        if left > 0:
            self._active[tenant] = left
        else:
            self._active.pop(tenant, None)
