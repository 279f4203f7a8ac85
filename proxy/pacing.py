"""When each API request may leave under AgentSync's rate limit, which are refused, and how an
upstream 429 holds everyone: a policy apart from any I/O, with an injectable clock and sleep."""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

from proxy.errors import RateLimited
from proxy.metrics import Metrics
from proxy.token_endpoint import RETRY_AFTER_CAP, retry_after_seconds

WINDOW = 60.0  # AgentSync counts requests a minute
COUNT_CAP = 1_000_000  # above any window's budget; longer numbers are read as this
UNHINTED_PAUSE = 1.0  # for a 429 that names no time at all

Mode = int | Literal["auto", "off"]


@dataclass(frozen=True)
class Budget:
    """What an answer announced: `remaining` requests until the window resets in `reset` s."""

    remaining: int
    reset: float
    limit: int | None = None


def read_budget(headers: Mapping[str, str]) -> Budget | None:
    """The budget in an answer's ratelimit-* headers (from a case-insensitive mapping, as
    aiohttp's), or None unless both remaining and reset are there as ASCII digits."""
    remaining = _count(headers.get("ratelimit-remaining"))
    reset = None if remaining is None else _count(headers.get("ratelimit-reset"))
    if remaining is None or reset is None:
        return None
    # A window is a minute: a longer reset is read as the longest pause honoured anywhere.
    return Budget(
        remaining,
        min(float(reset), RETRY_AFTER_CAP),
        _count(headers.get("ratelimit-limit")) or None,
    )


def _count(text: str | None) -> int | None:
    text = (text or "").strip()
    if not (text.isascii() and text.isdigit()):
        return None
    significant = text.lstrip("0") or "0"  # int() refuses more than 4,300 digits
    return COUNT_CAP if len(significant) > 7 else min(int(significant), COUNT_CAP)


class Reservation(NamedTuple):  # a tuple: made for every request, quicker than a dataclass
    slot: float  # in slot time
    wait: float  # seconds from the reservation to the slot


class Refusal(NamedTuple):
    wait: float  # what the request would have waited; nothing was reserved


class PacingState(Protocol):
    """The arithmetic that a fleet would share; every method is one atomic step."""

    async def reserve(self, max_wait: float) -> Reservation | Refusal:
        """The next free slot, unless it is more than `max_wait` seconds away."""

    async def depart(self, reservation: Reservation) -> float:
        """Seconds the reservation still has to wait (pauses push it back), or 0: it leaves and
        counts as in flight until settled."""

    async def give_back(self, reservation: Reservation) -> None:
        """A reserved request that will not leave: its slot goes to the next reservation."""

    async def settle(self, reservation: Reservation, budget: Budget | None) -> None:
        """A request in flight (which left on `reservation`) is over, with the budget its answer
        announced, if any."""


class MemoryPacingState:
    """The pacing state of one process. GCRA: a request takes max(now, the next free slot) and
    moves that on by the interval, the larger of the announced budget's (reset / (remaining - in
    flight)) and the cap's (60 / N). A pause (a budget spent, a 429) pushes every slot not yet
    reached back alike, keeping order and spacing: slots are in slot time, the clock minus every
    pause so far, so a pause is one addition. A slot given back goes to the next reservation."""

    def __init__(self, clock: Callable[[], float], per_minute: int | None = None) -> None:
        self._clock = clock
        self._per_minute = per_minute
        self.interval = 0.0  # between two departures; 0 until a budget or a cap
        self.divide(1)  # the whole cap and budgets, the cap's interval as the floor
        self._shift = 0.0  # every pause so far: slot time is the clock minus this
        self._next = -math.inf  # the next free slot (GCRA's theoretical arrival time)
        self._holes: list[float] = []  # slots given back, a heap
        self.paused_until = -math.inf
        self.in_flight = 0  # departed and not yet settled

    async def reserve(self, max_wait: float) -> Reservation | Refusal:
        now = self._clock() - self._shift
        while self._holes and self._holes[0] < now:  # passed unused; taking one now would crowd
            heapq.heappop(self._holes)
        slot = self._holes[0] if self._holes else max(now, self._next)
        if slot - now > max_wait:
            return Refusal(slot - now)
        if self._holes:
            heapq.heappop(self._holes)
        else:
            self._next = slot + self.interval
        if slot <= now:
            self.in_flight += 1
        return Reservation(slot, slot - now)

    async def depart(self, reservation: Reservation) -> float:
        wait = reservation.slot + self._shift - self._clock()
        if wait <= 0:
            self.in_flight += 1
        return max(0.0, wait)

    async def give_back(self, reservation: Reservation) -> None:
        if reservation.slot + self._shift > self._clock():
            heapq.heappush(self._holes, reservation.slot)

    async def settle(self, reservation: Reservation, budget: Budget | None) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        if budget is None:
            return
        # What is in flight spends the budget too.
        spendable = budget.remaining / self._share - self.in_flight
        if spendable > 0:
            self.interval = max(self._floor, budget.reset / spendable)
            return
        if budget.limit:  # after the reset: the whole window's budget, evenly
            self.interval = max(self._floor, WINDOW * self._share / budget.limit)
        self.hold_until(self._clock() + budget.reset)

    def hold_until(self, until: float) -> None:
        """Push every slot not yet reached back, so that none comes before `until`."""
        push = until - max(self._clock(), self.paused_until)
        if push > 0:
            self._shift += push
            self._next = max(self._next, until - self._shift)
            self.paused_until = until

    def divide(self, replicas: int, interval: float | None = None) -> None:
        """Keep to 1/`replicas` of the cap and of every budget announced from now on (a replica
        of a fleet pacing on its own), starting at `interval` between departures if given."""
        self._share = max(1, replicas)  # of the cap and of each budget
        self._floor = WINDOW * self._share / self._per_minute if self._per_minute else 0.0
        self.interval = max(self._floor, self.interval if interval is None else interval)


