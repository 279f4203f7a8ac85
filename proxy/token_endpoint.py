"""One client-credentials token request to the OAuth 2.0 token endpoint, and what its answer
means: a Token, a rejection (not worth retrying) or an unavailability (worth retrying)."""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import aiohttp
import structlog

from proxy.credentials import Secret
from proxy.errors import TokenRejected, TokenUnavailable
from proxy.settings import Settings

log = structlog.get_logger("proxy.tokens")
RETRY_AFTER_CAP = 120.0
# Numbers from the token endpoint are ASCII digits only: str.isdigit() also accepts "²", which
# float() refuses, and "٣", which float() reads as 3.
_ASCII_DIGITS = re.compile(r"[0-9]+")
# A token the Authorization header can carry: visible ASCII, no space (RFC 6750's b64token). One
# with a control (CR, LF, NUL) or non-ASCII character cannot be sent and would fail every request.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True, eq=False)
class Token:
    """An access token; compared by identity, so a 401 names exactly the token that failed."""

    value: Secret = field(repr=False)
    expires_at: float
    lifetime: float
    scope: str | None
    expires_at_wall: float

    def refresh_at(self, margin: float) -> float:
        """When to renew: `margin` before expiry, or half-way through a shorter lifetime."""
        return self.expires_at - min(margin, self.lifetime / 2)

    def is_valid(self, now: float) -> bool:
        return now < self.expires_at


def retry_after_seconds(header: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), capped at
    RETRY_AFTER_CAP; None for anything else, so that the proxy's own backoff applies."""
    text = (header or "").strip()
    if not text or not text.isascii():
        return None
    if _ASCII_DIGITS.fullmatch(text):
        return min(float(text), RETRY_AFTER_CAP)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": an HTTP-date is GMT anyway
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, seconds), RETRY_AFTER_CAP)


@dataclass
class TokenEndpoint:
    """Posts the client-credentials grant; `fetch` is the one method the token cache needs."""

    session: aiohttp.ClientSession
    settings: Settings

    async def fetch(self) -> Token:
        settings = self.settings
        try:
            secret = settings.client_secret.read().reveal()
        except (OSError, UnicodeDecodeError):
            raise TokenUnavailable(
                f"cannot read the client secret file {settings.client_secret.file}"
            ) from None
        form = {"grant_type": "client_credentials"}
        headers = {"Accept": "application/json"}
        if settings.client_auth == "basic":
            pair = f"{quote(settings.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = settings.client_id
            form["client_secret"] = secret
        if settings.scope:
            form["scope"] = settings.scope
        started = time.monotonic()
        try:
            async with self.session.post(
                settings.token_url,
                data=form,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=settings.token_timeout),
            ) as response:
                return self._interpret(response, await response.read(), started)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            raise TokenUnavailable(
                f"the token endpoint {settings.token_url} could not be reached ({reason});"
                " check AGENTSYNC_TOKEN_URL and the network",
            ) from None

    def _interpret(self, response: aiohttp.ClientResponse, body: bytes, started: float) -> Token:
        status = response.status
        if status == 429 or status >= 500:
            raise TokenUnavailable(
                f"the token endpoint answered {status}; the proxy retries with backoff",
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
            )
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            payload = None
        if status != 200:
            raise TokenRejected(self._rejection_description(status, payload))
        if not isinstance(payload, dict):
            raise TokenUnavailable("the token endpoint answered 200 with a body that is not JSON")
        access_token = payload.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise TokenUnavailable("the token endpoint answered 200 without an access_token")
        if not _HEADER_SAFE.fullmatch(access_token):
            raise TokenRejected(
                "the token endpoint issued an access_token that an HTTP header cannot carry"
                " (control, space or non-ASCII characters); check that AGENTSYNC_TOKEN_URL is"
                " AgentSync's token endpoint, and if it is, report the answer to AgentSync support"
            )
        token_type = payload.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise TokenRejected(
                "the token endpoint issued a token that is not a Bearer token; check"
                " AGENTSYNC_TOKEN_URL"
            )
        lifetime = _lifetime(payload.get("expires_in"))
        if lifetime is None:
            lifetime = self.settings.default_token_lifetime
            log.warning(
                "token_expires_in_missing"
                if "expires_in" not in payload
                else "token_expires_in_invalid",
                expires_in_assumed=lifetime,
                hint="set --default-token-lifetime if AgentSync's tokens live shorter",
            )
        scope = payload.get("scope")
        return Token(
            value=Secret(access_token),
            expires_at=started + lifetime,
            lifetime=lifetime,
            scope=scope if isinstance(scope, str) else self.settings.scope,
            expires_at_wall=time.time() + lifetime,
        )

    def _rejection_description(self, status: int, payload: object) -> str:
        environment = self.settings.environment
        payload = payload if isinstance(payload, dict) else {}
        code = payload.get("error") or payload.get("errorCode") or f"HTTP {status}"
        summary = payload.get("error_description") or payload.get("errorSummary") or ""
        code_text = str(code)[:80]
        summary_text = f": {str(summary)[:200]}" if summary else ""
        if code_text in ("invalid_scope", "access_denied"):
            action = (
                "check AGENTSYNC_SCOPE against the scopes granted to the client for the"
                f" {environment} environment"
            )
        elif code_text in ("unsupported_grant_type", "unauthorized_client"):
            action = (
                "the client is not allowed the client-credentials grant; contact AgentSync support"
            )
        else:
            action = (
                f"check AGENTSYNC_CLIENT_ID and AGENTSYNC_CLIENT_SECRET for the"
                f" {environment} environment, and AGENTSYNC_CLIENT_AUTH (post or basic)"
            )
        return (
            f"the token endpoint rejected the proxy's request ({code_text}{summary_text}); {action}"
        )


def _lifetime(value: object) -> float | None:
    """expires_in in seconds: a JSON number or a string of ASCII digits, more than 0 and less
    than ten years; None for anything else."""
    if isinstance(value, str) and _ASCII_DIGITS.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 < value < 10 * 365 * 86400 else None
