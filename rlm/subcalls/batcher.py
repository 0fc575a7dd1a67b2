"""The host-side batcher: every sub-call from every sandbox runs through here.

One :class:`Batcher` serves all the sessions of a process. For each batch it

- keeps at most ``min(max_concurrent, the session's limit, …)`` of the batch's
  prompts in flight, with a fixed set of worker tasks (not one task per prompt), so
  a 10,000-prompt batch costs as much bookkeeping as its concurrency;
- takes a slot from the :class:`~rlm.subcalls.fairness.FairScheduler` for each request, so
  tenants and sessions share the global, per-tenant and per-session limits
  round-robin, and the global limit follows the provider's 429s
  (:class:`~rlm.subcalls.limiter.AdaptiveLimit`);
- retries what may pass (:class:`~rlm.subcalls.retry.RetryPolicy`), without holding a slot
  while it waits;
- shares one call among identical prompts in flight (:mod:`rlm.subcalls.dedup`) and, if given
  a :mod:`cache <rlm.subcalls.cache>`, answers repeated requests from it;
- stops starting calls for a session whose token budget is spent;
- counts calls, tokens, retries, cache and dedup hits, failures and time per model,
  for the session and for its tenant, and reports each batch's progress as
  ``batch_start`` / ``batch_progress`` (with an ETA) / ``batch_end`` session events;
- hands each result to ``on_result`` as it completes, if asked, for callers that
  stream answers in completion order (:mod:`rlm.streams`).

A failed prompt fails alone: it becomes a :class:`SubResult` with ``error`` and
``kind``. Cancelling ``run`` (a cancelled task, a timeout, Ctrl-C) cancels its queued
and in-flight requests at once (their HTTP connections are dropped) and nothing
else: other sessions' calls carry on, and a call another session was waiting to
share is made again for it.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import anyio

from rlm.failures import FailureKind
from rlm.provider.client import ChatResult, ModelCallFailure, ModelClient
from rlm.session import SessionState
from rlm.subcalls.cache import ResponseCache, request_key
from rlm.subcalls.dedup import InFlight
from rlm.subcalls.fairness import FairScheduler
from rlm.subcalls.limiter import AdaptiveLimit
from rlm.subcalls.retry import RetryPolicy
from rlm.usage import Usage


@dataclass
class SubResult:
    """One sub-call's outcome: ``text`` on success, else ``error`` and its ``kind``."""

    text: str | None = None
    error: str | None = None
    kind: FailureKind | Literal["ok"] = "ok"

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_wire(self) -> dict[str, Any]:
        if self.error is None:
            return {"text": self.text or ""}
        return {"error": self.error, "kind": self.kind}


@dataclass(frozen=True)
class BatcherStats:
    """A snapshot of a :class:`Batcher`'s scheduler, for monitoring (``/metrics``)."""

    #: Requests at the provider now, and the most there have been at once.
    in_flight: int
    max_in_flight: int
    #: Requests waiting for a slot.
    waiting: int
    #: The global limit now (it follows 429s), its ceiling, how often it was cut
    #: and the lowest it has been.
    concurrency: int
    max_concurrent: int
    concurrency_cuts: int
    lowest_concurrency: int
    #: Distinct requests that other identical prompts are waiting on.
    shared_in_flight: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class _BudgetSpent:
    """The session's token budget ran out before the call could start."""


_BUDGET_SPENT = _BudgetSpent()
_Outcome = ChatResult | ModelCallFailure

#: Workers started between two turns of the event loop. Started all in one turn,
#: each builds its request before any is sent (on Python 3.11 aiohttp sends a body
#: from a task that runs after every worker's first step): at c = 100 the first
#: request left about 9 ms after the batch began, and the server had nothing to do
#: until then. A turn per group puts each group on the wire while the next is built;
#: groups rather than single workers, as each send that wakes an idle server costs
#: the sender. Measured interleaved at N = c = 100 (bench/README.md): ratio to the
#: ideal 1.090 → 1.064.
_START_GROUP = 20