@dataclass(slots=True)
class Ticket:
    """One request's passage: how long it was held, and the reservation it left on until it is
    settled (answered or abandoned) on the same state; None with pacing off."""

    held: float = 0.0
    reservation: Reservation | None = None


class Pacer:
    """What the request handler calls: `hold` before sending, then `answered` or `abandoned`."""

    def __init__(
        self,
        state: PacingState | None,
        max_wait: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.state, self.max_wait, self.metrics = state, max_wait, metrics  # state None: off
        self._clock, self._sleep = clock, sleep

    @classmethod
    def for_mode(
        cls,
        mode: Mode,
        max_wait: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> Pacer:
        if mode == "off":
            return cls(None, max_wait, metrics)
        per_minute = None if mode == "auto" else mode
        return cls(MemoryPacingState(clock, per_minute), max_wait, metrics, clock, sleep)

    async def hold(self) -> Ticket:
        """Wait for this request's slot; RateLimited, at once, if it is more than `max_wait`
        away, or later, if a pause pushes it beyond."""
        if self.state is None:
            return Ticket()
        reservation = await self.state.reserve(self.max_wait)
        if isinstance(reservation, Refusal):
            raise self._refusal(reservation.wait)
        wait = reservation.wait
        if wait <= 0:
            return Ticket(reservation=reservation)
        started = self._clock()
        try:
            while wait > 0 and self._clock() - started + wait <= self.max_wait:
                await self._sleep(wait)
                wait = await self.state.depart(reservation)
        except asyncio.CancelledError:  # the client went away: the slot goes to the next one
            await self.state.give_back(reservation)
            raise
        if wait > 0:  # a pause pushed the slot beyond the wait budget
            await self.state.give_back(reservation)
            raise self._refusal(wait)
        held = self._clock() - started
        self.metrics.held(held)
        return Ticket(held, reservation=reservation)

    async def answered(
        self, ticket: Ticket, status: int, headers: Mapping[str, str]
    ) -> float | None:
        """Settle a request with its answer, whose budget paces the next ones. On a 429, hold
        every request until its Retry-After, else its ratelimit-reset, and return that pause in
        seconds: the caller replays the request once if it fits within the wait budget."""
        if status == 429:
            self.metrics.upstream_429()
        reservation, ticket.reservation = ticket.reservation, None
        if reservation is None or self.state is None:
            return None
        budget = read_budget(headers)
        if budget is not None:
            self.metrics.announced(budget.remaining)
        if status != 429:
            await self.state.settle(reservation, budget)
            return None
        pause = retry_after_seconds(headers.get("retry-after"))
        if pause is None:
            pause = budget.reset if budget is not None else UNHINTED_PAUSE
        limit = budget.limit if budget is not None else None
        await self.state.settle(reservation, Budget(remaining=0, reset=pause, limit=limit))
        return pause

    async def abandoned(self, ticket: Ticket) -> None:
        """Settle a request that got no answer."""
        reservation, ticket.reservation = ticket.reservation, None
        if reservation is not None and self.state is not None:
            await self.state.settle(reservation, None)

    def _refusal(self, wait: float) -> RateLimited:
        self.metrics.rate_limited()
        return RateLimited(
            f"the API's rate limit would hold this request {math.ceil(wait)} s, longer than"
            " --rate-limit-wait; retry after Retry-After seconds",
            retry_after=wait,
        )
