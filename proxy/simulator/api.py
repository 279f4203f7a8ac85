"""What every simulated API call goes through: token, rate-limit and scope checks, error bodies,
counting."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import hdrs, web

from .api_rate_limit import Quota
from .state import SIMULATOR_STATE, SimulatorState
from .token_endpoint import TOKEN_PATHS
from .tokens import IssuedToken

CONTROL_PREFIX = "/_simulator/"
CONTRACTING_PREFIX = "/contracting/"
READ_SCOPE = "rino_api_agency_read"
WRITE_SCOPE = "rino_api_agency_write"
DELETE_SCOPE = "rino_api_agency_delete"
# One challenge for every 401, a missing token included, so clients can key renewal on it.
INVALID_TOKEN_CHALLENGE = 'Bearer error="invalid_token"'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An API refusal, answered with AgentSync's `{timestamp, status, error, message, path}`."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


def is_api_path(path: str) -> bool:
    return path not in TOKEN_PATHS and not path.startswith(CONTROL_PREFIX)


def required_scope(method: str) -> str:
    if method == hdrs.METH_DELETE:
        return DELETE_SCOPE
    if method in (hdrs.METH_GET, hdrs.METH_HEAD, hdrs.METH_OPTIONS):
        return READ_SCOPE
    return WRITE_SCOPE


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate, rate-limit, authorise, run and count every API call; other paths pass
    through. Only calls with a valid token count against the limit and get its headers."""
    if not is_api_path(request.path):
        return await handler(request)
    state = request.app[SIMULATOR_STATE]
    quota: Quota | None = None
    try:
        issued = _authenticate(request, state)
        quota = state.api_limiter.take(issued.client_id, state.api_requests_per_minute)
        if quota.exceeded:
            raise ApiError(
                429,
                "Too Many Requests",
                f"API rate limit of {quota.limit} requests per minute exceeded;"
                f" retry in {quota.reset} seconds",
            )
        _authorise(request, issued)
        response = await handler(request)
    except ApiError as exc:
        response = api_error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = exc.reason.lower().replace(" ", "_")
        response = api_error_response(request, ApiError(exc.status, error, exc.reason))
        if hdrs.ALLOW in exc.headers:
            response.headers[hdrs.ALLOW] = exc.headers[hdrs.ALLOW]
    if quota is not None:
        response.headers.update(quota.headers())
        if quota.exceeded:
            response.headers[hdrs.RETRY_AFTER] = str(quota.reset)
    state.api_calls[str(response.status)] += 1
    return response


def _authenticate(request: web.Request, state: SimulatorState) -> IssuedToken:
    scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "invalid_token", "A bearer access token is required")
    issued = state.tokens.find(token)
    if issued is None:
        raise ApiError(401, "invalid_token", "The access token is invalid, expired or revoked")
    return issued


def _authorise(request: web.Request, issued: IssuedToken) -> None:
    needed = required_scope(request.method)
    if request.path.startswith(CONTRACTING_PREFIX) and needed not in issued.scopes:
        raise ApiError(403, "access_denied", "Policy evaluation failed")


def api_error_response(request: web.Request, exc: ApiError) -> web.Response:
    # Wall-clock time, not the simulator's clock, which may be monotonic or a test's.
    moment = datetime.now(UTC)
    body = {
        "timestamp": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "status": exc.status,
        "error": exc.error,
        "message": exc.message,
        "path": request.path,
    }
    headers = {hdrs.WWW_AUTHENTICATE: INVALID_TOKEN_CHALLENGE} if exc.status == 401 else None
    return web.json_response(body, status=exc.status, headers=headers)


def natural(raw: str) -> int | None:
    """A non-negative decimal of sane length, or None."""
    # int() alone would also accept ' 1', '1_0', non-ASCII digits and very long numbers.
    if raw.isascii() and raw.isdigit() and len(raw) <= 9:
        return int(raw)
    return None


def query_int(request: web.Request, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    value = natural(raw)
    if value is None or not minimum <= value <= maximum:
        raise ApiError(
            400, "bad_request", f"Query parameter '{name}' must be between {minimum} and {maximum}"
        )
    return value
