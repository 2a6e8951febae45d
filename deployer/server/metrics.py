"""The server's /metrics (prometheus-client): releases by app, environment and result, their durations, and the
releases in flight. One registry per server, so tests and several servers in one process do not mix."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only double what a scrape already knows

# a release takes seconds to many minutes: a canary with 4 steps of 1m is 4m and more
_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.releases = Counter(
            "deployer_releases",
            "Releases that ended, by app, environment and result (released, rolled-back, failed, dry-run).",
            ["app", "environment", "result"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "deployer_release_duration_seconds",
            "Push to verdict, by app, environment and result.",
            ["app", "environment", "result"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "deployer_releases_in_flight", "Releases running now.", ["app", "environment"], registry=self.registry
        )
        self.notifications_failed = Counter(
            "deployer_notifications_failed",
            "Notifications a target did not take after their retries, by target.",
            ["target"],
            registry=self.registry,
        )
        self.pushes = Counter(
            "deployer_pushes",
            "Pushes received, by app and result (accepted, rejected).",
            ["app", "result"],
            registry=self.registry,
        )

        self.auth_failures = Counter(
            "deployer_auth_failures",
            "Wrong tokens sent over HTTP: `wrong` while an address's failures are free, `throttled` once each "
            "earns a wait.",
            ["result"],
            registry=self.registry,
        )

    def ended(self, *, app: str, environment: str, result: str, seconds: float) -> None:
        self.releases.labels(app, environment, result).inc()
        self.duration.labels(app, environment, result).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
