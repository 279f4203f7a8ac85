"""The mutable state of one simulator instance: tokens, counters, injected faults and data."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass

from aiohttp import web

from .api_rate_limit import FixedWindowLimiter
from .config import SimulatorConfig
from .data import DataSet, new_data_set
from .tokens import Clock, SlidingWindowLimiter, TokenStore


@dataclass
class Fault:
    """Fail the next `remaining` token requests with `status` after `delay` seconds."""

    status: int
    delay: float
    remaining: int


class SimulatorState:
    """Everything one simulator instance remembers; the control endpoints act on it."""

    token_lifetime: float  # for tokens issued from now on
    token_requests_per_minute: int
    api_requests_per_minute: int
    tokens: TokenStore
    rate_limiter: SlidingWindowLimiter  # the token endpoint's
    api_limiter: FixedWindowLimiter
    faults: deque[Fault]
    data: DataSet
    token_requests: int  # every request to the token endpoint, refused ones included
    tokens_issued: int
    api_calls: Counter[str]  # API responses by status code, e.g. {"200": 3, "401": 1}

    def __init__(self, config: SimulatorConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        # Token expiry and both rate limits read this clock; tests move it instead of sleeping.
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """Back to how the instance started: no tokens, counters, faults, writes or spent
        rate limits."""
        self.token_lifetime = float(self.config.token_lifetime)
        self.token_requests_per_minute = self.config.token_requests_per_minute
        self.api_requests_per_minute = self.config.api_requests_per_minute
        self.tokens = TokenStore(self.clock)
        self.rate_limiter = SlidingWindowLimiter(self.clock)
        self.api_limiter = FixedWindowLimiter(self.clock)
        self.faults = deque()
        self.data = new_data_set()
        self.token_requests = 0
        self.tokens_issued = 0
        self.api_calls = Counter()

    def add_fault(self, status: int, count: int, delay: float) -> None:
        self.faults.append(Fault(status, delay, count))

    def pending_faults(self) -> int:
        return sum(fault.remaining for fault in self.faults)

    def take_fault(self) -> Fault | None:
        """The fault the current token request must suffer, if any is queued."""
        if not self.faults:
            return None
        fault = self.faults[0]
        fault.remaining -= 1
        if fault.remaining == 0:
            self.faults.popleft()
        return fault

    def revoke_tokens(self) -> int:
        return self.tokens.revoke_all()

    def stats(self) -> dict[str, object]:
        return {
            "token_requests": self.token_requests,
            "tokens_issued": self.tokens_issued,
            "api_calls": dict(sorted(self.api_calls.items())),
        }


SIMULATOR_STATE = web.AppKey("simulator_state", SimulatorState)
