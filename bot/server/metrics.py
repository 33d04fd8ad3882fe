"""Prometheus metrics, in a registry of the app's own so several apps (tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
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
