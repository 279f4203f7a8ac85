"""The API's rate limit: so many calls per client in fixed one-minute windows, and its headers."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .tokens import Clock

LIMIT_HEADER = "ratelimit-limit"
REMAINING_HEADER = "ratelimit-remaining"
RESET_HEADER = "ratelimit-reset"


@dataclass(frozen=True)
class Quota:
    """Where a client stands after one call: the answer's `ratelimit-*` headers."""

    limit: int
    remaining: int  # calls left in the window after this one
    reset: int  # whole seconds until the window ends, at least 1
    exceeded: bool  # this call was over the limit and is refused

    def headers(self) -> dict[str, str]:
        return {
            LIMIT_HEADER: str(self.limit),
            REMAINING_HEADER: str(self.remaining),
            RESET_HEADER: str(self.reset),
        }


@dataclass
class _Window:
    start: float
    calls: int  # accepted calls; refused ones do not use up the budget


class FixedWindowLimiter:
    """At most `limit` calls per key in each window; a key's window starts with its first call
    after the previous window ended, so a client's budget comes back whole at one moment."""

    def __init__(self, clock: Clock, window: float = 60.0) -> None:
        self._clock = clock
        self._window = window
        self._windows: dict[str, _Window] = {}

    def take(self, key: str, limit: int) -> Quota:
        """Count one call of `key` against `limit` (which may change between calls)."""
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now >= window.start + self._window:
            window = self._windows[key] = _Window(start=now, calls=0)
        exceeded = window.calls >= limit
        if not exceeded:
            window.calls += 1
        reset = max(1, math.ceil(window.start + self._window - now))
        return Quota(limit, max(limit - window.calls, 0), reset, exceeded)
