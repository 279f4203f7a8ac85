"""Section 4a's pacing on a virtual clock: even departures under an announced budget, the cap,
refusals, slots given back, and the pause after an upstream 429."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from multidict import CIMultiDict

from proxy.errors import RateLimited, error_response
from proxy.metrics import Metrics
from proxy.pacing import (
    COUNT_CAP,
    Budget,
    MemoryPacingState,
    Mode,
    Pacer,
    read_budget,
)
from proxy.token_endpoint import RETRY_AFTER_CAP


class VirtualTime:
    """A clock and a sleep for the pacer: time moves only when `run` wakes the next sleeper."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps = 0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), future))
        await future

    async def run(self, *tasks: asyncio.Task[object]) -> None:
        """Let time pass, waking sleepers in the order of their times, until every task is done."""
        while True:
            await let_tasks_run()
            if all(task.done() for task in tasks):
                for task in tasks:  # a task's failure fails the test
                    if not task.cancelled():
                        task.result()
                return
            assert self._sleepers, "a task waits for something other than time"
            when, _, future = heapq.heappop(self._sleepers)
            if not future.done():  # not cancelled
                self.now = max(self.now, when)
                future.set_result(None)


async def let_tasks_run() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def pacer_on(clock: VirtualTime, mode: Mode = "auto", max_wait: float = 30.0) -> Pacer:
    return Pacer.for_mode(mode, max_wait, Metrics(), clock=clock, sleep=clock.sleep)


def reported(pacer: Pacer, metric: str) -> float | None:
    """What the pacer's metrics show for `metric`, as /-/metrics would."""
    return pacer.metrics.registry.get_sample_value(f"agentsync_proxy_{metric}")


def ratelimit(remaining: object, reset: object, limit: object = None) -> CIMultiDict[str]:
    headers = CIMultiDict({"RateLimit-Remaining": str(remaining), "RateLimit-Reset": str(reset)})
    if limit is not None:
        headers["RateLimit-Limit"] = str(limit)
    return headers


async def answer(pacer: Pacer, headers: CIMultiDict[str]) -> None:
    """One request leaves and its answer announces `headers`."""
    await pacer.answered(await pacer.hold(), 200, headers)


def leaving(
    pacer: Pacer, clock: VirtualTime, log: list[tuple[str, float]], name: str
) -> asyncio.Task[None]:
    """A request that waits for its slot, then notes when it left, relative to now."""
    start = clock.now

    async def request() -> None:
        await pacer.hold()
        log.append((name, clock.now - start))

    return asyncio.create_task(request())


async def departures(pacer: Pacer, clock: VirtualTime, count: int) -> list[float]:
    """When each of `count` requests arriving together leaves, relative to now, in order."""
    log: list[tuple[str, float]] = []
    tasks = [leaving(pacer, clock, log, str(index)) for index in range(count)]
    await clock.run(*tasks)
    assert [name for name, _ in log] == [str(index) for index in range(count)]
    return [when for _, when in log]


async def test_nothing_is_held_before_any_budget_is_announced() -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock)
    tickets = [await pacer.hold() for _ in range(500)]
    for ticket in tickets[:100]:  # answers that announce nothing change nothing
        await pacer.answered(ticket, 200, CIMultiDict({"Content-Type": "application/json"}))
    assert await departures(pacer, clock, 100) == [0.0] * 100
    assert (clock.sleeps, reported(pacer, "rate_limit_held_total")) == (0, 0)
    remaining = reported(pacer, "rate_limit_remaining")
    assert remaining is not None and math.isnan(remaining)  # NaN: nothing announced


async def test_an_announced_budget_spaces_departures_evenly_in_arrival_order() -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock)
    await answer(pacer, ratelimit(119, 60))
    times = await departures(pacer, clock, 10)
    assert times == pytest.approx([index * 60 / 119 for index in range(10)])
    assert reported(pacer, "rate_limit_held_total") == 9
    assert reported(pacer, "rate_limit_held_seconds_sum") == pytest.approx(sum(times))
    assert reported(pacer, "rate_limit_remaining") == 119