class _Batch:
    """One ``run``: its counters and its progress reporting."""

    def __init__(
        self,
        batcher: Batcher,
        session: SessionState,
        model: str,
        total: int,
        number: int,
        *,
        unique: int,
        width: int,
    ) -> None:
        self.session = session
        self.model = model
        self.total = total
        self.number = number
        self.usage = session.usage.model(model)
        tenant_usage = batcher.tenant_usage(session.tenant)
        self.tenant_usage = tenant_usage.model(model)
        self._tenant_totals = tenant_usage
        self.interval = batcher.progress_interval
        self.started = self.last_emit = time.monotonic()
        self.unique = unique
        self.width = max(width, 1)
        #: When each worker took up the prompt it is on (None: between prompts or
        #: gone), and the worker-seconds spent on the distinct prompts settled so far:
        #: what the ETA is made of.
        self.busy_since: list[float | None] = [None] * self.width
        self.work = 0.0
        self.settled = 0
        self.done = 0
        self.failures = 0
        self.retries = 0
        self.cache_hits = 0
        self.dedup_hits = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def count(self, field: str, n: int = 1) -> None:
        """Add ``n`` to a usage field of the session, the tenant and this batch."""
        setattr(self.usage, field, getattr(self.usage, field) + n)
        setattr(self.tenant_usage, field, getattr(self.tenant_usage, field) + n)
        if hasattr(self, field):
            setattr(self, field, getattr(self, field) + n)

    def finish(self, result: SubResult, worker: int | None = None) -> None:
        """Count one prompt done: ``worker`` ran it, or None for a copy it answered."""
        self.done += 1
        self.session.usage.sub_calls += 1
        self._tenant_totals.sub_calls += 1
        if not result.ok:
            self.count("failures")
        now = time.monotonic()
        if worker is not None:
            began = self.busy_since[worker]
            if began is not None:
                self.work += now - began
                self.settled += 1
            self.busy_since[worker] = None
        # Throttled: a 10,000-prompt batch must not become 10,000 events.
        if self.done == self.total or now - self.last_emit >= self.interval:
            self.last_emit = now
            self.session.event(
                "batch_progress",
                batch=self.number,
                done=self.done,
                total=self.total,
                failures=self.failures,
                eta_s=self.eta(now),
            )

    def eta(self, now: float) -> float | None:
        """Seconds until the batch is done, or None before anything has finished.

        The mean time a worker spent per distinct prompt so far (slot waits and
        retries included, so a shared or throttled provider shows in it) prices the
        prompts not yet taken up, and the part of it not yet spent prices those in
        flight; the workers share that work. Done/elapsed alone would be badly off at
        the start of a wide batch, where the first answer arrives with a whole wave
        of others still in flight.
        """
        if self.done >= self.total:
            return 0.0
        if self.settled == 0:
            return None
        mean = self.work / self.settled
        in_flight = 0
        flight_left = longest = 0.0
        for began in self.busy_since:
            if began is not None:
                in_flight += 1
                left = max(mean - (now - began), 0.0)
                flight_left += left
                longest = max(longest, left)
        waiting = max(self.unique - self.settled - in_flight, 0)
        return round(max((waiting * mean + flight_left) / self.width, longest), 2)

    def end(self, cancelled: bool) -> None:
        self.session.event(
            "batch_end",
            batch=self.number,
            model=self.model,
            size=self.total,
            done=self.done,
            failures=self.failures,
            retries=self.retries,
            cache_hits=self.cache_hits,
            dedup_hits=self.dedup_hits,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cancelled=cancelled,
            seconds=round(time.monotonic() - self.started, 4),
        )


