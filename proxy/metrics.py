"""Prometheus metrics of one proxy process, served at /-/metrics."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "agentsync_proxy_requests",
            "Requests answered, by method and status class.",
            ["method", "status_class"],
            registry=r,
        )
        self.request_duration = Histogram(
            "agentsync_proxy_request_duration_seconds",
            "Time from a request's arrival to the end of its answer.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "agentsync_proxy_upstream_duration_seconds",
            "Time from sending a request upstream to its response headers, replays included.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "agentsync_proxy_requests_in_flight", "Requests being handled.", registry=r
        )
        self.bytes_in = Counter(
            "agentsync_proxy_request_body_bytes",
            "Request body bytes read from clients.",
            registry=r,
        )
        self.bytes_out = Counter(
            "agentsync_proxy_response_body_bytes",
            "Response body bytes sent to clients.",
            registry=r,
        )
        self.replays = Counter(
            "agentsync_proxy_replays",
            "Requests replayed after an upstream 401, by the replay's outcome.",
            ["outcome"],
            registry=r,
        )
        self.errors = Counter(
            "agentsync_proxy_errors",
            "Answers the proxy gave itself, by error code (DESIGN.md section 7).",
            ["error"],
            registry=r,
        )
        self.token_requests = Counter(
            "agentsync_proxy_token_requests",
            "Token requests sent to the token endpoint, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.token_request_duration = Histogram(
            "agentsync_proxy_token_request_duration_seconds",
            "Token endpoint latency.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.token_expiry = Gauge(
            "agentsync_proxy_token_expires_in_seconds",
            "Seconds until the current token expires (0 without a valid token).",
            registry=r,
        )
        self._status_children = {
            (method, status_class): self.requests.labels(method, status_class)
            for method in (*KNOWN_METHODS, "OTHER")
            for status_class in ("1xx", "2xx", "3xx", "4xx", "5xx", "aborted")
        }

    def track_token_expiry(self, seconds_left: Callable[[], float]) -> None:
        self.token_expiry.set_function(seconds_left)

    def token_attempt(self, outcome: str, seconds: float) -> None:
        self.token_requests.labels(outcome).inc()
        self.token_request_duration.observe(seconds)

    def answered(
        self, method: str, status: int, seconds: float, bytes_in: int, bytes_out: int
    ) -> None:
        method = method if method in KNOWN_METHODS else "OTHER"
        status_class = f"{status // 100}xx" if 100 <= status < 600 else "aborted"
        self._status_children[method, status_class].inc()
        self.request_duration.observe(seconds)
        if bytes_in:
            self.bytes_in.inc(bytes_in)
        if bytes_out:
            self.bytes_out.inc(bytes_out)

    def render(self) -> bytes:
        return generate_latest(self.registry)