async def test_requests_in_flight_spend_part_of_the_announced_budget() -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock)
    tickets = [await pacer.hold() for _ in range(3)]
    # Two requests are still in flight: 3 of the 5 remaining are left for the next 10 s.
    await pacer.answered(tickets[0], 200, ratelimit(5, 10))
    assert await departures(pacer, clock, 4) == pytest.approx([0, 10 / 3, 20 / 3, 10])


async def test_a_request_without_an_answer_no_longer_counts_as_in_flight() -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock)
    tickets = [await pacer.hold() for _ in range(3)]
    await pacer.abandoned(tickets[1])
    await pacer.abandoned(tickets[1])  # settled once only
    # One request is still in flight: 3 of the 4 remaining are left for the next 8 s.
    await pacer.answered(tickets[0], 200, ratelimit(4, 8))
    assert await departures(pacer, clock, 3) == pytest.approx([0, 8 / 3, 16 / 3])


async def test_a_spent_budget_holds_every_request_until_the_reset_then_paces_at_the_limit() -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock)
    await answer(pacer, ratelimit(0, 20, limit=300))
    assert await departures(pacer, clock, 5) == pytest.approx([20, 20.2, 20.4, 20.6, 20.8])


async def test_requests_held_when_the_budget_runs_out_wait_for_the_reset_too() -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock, max_wait=60)
    first = await pacer.hold()
    await pacer.answered(first, 200, ratelimit(60, 60))  # one a second
    second = await pacer.hold()
    log: list[tuple[str, float]] = []
    held = [leaving(pacer, clock, log, name) for name in ("a", "b")]
    await let_tasks_run()
    await pacer.answered(second, 200, ratelimit(0, 30, limit=60))
    await clock.run(*held)
    assert log == [("a", 31.0), ("b", 32.0)]  # pushed back together, spacing kept


async def test_the_cap_alone_spaces_requests_and_never_exceeds_n_a_minute() -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock, mode=120, max_wait=600)
    times = await departures(pacer, clock, 300)
    assert times == pytest.approx([index * 0.5 for index in range(300)])
    assert all(times[index + 120] - times[index] >= 60 for index in range(len(times) - 120))


@pytest.mark.parametrize(
    ("remaining", "reset", "spacing"),
    [(119, 60, 1.0), (10, 60, 6.0)],  # the slower of the cap and the budget wins
)
async def test_the_cap_and_an_announced_budget_together(
    remaining: int, reset: int, spacing: float
) -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock, mode=60)
    await answer(pacer, ratelimit(remaining, reset))
    clock.now += 60  # the announcing request's slot is long past
    assert await departures(pacer, clock, 4) == pytest.approx(
        [0, spacing, 2 * spacing, 3 * spacing]
    )


@pytest.mark.parametrize(
    ("mode", "remaining", "spacing"),
    [(60, None, 3.0), ("auto", 120, 1.5), (60, 120, 3.0)],  # a third of 60 or 120 a minute
)
async def test_a_state_divided_among_three_keeps_to_a_third_of_the_cap_and_budgets(
    mode: Mode, remaining: int | None, spacing: float
) -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock, mode=mode)
    assert isinstance(pacer.state, MemoryPacingState)
    pacer.state.divide(3)
    if remaining is not None:
        await answer(pacer, ratelimit(remaining, 60))
        clock.now += 60
    assert await departures(pacer, clock, 3) == pytest.approx([0, spacing, 2 * spacing])


