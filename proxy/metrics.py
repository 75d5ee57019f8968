"""Prometheus metrics, with the names and labels of the contract."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

disable_created_metrics()
CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class Metrics:
    """The proxy's metrics in a registry of their own (one per server)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "proxy_requests", "Requests answered", ["route", "upstream", "status"], registry=r
        )
        self.duration = Histogram(
            "proxy_request_duration_seconds",
            "Time from request to the end of the response",
            ["route"],
            buckets=BUCKETS,
            registry=r,
        )
        self.response_bytes = Counter(
            "proxy_response_bytes", "Response body bytes sent to clients", ["route"], registry=r
        )
        self.upstream_errors = Counter(
            "proxy_upstream_errors",
            "Failures talking to upstreams",
            ["upstream", "kind"],
            registry=r,
        )
        self.transform_errors = Counter(
            "proxy_transform_errors", "Transforms that failed mid-body", ["route"], registry=r
        )
        self.redactions = Counter(
            "proxy_redactions", "Matches replaced by redact", ["route"], registry=r
        )
        self.active_streams = Gauge(
            "proxy_active_streams", "Requests in flight", registry=r, multiprocess_mode="livesum"
        )
        self.target_up = Gauge(
            "proxy_upstream_target_up",
            "1 while a target takes traffic, 0 while ejected or failing its health check",
            ["upstream", "target"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        self.refresh: Callable[[], None] | None = None  # brings state gauges up to date

    def set_target(self, upstream: str, target: str, up: bool) -> None:
        self.target_up.labels(upstream, target).set(1 if up else 0)

    def request_done(
        self, route: str, upstream: str, status: int, seconds: float, body_bytes: int
    ) -> None:
        children = self._children.get((route, upstream, status))
        if children is None:
            children = self._children[(route, upstream, status)] = (
                self.requests.labels(route, upstream, str(status)),
                self.duration.labels(route),
                self.response_bytes.labels(route),
            )
        requests, duration, response_bytes = children
        requests.inc()
        duration.observe(seconds)
        if body_bytes:
            response_bytes.inc(body_bytes)

    def exposition(self) -> bytes:
        if self.refresh is not None:
            self.refresh()
        path = os.environ.get(MULTIPROC_ENV)
        if path:
            # Several worker processes: add up what each wrote to the shared directory.
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=path)
            return generate_latest(registry)
        return generate_latest(self.registry)
