"""The record of one forwarded request: its access log line and its metrics."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from proxy.metrics import Metrics

log = structlog.get_logger("proxy.access")
# A finished request's access line and metrics wait at most this long (seconds) for a moment in
# which the proxy would only wait: the next request's round trip to the upstream.
WRITE_WITHIN = 0.005
# A query parameter: its name and value, or a value without a name (masked whole).
_QUERY_PART = re.compile(r"([^&=]*=)[^&]*|[^&]+")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")  # scheme://user:password@
# The Contracting API's scopes by method, from AgentSync's public docs.
CONTRACTING_SCOPES = {
    **dict.fromkeys(("GET", "HEAD"), "rino_api_agency_read"),
    **dict.fromkeys(("POST", "PUT", "PATCH"), "rino_api_agency_write"),
    "DELETE": "rino_api_agency_delete",
}


@dataclass(slots=True)
class Exchange:
    request_id: str
    method: str
    target: str
    client: str | None
    started: float = field(default_factory=time.perf_counter)
    ended: float = 0.0  # when its answer was given, if its line waits (see AccessLog)
    status: int = 0
    upstream_status: int | None = None
    upstream_seconds: float | None = None
    replayed: bool = False
    replay_reason: int = 401  # the upstream status that caused the (last) replay
    held_seconds: float = 0.0  # held for the API's rate limit
    links_rewritten: bool = False
    bytes_in: int = 0
    bytes_out: int = 0
    error: str | None = None

    @classmethod
    def of(cls, request: web.Request) -> Exchange:
        """The record of `request`, with its X-Request-Id or a new one."""
        request_id = request.headers.get("X-Request-Id") or os.urandom(16).hex()
        return cls(request_id, request.method, request.raw_path, request.remote)

    def finish(self, metrics: Metrics, log_query: bool) -> None:
        seconds = (self.ended or time.perf_counter()) - self.started
        metrics.answered(self.method, self.status, seconds, self.bytes_in, self.bytes_out)
        upstream = self.upstream_seconds
        if upstream is not None:
            metrics.upstream_duration.observe(upstream)
        if self.links_rewritten:
            metrics.links_rewritten()
        if self.replayed:  # failed: the replay got no answer (the upstream unreachable or slow)
            status = self.upstream_status
            outcome = "rejected" if status == self.replay_reason else "success"
            metrics.replayed(self.replay_reason, "failed" if status is None else outcome)
        if self.error is not None:
            metrics.errors.labels(self.error).inc()
        log.info(
            "request",
            request_id=self.request_id,
            method=self.method,
            path=logged_path(self.target, log_query),
            status=self.status,
            upstream_status=self.upstream_status,
            duration_ms=round(seconds * 1000, 2),
            upstream_ms=None if upstream is None else round(upstream * 1000, 2),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            replayed=self.replayed,
            held_ms=round(self.held_seconds * 1000, 2),
            client=self.client,
            **({"error": self.error} if self.error else {}),
        )

    def scope_hint(self, body_start: bytes) -> None:
        """Of a 403: 'Policy evaluation failed' is how AgentSync refuses a token without a scope."""
        if b"Policy evaluation failed" not in body_start:
            return
        scope = CONTRACTING_SCOPES.get(self.method)
        log.warning(
            "scope_missing",
            request_id=self.request_id,
            hint=(
                f"AgentSync refused the call for lack of a scope: add {scope or 'the scope'}"
                " to AGENTSYNC_SCOPE (--scope), if it is granted to the client, and restart"
            ),
        )


def logged_path(target: str, log_query: bool) -> str:
    """The request target as an access line shows it: the user and password of an absolute
    target masked, and query values unless `log_query`."""
    if not target.startswith("/"):  # absolute form, refused unless it names the API's host
        target = _USERINFO.sub(r"\1***@", target, count=1)
    if log_query or "?" not in target:
        return target
    # Query values are often personal data (NPNs, names), or a credential.
    path, _, query = target.partition("?")
    return path + "?" + _QUERY_PART.sub(r"\1***", query)


class AccessLog:
    """Finished requests, waiting for their access line and metrics. These are written while
    the next request is away at the upstream (`write_soon`), before metrics are scraped, at
    shutdown, or WRITE_WITHIN after the request at the latest: at one connection, writing them
    as each answer leaves would delay the next request by as much."""

    def __init__(self, metrics: Metrics, log_query: bool) -> None:
        self._metrics = metrics
        self._log_query = log_query
        self._waiting: deque[Exchange] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._written = asyncio.Event()
        self._written.set()

    def begin(self) -> None:
        """A request is being handled: in flight until its line is written."""
        self._metrics.in_flight += 1

    def add(self, exchange: Exchange) -> None:
        """A request whose answer has left (or failed); it counts as in flight until written."""
        exchange.ended = time.perf_counter()
        if not self._waiting:
            self._timer = asyncio.get_running_loop().call_later(WRITE_WITHIN, self.write)
            self._written.clear()
        self._waiting.append(exchange)

    def write_soon(self) -> None:
        """Write the waiting lines once the running task waits (for the upstream)."""
        if self._waiting:
            asyncio.get_running_loop().call_soon(self.write)

    def write(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            self._metrics.in_flight -= 1
            self._waiting.popleft().finish(self._metrics, self._log_query)
        self._written.set()

    async def written(self) -> None:
        """Return once every finished request's line is written."""
        await self._written.wait()