async def test_off_holds_nothing_and_refuses_nothing() -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock, mode="off")
    for _ in range(3):
        await pacer.answered(await pacer.hold(), 200, ratelimit(0, 60))
    pause = await pacer.answered(await pacer.hold(), 429, CIMultiDict({"Retry-After": "60"}))
    assert pause is None
    assert await departures(pacer, clock, 1000) == [0.0] * 1000
    assert reported(pacer, "rate_limit_held_total") == 0
    assert reported(pacer, "rate_limited_total") == 0
    assert reported(pacer, "upstream_rate_limited_total") == 1


async def test_a_request_over_the_wait_budget_is_refused_at_once_without_taking_a_slot() -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock, max_wait=2)
    await answer(pacer, ratelimit(60, 60))  # one a second
    log: list[tuple[str, float]] = []
    held = [leaving(pacer, clock, log, name) for name in ("a", "b", "c")]
    await let_tasks_run()
    with pytest.raises(RateLimited) as refused:
        await pacer.hold()
    assert refused.value.retry_after == pytest.approx(3)
    assert refused.value.headers() == {"Retry-After": "3"}
    assert reported(pacer, "rate_limited_total") == 1
    await clock.run(*held)
    assert log == [("a", 0.0), ("b", 1.0), ("c", 2.0)]
    # The slot a second after c's is still free: the refused request took nothing.
    assert await departures(pacer, clock, 1) == [1.0]


def test_rate_limited_is_a_429_with_whole_seconds_in_retry_after() -> None:
    refusal = RateLimited("the API's rate limit would hold this request", 0.2)
    response = error_response(refusal, "request-1")
    assert response.status == 429
    assert response.headers["Retry-After"] == "1"
    assert isinstance(response.body, bytes)
    assert json.loads(response.body)["error"] == "rate_limited"
    assert RateLimited("x", 2.01).headers() == {"Retry-After": "3"}


@pytest.mark.parametrize("cancelled", ["b", "c"])
async def test_a_request_whose_client_went_away_gives_its_slot_to_the_next(cancelled: str) -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock)
    await answer(pacer, ratelimit(60, 60))  # one a second
    log: list[tuple[str, float]] = []
    held = {name: leaving(pacer, clock, log, name) for name in ("a", "b", "c")}
    await let_tasks_run()
    held[cancelled].cancel()
    await let_tasks_run()
    late = leaving(pacer, clock, log, "late")
    await clock.run(late, *held.values())
    slots = {"a": 0.0, "b": 1.0, "c": 2.0}
    slots["late"] = slots.pop(cancelled)
    assert dict(log) == slots
    assert held[cancelled].cancelled()


def http_date(seconds_from_now: int) -> str:
    moment = datetime.fromtimestamp(math.ceil(time.time()) + seconds_from_now, UTC)
    return format_datetime(moment, usegmt=True)


@pytest.mark.parametrize(
    "headers",
    [
        lambda: {"Retry-After": "10", "RateLimit-Remaining": "0", "RateLimit-Reset": "25"},
        lambda: {"Retry-After": http_date(10)},
        lambda: {"RateLimit-Remaining": "0", "RateLimit-Reset": "10", "RateLimit-Limit": "60"},
    ],
    ids=["retry-after-seconds", "retry-after-date", "ratelimit-reset"],
)
async def test_an_upstream_429_holds_every_request_until_the_time_it_names(
    headers: Callable[[], dict[str, str]],
) -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock)
    first, rejected = await pacer.hold(), await pacer.hold()
    await pacer.answered(first, 200, ratelimit(61, 60))  # one a second, with one in flight
    log: list[tuple[str, float]] = []
    sent = leaving(pacer, clock, log, "sent")
    held = [leaving(pacer, clock, log, name) for name in ("a", "b")]
    await let_tasks_run()
    pause = await pacer.answered(rejected, 429, CIMultiDict(headers()))
    assert pause == pytest.approx(10, abs=1)  # an HTTP date is in whole seconds
    assert reported(pacer, "upstream_rate_limited_total") == 1
    replay = leaving(pacer, clock, log, "replay")
    new = leaving(pacer, clock, log, "new")
    await clock.run(sent, replay, new, *held)
    assert [name for name, _ in log] == ["sent", "a", "b", "replay", "new"]
    assert pause is not None
    expected = [0, pause + 1, pause + 2, pause + 3, pause + 4]
    assert [when for _, when in log] == pytest.approx(expected)