class Batcher:
    """Runs sub-calls for many sessions under shared limits.

    ``max_concurrent`` bounds the requests in flight for the whole process (and is
    where the adaptive limit starts and tops out; ``adaptive=False`` keeps it fixed);
    ``tenant_max_concurrent`` bounds each tenant, ``tenant_limits`` overrides it per
    tenant, and ``tenant_weights`` gives a tenant more slots per round-robin turn.
    Each session's own bound is its ``SessionLimits.max_concurrent``. ``retry`` paces
    retries, ``call_timeout`` bounds each request (default: the client's),
    ``params`` go with every request (e.g. ``{"temperature": 0}``), ``dedup``
    shares identical in-flight requests, ``cache`` (off by default) reuses answers.
    """

    def __init__(
        self,
        client: ModelClient,
        *,
        max_concurrent: int = 256,
        tenant_max_concurrent: int | None = None,
        tenant_limits: Mapping[str, int] | None = None,
        tenant_weights: Mapping[str, int] | None = None,
        adaptive: bool = True,
        min_concurrent: int = 1,
        retry: RetryPolicy | None = None,
        call_timeout: float | None = None,
        params: Mapping[str, Any] | None = None,
        dedup: bool = True,
        cache: ResponseCache | None = None,
        progress_interval: float = 0.1,
        seed: int | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        for name, limit in (tenant_limits or {}).items():
            if limit < 1:
                raise ValueError(f"tenant limit for {name!r} must be at least 1")
        if tenant_max_concurrent is not None and tenant_max_concurrent < 1:
            raise ValueError("tenant_max_concurrent must be at least 1")
        self.client = client
        self.max_concurrent = max_concurrent
        self.tenant_max_concurrent = tenant_max_concurrent
        self.tenant_limits = dict(tenant_limits or {})
        self.adaptive = adaptive
        self.limiter = AdaptiveLimit(max_concurrent, minimum=min(min_concurrent, max_concurrent))
        self.scheduler = FairScheduler(
            self._global_limit,
            tenant_limit=tenant_max_concurrent,
            tenant_limits=tenant_limits,
            tenant_weights=tenant_weights,
        )
        self.retry = retry or RetryPolicy()
        self.call_timeout = call_timeout
        self.params = dict(params or {})
        self.dedup = dedup
        self.cache = cache
        self.progress_interval = progress_interval
        self._rng = random.Random(seed)
        self._in_flight: InFlight[_Outcome] = InFlight()
        self._tenants: dict[str, Usage] = {}
        self._numbers = itertools.count(1)

    # -- what it has done --------------------------------------------------------------

    @property
    def concurrency(self) -> int:
        """The global limit on requests in flight right now."""
        return self._global_limit()

    def tenant_usage(self, tenant: str) -> Usage:
        """What ``tenant``'s sessions have used through this batcher (live object)."""
        usage = self._tenants.get(tenant)
        if usage is None:
            usage = self._tenants[tenant] = Usage()
        return usage

    def usage_by_tenant(self) -> dict[str, dict[str, Any]]:
        return {name: usage.to_dict() for name, usage in self._tenants.items()}

    def stats(self) -> BatcherStats:
        """The scheduler's state right now, for monitoring."""
        return BatcherStats(
            in_flight=self.scheduler.in_flight,
            max_in_flight=self.scheduler.max_in_flight,
            waiting=self.scheduler.waiting(),
            concurrency=self.concurrency,
            max_concurrent=self.max_concurrent,
            concurrency_cuts=self.limiter.cuts,
            lowest_concurrency=self.limiter.lowest,
            shared_in_flight=len(self._in_flight),
        )

    # -- running a batch -----------------------------------------------------------------

    async def run(
        self,
        session: SessionState,
        model: str,
        prompts: list[str],
        max_concurrent: int | None = None,
        *,
        on_result: Callable[[int, SubResult], None] | None = None,
    ) -> list[SubResult]:
        """Answer ``prompts`` in input order; a failed prompt fails alone.

        ``on_result(index, result)`` is called once for each prompt as it completes
        (a repeat of another prompt in the batch right after it), in the order they
        complete, on the event loop: it must neither block nor raise (an error in it
        cancels the batch and comes out of ``run``, in an ExceptionGroup when the
        batch is more than one wide).
        """
        total = len(prompts)
        results: list[SubResult | None] = [None] * total
        # Repeats inside a batch are answered once; the index of each prompt's first
        # occurrence leads its copies.
        copies: dict[int, list[int]] = {}
        if self.dedup:
            first: dict[str, int] = {}
            unique: list[int] = []
            for i, prompt in enumerate(prompts):
                j = first.setdefault(prompt, i)
                if j == i:
                    unique.append(i)
                else:
                    copies.setdefault(j, []).append(i)
        else:
            unique = list(range(total))
        tenant_limit = self.tenant_limits.get(session.tenant, self.tenant_max_concurrent)
        width = min(
            len(unique),
            max_concurrent or total,
            session.limits.max_concurrent,
            self.max_concurrent,
            tenant_limit or total,
        )
        batch = _Batch(
            self, session, model, total, next(self._numbers), unique=len(unique), width=width
        )
        busy_since = batch.busy_since
        session.event(
            "batch_start",
            batch=batch.number,
            model=model,
            size=total,
            unique=len(unique),
            max_concurrent=width,
        )
        queue = iter(unique)

        async def worker(w: int) -> None:
            for i in queue:
                busy_since[w] = time.monotonic()
                result = await self._one(batch, prompts[i])
                results[i] = result
                batch.finish(result, w)
                if on_result is not None:
                    on_result(i, result)
                for j in copies.get(i, ()):
                    results[j] = result
                    batch.count("dedup_hits")
                    batch.finish(result)
                    if on_result is not None:
                        on_result(j, result)

        cancelled = True
        try:
            if width <= 1:
                await worker(0)
            else:
                # asyncio's task group, not anyio's: at N = c = 100 there is a worker
                # per request, and anyio's per-task cancel scope and event cost about
                # 2% of the batch's wall time (bench/README.md). Cancellation from an
                # anyio scope still reaches every worker through this task.
                async with asyncio.TaskGroup() as tg:
                    for started in range(1, width + 1):
                        tg.create_task(worker(started - 1))
                        if started % _START_GROUP == 0:
                            await asyncio.sleep(0)
            cancelled = False
        finally:
            batch.end(cancelled)
        done: list[SubResult] = []
        for r in results:
            assert r is not None, "every prompt gets a result unless the run is cancelled"
            done.append(r)
        return done

    async def _one(self, batch: _Batch, prompt: str) -> SubResult:
        session = batch.session
        if session.tokens_exhausted():
            return self._budget_failure(session)
        messages = [{"role": "user", "content": prompt}]
        cache_key = None
        if self.cache is not None:
            cache_key = request_key(batch.model, messages, self.params)
            hit = await self.cache.get(cache_key)
            if hit is not None:
                batch.count("cache_hits")
                return SubResult(text=hit.text)
        key = (batch.model, prompt) if self.dedup else None
        while key is not None and (flight := self._in_flight.get(key)) is not None:
            shared = await flight.wait()
            if shared is not None:
                batch.count("dedup_hits")
                return self._result(shared, session)
            # The leader gave up for a reason of its own: call for ourselves.
        flight = self._in_flight.lead(key) if key is not None else None
        outcome: _Outcome | _BudgetSpent | None = None
        try:
            outcome = await self._attempts(batch, messages)
        finally:
            if flight is not None:
                shared_outcome = None if isinstance(outcome, _BudgetSpent) else outcome
                self._in_flight.land(key, flight, shared_outcome)
        if self.cache is not None and cache_key is not None and isinstance(outcome, ChatResult):
            try:
                await self.cache.put(cache_key, outcome)
            except OSError as exc:
                session.event("cache_error", error=str(exc)[:200])
        return self._result(outcome, session)

    async def _attempts(
        self, batch: _Batch, messages: list[dict[str, str]]
    ) -> ChatResult | ModelCallFailure | _BudgetSpent:
        """Call until it works, fails for good, or the budget is spent."""
        session, model = batch.session, batch.model
        started = time.monotonic()
        tries = 0
        scheduler = self.scheduler
        while True:
            # acquire/release, not the scheduler's ``slot()`` context manager: this
            # runs per request, and the generator-based manager was about 2 of the
            # batcher's 10 µs a call (instant client, 100 wide). The key is the run
            # tree's, so a root and its children take one session's turn.
            await scheduler.acquire(session.tenant, session.fair_key, session.limits.max_concurrent)
            try:
                if session.tokens_exhausted():
                    return _BUDGET_SPENT
                tries += 1
                epoch = self.limiter.epoch
                call_started = time.monotonic()
                try:
                    answer = await self.client.chat(
                        model, messages, timeout=self.call_timeout, **self.params
                    )
                except ModelCallFailure as exc:
                    failure = exc
                except Exception as exc:
                    # Not the provider's doing, but still this prompt's failure only.
                    failure = ModelCallFailure(
                        f"model call to {model!r} failed: {exc!r}", kind="error"
                    )
                else:
                    self.limiter.on_success()
                    self._count_call(batch, answer, time.monotonic() - call_started)
                    return answer
                self._count_seconds(batch, time.monotonic() - call_started)
            finally:
                scheduler.release(session.tenant, session.fair_key)
            if failure.kind == "rate_limit" and self.adaptive and self.limiter.on_overload(epoch):
                session.event("concurrency_cut", model=model, concurrency=self.concurrency)
            elapsed = time.monotonic() - started
            delay = self.retry.delay(tries, failure, elapsed, self._rng)
            if delay is None:
                return ModelCallFailure(
                    self.retry.gave_up(tries, failure, elapsed),
                    kind=failure.kind,
                    status=failure.status,
                    retry_after=failure.retry_after,
                )
            batch.count("retries")
            await anyio.sleep(delay)

    def _count_call(self, batch: _Batch, answer: ChatResult, seconds: float) -> None:
        batch.count("calls")
        batch.count("prompt_tokens", answer.prompt_tokens)
        batch.count("completion_tokens", answer.completion_tokens)
        self._count_seconds(batch, seconds)

    @staticmethod
    def _count_seconds(batch: _Batch, seconds: float) -> None:
        for usage in (batch.usage, batch.tenant_usage):
            usage.seconds += seconds

    def _global_limit(self) -> int:
        if not self.adaptive:
            return self.max_concurrent
        return self.limiter.current

    def _result(
        self, outcome: ChatResult | ModelCallFailure | _BudgetSpent, session: SessionState
    ) -> SubResult:
        if isinstance(outcome, ChatResult):
            return SubResult(text=outcome.text)
        if isinstance(outcome, ModelCallFailure):
            return SubResult(error=str(outcome), kind=outcome.kind)
        return self._budget_failure(session)

    @staticmethod
    def _budget_failure(session: SessionState) -> SubResult:
        session.refuse("tokens")
        return SubResult(error=session.budget_message(), kind="budget")
