"""``GET /metrics``: the service in Prometheus' text format.

Counters and the latency histogram are counted as runs end on this replica; the
gauges (runs by status in the database, runs and sandboxes live here, the queues)
are read when scraped. Each app has its own registry, so several in one process
(tests) do not share counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from rlm.service.runs import Finished

#: Run latency buckets in seconds: RLM runs take from seconds to an hour.
_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Gauge("rlm_runs", "Runs in the database by status", ["status"], registry=r)
        self.finished = Counter(
            "rlm_runs_finished", "Runs this replica ended", ["status", "profile"], registry=r
        )
        self.sub_calls = Counter(
            "rlm_sub_calls", "Sub-calls of the runs this replica ended", ["tenant"], registry=r
        )
        self.tokens = Counter(
            "rlm_tokens", "Tokens of the runs this replica ended", ["tenant"], registry=r
        )
        self.latency = Histogram(
            "rlm_run_seconds",
            "Wall time of runs from start to end",
            ["profile"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.live_runs = Gauge("rlm_live_runs", "Runs in flight on this replica", registry=r)
        self.sandboxes = Gauge(
            "rlm_live_sandboxes", "Sandboxes of runs in flight on this replica", registry=r
        )
        self.queue = Gauge(
            "rlm_queue_depth",
            "Work waiting: runs not yet started, sub-calls waiting for a slot",
            ["queue"],
            registry=r,
        )
        self.sub_calls_in_flight = Gauge(
            "rlm_sub_calls_in_flight", "Sub-calls at the provider now", registry=r
        )
        self.pool_ready = Gauge(
            "rlm_pool_ready_containers", "Warm sandbox containers ready", registry=r
        )
        self.engine_healthy = Gauge(
            "rlm_engine_healthy",
            "1 while a Docker engine passes its health checks, 0 while drained",
            ["engine"],
            registry=r,
        )
        self.engine_sandboxes = Gauge(
            "rlm_engine_sandboxes",
            "Sandboxes this replica has live on each Docker engine",
            ["engine"],
            registry=r,
        )

    def run_finished(self, finished: Finished) -> None:
        record = finished.record
        self.finished.labels(record.status, record.profile).inc()
        self.sub_calls.labels(record.tenant).inc(finished.sub_calls)
        self.tokens.labels(record.tenant).inc(record.total_tokens or 0)
        self.latency.labels(record.profile).observe(finished.seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