async def test_after_a_429_alone_the_replay_leaves_when_the_pause_ends() -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock)
    rejected = await pacer.hold()
    pause = await pacer.answered(rejected, 429, CIMultiDict({"Retry-After": "5"}))
    assert pause == 5.0
    assert await departures(pacer, clock, 1) == [5.0]


async def test_a_429_that_names_no_time_pauses_for_a_second() -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock)
    pause = await pacer.answered(await pacer.hold(), 429, CIMultiDict({"Retry-After": "soon"}))
    assert pause == 1.0
    assert await departures(pacer, clock, 1) == [1.0]


async def test_a_held_request_that_a_429_pushes_past_the_wait_budget_is_refused() -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock, max_wait=30)
    first, rejected = await pacer.hold(), await pacer.hold()
    await pacer.answered(first, 200, ratelimit(61, 60))  # one a second, with one in flight
    sent, held = await pacer.hold(), asyncio.create_task(pacer.hold())
    await let_tasks_run()
    assert await pacer.answered(rejected, 429, CIMultiDict({"Retry-After": "40"})) == 40.0
    with pytest.raises(RateLimited) as refused:
        await clock.run(held)
    assert refused.value.retry_after == pytest.approx(40)
    assert (reported(pacer, "rate_limited_total"), sent.held) == (1, 0.0)


async def test_pacing_on_the_event_loops_own_clock() -> None:
    pacer = Pacer.for_mode("auto", 30, Metrics())
    await pacer.answered(await pacer.hold(), 200, ratelimit(20, 1))  # one every 50 ms

    async def request() -> float:
        await pacer.hold()
        return time.monotonic()

    times = await asyncio.gather(*(request() for _ in range(4)))
    assert all(later - earlier >= 0.04 for earlier, later in itertools.pairwise(times))


@pytest.mark.parametrize(
    ("headers", "budget"),
    [
        (ratelimit(119, 60, 300), Budget(119, 60.0, 300)),
        ({"ratelimit-remaining": " 7 ", "ratelimit-reset": "007"}, Budget(7, 7.0)),
        (ratelimit(0, 0, 0), Budget(0, 0.0)),
        (ratelimit(5, 60, "lots"), Budget(5, 60.0)),
        (ratelimit("9" * 5000, 60), Budget(COUNT_CAP, 60.0)),
        (ratelimit("0" * 5000 + "5", 60), Budget(5, 60.0)),
        (ratelimit(5, "9" * 5000), Budget(5, RETRY_AFTER_CAP)),
        (ratelimit(5, 86400), Budget(5, RETRY_AFTER_CAP)),
    ],
)
def test_ratelimit_headers_are_read_as_whole_numbers_and_capped(
    headers: Mapping[str, str], budget: Budget
) -> None:
    assert read_budget(CIMultiDict(headers)) == budget


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"ratelimit-remaining": "5"},
        {"ratelimit-reset": "60"},
        ratelimit(-1, 60),
        ratelimit(5, -60),
        ratelimit("+5", 60),
        ratelimit(5, "1.5"),
        ratelimit("five", 60),
        ratelimit("\u0663", 60),  # Arabic-Indic three
        ratelimit(5, "\u00b2"),  # superscript two
        ratelimit(5, "1e3"),
    ],
)
async def test_malformed_ratelimit_headers_are_ignored(headers: Mapping[str, str]) -> None:
    assert read_budget(CIMultiDict(headers)) is None
    clock = VirtualTime()
    pacer = pacer_on(clock)
    await answer(pacer, CIMultiDict(headers))
    assert await departures(pacer, clock, 20) == [0.0] * 20
