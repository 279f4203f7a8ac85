"""Prometheus metrics of one proxy process, served at /-/metrics.

The series every request updates are plain numbers, exposed through a collector exactly as
prometheus_client's own counters and histograms would be: prometheus_client takes a lock for
each update, which cost 3 us a request (3% of the proxy's CPU), and this process updates its
metrics from its event loop's thread only."""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "aborted")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class LatencyHistogram:
    """A histogram without labels, observed without a lock."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = [float(bound) for bound in buckets] + [math.inf]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._created = time.time()

    def observe(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation)
        cumulative = zip(self._bounds, itertools.accumulate(self._counts), strict=True)
        buckets = [("+Inf" if b == math.inf else repr(b), float(n)) for b, n in cumulative]
        family.add_metric([], buckets, self._sum)
        family.add_sample(self.name + "_created", {}, self._created)
        return family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.in_flight = 0  # requests being handled
        self.bytes_in = self.bytes_out = 0
        self.request_duration = LatencyHistogram(
            "agentsync_proxy_request_duration_seconds",
            "Time from a request's arrival to the end of its answer.",
            LATENCY_BUCKETS,
        )
        self.upstream_duration = LatencyHistogram(
            "agentsync_proxy_upstream_duration_seconds",
            "Time from sending a request upstream to its response headers, replays included.",
            LATENCY_BUCKETS,
        )
        self._answers = dict.fromkeys(
            itertools.product((*KNOWN_METHODS, "OTHER"), STATUS_CLASSES), 0
        )
        self._created = time.time()
        self.registry.register(_PerRequest(self))
        r = self.registry
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
        self._answers[method, status_class] += 1
        self.request_duration.observe(seconds)
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out

    def per_request_families(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "agentsync_proxy_requests",
            "Requests answered, by method and status class.",
            labels=["method", "status_class"],
        )
        for labels, count in self._answers.items():
            requests.add_metric(labels, count, created=self._created)
        yield requests
        yield self.request_duration.family()
        yield self.upstream_duration.family()
        yield GaugeMetricFamily(
            "agentsync_proxy_requests_in_flight", "Requests being handled.", self.in_flight
        )
        for name, documentation, value in (
            ("request_body_bytes", "Request body bytes read from clients.", self.bytes_in),
            ("response_body_bytes", "Response body bytes sent to clients.", self.bytes_out),
        ):
            yield CounterMetricFamily(
                f"agentsync_proxy_{name}", documentation, value, created=self._created
            )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PerRequest(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.per_request_families()
