"""The failures the proxy answers itself (each class with its status and JSON `error` code) and
the one place that turns them into answers: a description says what to do, never a secret."""

from __future__ import annotations

import json
import math

from aiohttp import web

METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"  # named in Allow and CORS preflights


class ProxyError(Exception):
    """A subclass declares its `status` and `code` as class keywords, or inherits its base's."""

    status = 500
    code = "internal_error"

    def __init_subclass__(cls, status: int | None = None, code: str | None = None) -> None:
        super().__init_subclass__()
        cls.status = status or cls.status
        cls.code = code or cls.code

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description

    def headers(self) -> dict[str, str]:
        return {}


class TokenError(ProxyError):
    """The proxy holds no usable token."""


class TokenRejected(TokenError, status=502, code="token_request_rejected"): ...


class TokenUnavailable(TokenError, status=503, code="token_unavailable"):
    def __init__(self, description: str, retry_after: float | None = None) -> None:
        super().__init__(description)
        self.retry_after = retry_after  # from the token endpoint's Retry-After, if it sent one

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after or 1)))}


def _kind(status: int, code: str) -> type[ProxyError]:
    """A plain ProxyError subclass, named for its code (bad_request: BadRequest)."""
    name = code.title().replace("_", "")
    return type(name, (ProxyError,), {"status": status, "code": code, "__module__": __name__})


UpstreamUnreachable = _kind(502, "upstream_unreachable")
UpstreamTimeout = _kind(504, "upstream_timeout")
RequestTooLarge = _kind(413, "request_too_large")
ClientTimeout = _kind(408, "client_timeout")
BadRequest = _kind(400, "bad_request")
AuthHostRefused = _kind(403, "auth_host_refused")
TargetNotAllowed = _kind(403, "target_not_allowed")
HostNotAllowed = _kind(403, "host_not_allowed")
OriginNotAllowed = _kind(403, "origin_not_allowed")
ClientNotAllowed = _kind(403, "client_not_allowed")


class BodyNotKept(ProxyError):
    """The request body could not be kept for a replay (a full disk): the proxy's own failure."""


class MethodNotAllowed(ProxyError, status=405, code="method_not_allowed"):
    def headers(self) -> dict[str, str]:
        return {"Allow": METHODS}


class RateLimited(ProxyError, status=429, code="rate_limited"):
    """The request would be held longer than --rate-limit-wait for the API's rate limit."""

    def __init__(self, description: str, retry_after: float) -> None:
        super().__init__(description)
        self.retry_after = retry_after  # seconds until the request would have left

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


def upstream_failure(exc: BaseException, upstream: str) -> ProxyError:
    """The gateway error for an aiohttp ClientError or a timeout before the answer's headers."""
    if isinstance(exc, TimeoutError):  # aiohttp's connect and read timeouts are TimeoutErrors
        return UpstreamTimeout(
            f"{upstream} did not answer in time; raise --upstream-timeout if the call is slow"
        )
    reason = type(exc).__name__
    return UpstreamUnreachable(
        f"{upstream} could not be reached ({reason}); check --api-base-url and the network"
    )


def error_response(error: ProxyError, request_id: str) -> web.Response:
    headers = {"Cache-Control": "no-store", "Content-Type": "application/json", **error.headers()}
    headers["X-Request-Id"] = request_id
    body = json.dumps({"error": error.code, "error_description": error.description})
    return web.Response(status=error.status, body=body.encode(), headers=headers)
