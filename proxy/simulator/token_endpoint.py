"""The OAuth 2.0 client-credentials token endpoint, as AgentSync's public docs describe it."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import secrets
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from aiohttp import hdrs, web
from multidict import MultiMapping

from .state import SIMULATOR_STATE, Fault, SimulatorState

TOKEN_PATHS = ("/oauth2/token", "/oauth/token")
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# RFC 6749 5.1: token responses must not be cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """A refusal answered with the RFC 6749 5.2 body `{"error", "error_description"}`."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str = field(repr=False)
    via_basic: bool = False


async def token_endpoint(request: web.Request) -> web.Response:
    """Issue a token, or refuse; a queued fault takes precedence over everything else."""
    state = request.app[SIMULATOR_STATE]
    state.token_requests += 1
    fault = state.take_fault()
    if fault is not None:
        await asyncio.sleep(fault.delay)
        return _fault_response(fault)
    try:
        return await _grant(request, state)
    except OAuthError as exc:
        body = {"error": exc.error, "error_description": exc.description}
        return web.json_response(body, status=exc.status, headers=NO_STORE)


async def _grant(request: web.Request, state: SimulatorState) -> web.Response:
    if request.content_type != FORM_CONTENT_TYPE:
        raise OAuthError("invalid_request", f"Content-Type must be {FORM_CONTENT_TYPE}")
    try:
        form = await request.post()
    except ValueError as exc:
        raise OAuthError("invalid_request", "The form body could not be parsed") from exc
    credentials = _read_credentials(request, form)

    # Counted before the credentials are checked, so failed attempts use up the budget too.
    retry_after = state.rate_limiter.acquire(credentials.client_id, state.token_requests_per_minute)
    if retry_after is not None:
        return _rate_limited(retry_after)

    if _single(form, "grant_type") != "client_credentials":
        raise OAuthError("unsupported_grant_type", "grant_type must be client_credentials")
    if not _credentials_match(credentials, state):
        return _invalid_client(credentials.via_basic)
    scopes = _granted_scopes(_single(form, "scope"), state.config.scopes)

    token = state.tokens.issue(credentials.client_id, frozenset(scopes), state.token_lifetime)
    state.tokens_issued += 1
    lifetime = state.token_lifetime
    body = {
        "token_type": "Bearer",
        "expires_in": int(lifetime) if lifetime.is_integer() else lifetime,
        "access_token": token,
        "scope": " ".join(scopes),
    }
    return web.json_response(body, headers=NO_STORE)


def _single(form: MultiMapping[object], name: str) -> str | None:
    values = form.getall(name, [])
    if not values:
        return None
    # RFC 6749 3.2: request parameters must not be included more than once.
    if len(values) > 1 or not isinstance(values[0], str):
        raise OAuthError("invalid_request", f"Parameter {name} must be given once")
    return values[0]


def _read_credentials(request: web.Request, form: MultiMapping[object]) -> Credentials:
    """Client credentials from HTTP Basic (RFC 6749 2.3.1) or from the form body."""
    scheme, _, encoded = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme.lower() != "basic":
        client_id = _single(form, "client_id") or ""
        return Credentials(client_id, _single(form, "client_secret") or "", via_basic=False)
    if _single(form, "client_secret") is not None:
        raise OAuthError(
            "invalid_request",
            "Client credentials were sent both in the Authorization header and in the body",
        )
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return Credentials("", "", via_basic=True)
    client_id, _, client_secret = decoded.partition(":")
    # Both halves are form-urlencoded before being joined, so a ':' in the id survives.
    return Credentials(unquote_plus(client_id), unquote_plus(client_secret), via_basic=True)


def _credentials_match(credentials: Credentials, state: SimulatorState) -> bool:
    id_ok = hmac.compare_digest(credentials.client_id.encode(), state.config.client_id.encode())
    secret_ok = hmac.compare_digest(
        credentials.client_secret.encode(), state.config.client_secret.encode()
    )
    return id_ok and secret_ok


def _granted_scopes(requested: str | None, granted: tuple[str, ...]) -> list[str]:
    """The requested scopes if all are granted; no request means every granted scope."""
    names = list(dict.fromkeys((requested or "").split()))
    if not names:
        return list(granted)
    refused = [name for name in names if name not in granted]
    if refused:
        raise OAuthError(
            "invalid_scope",
            f"Scope not granted to this client: {' '.join(refused)}",
        )
    return names


def _okta_error(code: str, summary: str) -> dict[str, object]:
    """The error body shape of AgentSync's authorization server."""
    return {
        "errorCode": code,
        "errorSummary": summary,
        "errorLink": code,
        "errorId": "oae" + secrets.token_urlsafe(16),
        "errorCauses": [],
    }


def _invalid_client(via_basic: bool) -> web.Response:
    body = _okta_error("invalid_client", "Invalid value for 'client_id' parameter.")
    headers = dict(NO_STORE)
    if via_basic:
        # RFC 6749 5.2: a failed Basic authentication is challenged with the same scheme.
        headers[hdrs.WWW_AUTHENTICATE] = 'Basic realm="AgentSync"'
    return web.json_response(body, status=401, headers=headers)


def _rate_limited(retry_after: int) -> web.Response:
    body = _okta_error("E0000047", "API call exceeded rate limit due to too many requests.")
    headers = {**NO_STORE, hdrs.RETRY_AFTER: str(retry_after)}
    return web.json_response(body, status=429, headers=headers)


def _fault_response(fault: Fault) -> web.Response:
    body = {
        "error": "simulated_fault",
        "error_description": f"Fault injected through /_simulator/faults (HTTP {fault.status})",
    }
    headers = dict(NO_STORE)
    if fault.status == 429:
        headers[hdrs.RETRY_AFTER] = "1"
    return web.json_response(body, status=fault.status, headers=headers)
