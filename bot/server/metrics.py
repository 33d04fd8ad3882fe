"""Prometheus metrics, in a registry of the app's own so several apps (tests) never collide."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class Metrics:
    def __init__(self) -> None:
        self._warmups_counted = False
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "loopgate_webhook_deliveries",
            "Webhook deliveries accepted, by event.",
            ["event"],
            registry=self.registry,
        )
        self.redeliveries = Counter(
            "loopgate_webhook_redeliveries", "Deliveries seen before (no-ops).", registry=self.registry
        )
        self.rejected = Counter(
            "loopgate_webhook_rejected", "Deliveries refused, by reason.", ["reason"], registry=self.registry
        )
        self.runs = Gauge("loopgate_runs", "Runs by verdict.", ["verdict"], registry=self.registry)
        self.queue_depth = Gauge("loopgate_queue_depth", "Runs waiting for a worker.", registry=self.registry)
        self.stage_seconds = Histogram(
            "loopgate_stage_duration_seconds",
            "How long each pipeline stage took.",
            ["stage"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )

    def count_warmups(self, outcomes: Callable[[], dict[str, int]]) -> None:
        """`loopgate_baseline_warmups_total{outcome}` (ready, failed, skipped, superseded), read from
        the store at each scrape: warm-ups are run by the workers, which share the database, not this
        registry, and the totals survive restarts. Like `loopgate_runs`, every replica reports the
        same totals. Registered once per registry."""
        if not self._warmups_counted:
            self.registry.register(_WarmupCounter(outcomes))
            self._warmups_counted = True


class _WarmupCounter(Collector):
    def __init__(self, outcomes: Callable[[], dict[str, int]]) -> None:
        self._outcomes = outcomes

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "loopgate_baseline_warmups", "Baseline warm-ups by outcome.", labels=["outcome"]
        )
        for outcome, count in sorted(self._outcomes().items()):
            family.add_metric([outcome], count)
        yield family
