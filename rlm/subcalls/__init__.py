"""Sub-calls: how every ``llm_query`` / ``llm_batch`` from model code reaches a model.

:class:`~rlm.subcalls.batcher.Batcher` runs each batch, taking slots from the
:class:`~rlm.subcalls.fairness.FairScheduler` (global, tenant and session limits,
round-robin), following 429s with :class:`~rlm.subcalls.limiter.AdaptiveLimit`,
retrying with :class:`~rlm.subcalls.retry.RetryPolicy`, sharing identical calls in
flight (:mod:`~rlm.subcalls.dedup`) and, when given one, answering from a
:mod:`~rlm.subcalls.cache`.
"""

from rlm.subcalls.batcher import Batcher, BatcherStats, SubResult
from rlm.subcalls.cache import DiskCache, MemoryCache, ResponseCache
from rlm.subcalls.retry import RetryPolicy

__all__ = [
    "Batcher",
    "BatcherStats",
    "DiskCache",
    "MemoryCache",
    "ResponseCache",
    "RetryPolicy",
    "SubResult",
]
