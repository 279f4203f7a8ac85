"""Bookkeeping behind the token endpoint: issued access tokens and the per-client rate limit."""

from __future__ import annotations

import math
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True)
class IssuedToken:
    client_id: str
    scopes: frozenset[str]
    expires_at: float


class TokenStore:
    """Access tokens issued so far; a token is valid until it expires or is revoked."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._tokens: dict[str, IssuedToken] = {}

    def issue(self, client_id: str, scopes: frozenset[str], lifetime: float) -> str:
        token = secrets.token_urlsafe(32)
        self._tokens[token] = IssuedToken(client_id, scopes, self._clock() + lifetime)
        return token

    def find(self, token: str) -> IssuedToken | None:
        """The token's grant if it is still valid, else None (unknown, expired or revoked)."""
        issued = self._tokens.get(token)
        if issued is not None and self._clock() >= issued.expires_at:
            # Forget expired tokens as they are seen, so the store does not only ever grow.
            del self._tokens[token]
            return None
        return issued

    def issued(self) -> list[str]:
        """Every token still on record, for tests that prove a token is never leaked."""
        return list(self._tokens)

    def revoke_all(self) -> int:
        count = len(self._tokens)
        self._tokens.clear()
        return count


class SlidingWindowLimiter:
    """At most `limit` accepted requests per key in any `window` seconds."""

    def __init__(self, clock: Clock, window: float = 60.0) -> None:
        self._clock = clock
        self._window = window
        self._accepted: dict[str, deque[float]] = {}

    def acquire(self, key: str, limit: int) -> int | None:
        """Record a request and return None, or return the seconds until a slot frees."""
        now = self._clock()
        times = self._accepted.setdefault(key, deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        if len(times) >= limit:
            # Only accepted requests hold a slot, so a client that keeps retrying still recovers.
            wait = times[len(times) - limit] + self._window - now
            return max(1, math.ceil(wait))
        times.append(now)
        return None
