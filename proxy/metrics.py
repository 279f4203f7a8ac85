"""Prometheus metrics of one proxy process, served at /-/metrics."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "aborted")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
HELD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.in_flight = 0  # requests being handled, kept by the request handler
        Gauge(
            "agentsync_proxy_requests_in_flight", "Requests being handled.", registry=r
        ).set_function(lambda: self.in_flight)
        self.requests = Counter(
            "agentsync_proxy_requests",
            "Requests answered, by method and status class.",
            ["method", "status_class"],
            registry=r,
        )
        # Every series from the start, at 0: a rate over a series that appears late loses its
        # first increase.
        for method, status_class in itertools.product((*KNOWN_METHODS, "OTHER"), STATUS_CLASSES):
            self.requests.labels(method, status_class)
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
        self.request_body_bytes = Counter(
            "agentsync_proxy_request_body_bytes",
            "Request body bytes read from clients.",
            registry=r,
        )
        self.response_body_bytes = Counter(
            "agentsync_proxy_response_body_bytes",
            "Response body bytes sent to clients.",
            registry=r,
        )
        self.replays = Counter(
            "agentsync_proxy_replays",
            "Requests replayed, by the upstream status that caused the replay (401: token"
            " renewed; 429: held for the rate limit) and by the replay's outcome.",
            ["outcome", "reason"],
            registry=r,
        )
        self.errors = Counter(
            "agentsync_proxy_errors",
            "Answers the proxy gave itself, by error code.",
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
        self.rate_limit_held = Counter(
            "agentsync_proxy_rate_limit_held",
            "Requests held before being sent upstream, to stay within the API's rate limit.",
            registry=r,
        )
        self.rate_limit_held_seconds = Histogram(
            "agentsync_proxy_rate_limit_held_seconds",
            "How long requests were held for the API's rate limit.",
            buckets=HELD_BUCKETS,
            registry=r,
        )
        self.rate_limited_answers = Counter(
            "agentsync_proxy_rate_limited",
            "Requests the proxy answered 429 rate_limited without sending them: they would have"
            " been held longer than --rate-limit-wait.",
            registry=r,
        )
        self.upstream_rate_limited = Counter(
            "agentsync_proxy_upstream_rate_limited",
            "429 answers from the upstream API.",
            registry=r,
        )
        self.rate_limit_remaining = Gauge(
            "agentsync_proxy_rate_limit_remaining",
            "The ratelimit-remaining the upstream last announced (NaN until it announces one).",
            registry=r,
        )
        self.rate_limit_remaining.set(math.nan)
        self.redis_up = Gauge(
            "agentsync_proxy_redis_up",
            "1 while the fleet's Redis answers, 0 while it does not (NaN until the first call,"
            " and always without --redis-url).",
            registry=r,
        )
        self.redis_up.set(math.nan)
        self.links = Counter(
            "agentsync_proxy_links_rewritten",
            "Answers whose links were rewritten to lead back through the proxy.",
            registry=r,
        )

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
        self.requests.labels(method, status_class).inc()
        self.request_duration.observe(seconds)
        self.request_body_bytes.inc(bytes_in)
        self.response_body_bytes.inc(bytes_out)

    def replayed(self, reason: int, outcome: str) -> None:
        """A request sent again after an upstream `reason` (401 or 429); `outcome` is success,
        rejected (the same status again) or failed (no answer)."""
        self.replays.labels(outcome, str(reason)).inc()

    def held(self, seconds: float) -> None:
        """A request was held `seconds` for the API's rate limit before it was sent."""
        self.rate_limit_held.inc()
        self.rate_limit_held_seconds.observe(seconds)

    def rate_limited(self) -> None:
        """The proxy answered 429 rate_limited itself."""
        self.rate_limited_answers.inc()

    def upstream_429(self) -> None:
        self.upstream_rate_limited.inc()

    def announced(self, remaining: float) -> None:
        """The upstream announced `ratelimit-remaining: remaining`."""
        self.rate_limit_remaining.set(remaining)

    def redis(self, up: bool) -> None:
        """Whether the fleet's Redis answered its last call."""
        self.redis_up.set(1 if up else 0)

    def links_rewritten(self) -> None:
        self.links.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
