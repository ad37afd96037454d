"""Metrics every service exports under the same names, so one set of alerting rules fits all.

Service-specific metrics live beside their code; these are the ones the operator's rules
(``deploy/k8s/base/alerts.yaml``) and dashboard read across services.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = ["CONSUMER_LAG", "DEAD_LETTERS", "DEPENDENCY_UP", "LOOP_RESTARTS", "READY"]

CONSUMER_LAG = Gauge(
    "blametrail_consumer_lag",
    "Records between a consumer's position and the end of the partition",
    ["group", "topic", "partition"],
)
DEPENDENCY_UP = Gauge(
    "blametrail_dependency_up",
    "1 while the dependency answers this process, 0 while it is away",
    ["dependency"],
)
LOOP_RESTARTS = Counter(
    "blametrail_loop_restarts_total",
    "Long-running loops restarted after an error (with backoff)",
    ["loop"],
)
DEAD_LETTERS = Counter(
    "blametrail_dead_letters_total", "Records sent to a dead-letter topic", ["topic"]
)
READY = Gauge("blametrail_ready", "1 while every readiness check passes (as /readyz would answer)")
