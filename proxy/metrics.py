"""Prometheus metrics of one proxy process, served at /-/metrics."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

NAMESPACE = "agentsync_proxy"  # the prefix of every metric's name
KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "aborted")
LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
HELD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """A metric of one series is reported by its own method (`rate_limited` is a counter's inc)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()

        def counter(name: str, text: str, *labels: str) -> Counter:
            return Counter(name, text, labels, namespace=NAMESPACE, registry=r)

        def histogram(name: str, text: str, buckets: Sequence[float] = LATENCY) -> Histogram:
            return Histogram(name, text, buckets=buckets, namespace=NAMESPACE, registry=r)

        def gauge(name: str, text: str) -> Gauge:
            return Gauge(name, text, namespace=NAMESPACE, registry=r)

        self.in_flight = 0  # requests being handled, kept by AccessLog
        gauge("requests_in_flight", "Requests being handled.").set_function(lambda: self.in_flight)
        requests = counter(
            "requests", "Requests answered, by method and status class.", "method", "status_class"
        )
        # Every series from the start, at 0: a rate over a series that appears late loses its
        # first increase.
        self._requests = {
            key: requests.labels(*key)
            for key in itertools.product((*KNOWN_METHODS, "OTHER"), STATUS_CLASSES)
        }
        self.request_duration = histogram(
            "request_duration_seconds", "Time from a request's arrival to the end of its answer."
        )
        self.upstream_duration = histogram(
            "upstream_duration_seconds",
            "Time from sending a request upstream to its response headers, replays included.",
        )
        self._bytes_in = counter("request_body_bytes", "Request body bytes read from clients.").inc
        self._bytes_out = counter("response_body_bytes", "Response body bytes sent to clients.").inc
        self.replays = counter(
            "replays",
            "Requests replayed, by the upstream status that caused the replay (401: token"
            " renewed; 429: held for the rate limit) and by the replay's outcome.",
            "outcome",
            "reason",
        )
        self.errors = counter("errors", "Answers the proxy gave itself, by error code.", "error")
        self.token_requests = counter(
            "token_requests", "Token requests sent to the token endpoint, by outcome.", "outcome"
        )
        self.token_request_duration = histogram(
            "token_request_duration_seconds", "Token endpoint latency."
        )
        self.track_token_expiry = gauge(
            "token_expires_in_seconds",
            "Seconds until the current token expires (0 without a valid token).",
        ).set_function
        self.rate_limit_held = counter(
            "rate_limit_held",
            "Requests held before being sent upstream, to stay within the API's rate limit.",
        )
        self.rate_limit_held_seconds = histogram(
            "rate_limit_held_seconds",
            "How long requests were held for the API's rate limit.",
            HELD_BUCKETS,
        )
        self.rate_limited = counter(  # the proxy answered 429 rate_limited itself
            "rate_limited",
            "Requests the proxy answered 429 rate_limited without sending them: they would have"
            " been held longer than --rate-limit-wait.",
        ).inc
        self.upstream_429 = counter(
            "upstream_rate_limited", "429 answers from the upstream API."
        ).inc
        remaining = gauge(
            "rate_limit_remaining",
            "The ratelimit-remaining the upstream last announced (NaN until it announces one).",
        )
        remaining.set(math.nan)
        self.announced = remaining.set  # the upstream announced `ratelimit-remaining: n`
        redis_up = gauge(
            "redis_up",
            "1 while the fleet's Redis answers, 0 while it does not (NaN until the first call,"
            " and always without --redis-url).",
        )
        redis_up.set(math.nan)
        self.redis = redis_up.set  # whether the fleet's Redis answered its last call
        self.links_rewritten = counter(
            "links_rewritten", "Answers whose links were rewritten to lead back through the proxy."
        ).inc

    def token_attempt(self, outcome: str, seconds: float) -> None:
        self.token_requests.labels(outcome).inc()
        self.token_request_duration.observe(seconds)

    def answered(
        self, method: str, status: int, seconds: float, bytes_in: int, bytes_out: int
    ) -> None:
        method = method if method in KNOWN_METHODS else "OTHER"
        status_class = f"{status // 100}xx" if 100 <= status < 600 else "aborted"
        self._requests[method, status_class].inc()
        self.request_duration.observe(seconds)
        self._bytes_in(bytes_in)
        self._bytes_out(bytes_out)

    def replayed(self, reason: int, outcome: str) -> None:
        """A request sent again after an upstream `reason` (401 or 429); `outcome` is success,
        rejected (the same status again) or failed (no answer)."""
        self.replays.labels(outcome, str(reason)).inc()

    def held(self, seconds: float) -> None:
        """A request was held `seconds` for the API's rate limit before it was sent."""
        self.rate_limit_held.inc()
        self.rate_limit_held_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
