"""The token cache's policy, driven through its one-method fetcher seam and an injected clock."""

from __future__ import annotations

import asyncio
import gc
import itertools
import weakref
from typing import Any

import pytest
import structlog

from proxy.credentials import Secret
from proxy.errors import TokenRejected, TokenUnavailable
from proxy.token_endpoint import Token
from proxy.tokens import CapReached, RequestCap, TokenSource, backoff


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Virtual time: a pause passes at once."""
        self.now += seconds
        await asyncio.sleep(0)


class ScriptedFetcher:
    """Answers token requests from a script of lifetimes (a Token) or errors to raise."""

    def __init__(self, clock: Clock, *script: float | Exception) -> None:
        self.clock = clock
        self.script = list(script)
        self.calls: list[float] = []  # the event loop's time of each request
        self.at: list[float] = []  # the injected clock's
        self.gate: asyncio.Event | None = None

    async def fetch(self) -> Token:
        self.calls.append(asyncio.get_running_loop().time())
        self.at.append(self.clock())
        if self.gate is not None:
            await self.gate.wait()
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        now = self.clock()
        return Token(Secret(f"t{len(self.calls)}"), now + step, step, None, now + step)


def source(fetcher: ScriptedFetcher, clock: Clock, **options: Any) -> TokenSource:
    defaults: dict[str, Any] = {"backoff_initial": 0.001, "refresh_margin": 300.0}
    return TokenSource(fetcher, clock=clock, **{**defaults, **options})


async def test_token_is_reused_until_the_refresh_margin() -> None:
    clock = Clock()
    fetcher = ScriptedFetcher(clock, 3600.0)
    tokens = source(fetcher, clock)
    first = await tokens.token()
    clock.now += 3600 - 301
    assert await tokens.token() is first
    assert len(fetcher.calls) == 1


async def test_within_the_margin_the_old_token_serves_while_a_new_one_is_fetched() -> None:
    clock = Clock()
    fetcher = ScriptedFetcher(clock, 3600.0)
    tokens = source(fetcher, clock)
    first = await tokens.token()
    clock.now += 3600 - 299
    fetcher.gate = asyncio.Event()
    assert await tokens.token() is first  # did not wait for the token endpoint
    fetcher.gate.set()
    await until_current_changes(tokens, first)
    assert len(fetcher.calls) == 2


async def until_current_changes(tokens: TokenSource, old: Token) -> None:
    async with asyncio.timeout(5):
        while tokens.current is old:
            await asyncio.sleep(0)


async def test_a_short_lifetime_is_renewed_half_way_instead_of_at_once() -> None:
    clock = Clock()
    tokens = source(ScriptedFetcher(clock, 60.0), clock)
    token = await tokens.token()
    assert token.refresh_at(300.0) == token.expires_at - 30.0


async def test_a_valid_token_keeps_serving_while_the_refresh_fails() -> None:
    clock = Clock()
    fetcher = ScriptedFetcher(clock, 3600.0, TokenUnavailable("down"))
    tokens = source(fetcher, clock, max_attempts=2)
    first = await tokens.token()
    clock.now += 3400
    for _ in range(3):
        assert await tokens.token() is first
    async with asyncio.timeout(5):
        while len(fetcher.calls) < 3:  # the first fetch, then two failing attempts
            await asyncio.sleep(0)
    assert await tokens.token() is first


async def test_concurrent_renewals_of_the_same_token_share_one_request() -> None:
    clock = Clock()
    fetcher = ScriptedFetcher(clock, 3600.0)
    tokens = source(fetcher, clock)
    rejected = await tokens.token()
    renewed = await asyncio.gather(*(tokens.renew(rejected) for _ in range(100)))
    assert len({id(token) for token in renewed}) == 1
    assert renewed[0] is not rejected
    assert len(fetcher.calls) == 2


async def test_a_401_on_an_already_replaced_token_renews_nothing() -> None:
    clock = Clock()
    fetcher = ScriptedFetcher(clock, 3600.0)
    tokens = source(fetcher, clock)
    old = await tokens.token()
    new = await tokens.renew(old)
    assert await tokens.renew(old) is new
    assert len(fetcher.calls) == 2


async def test_a_rejection_is_remembered_instead_of_retried() -> None:
    clock = Clock()
    fetcher = ScriptedFetcher(clock, TokenRejected("invalid_client"))
    tokens = source(fetcher, clock, rejection_ttl=30.0)
    for _ in range(10):
        with pytest.raises(TokenRejected):
            await tokens.token()
    assert len(fetcher.calls) == 1
    clock.now += 31
    with pytest.raises(TokenRejected):
        await tokens.token()
    assert len(fetcher.calls) == 2


async def test_transient_failures_are_retried_until_success() -> None:
    clock = Clock()
    down = TokenUnavailable("503")
    fetcher = ScriptedFetcher(clock, down, down, 3600.0)
    tokens = source(fetcher, clock)
    assert (await tokens.token()).lifetime == 3600.0
    assert len(fetcher.calls) == 3


async def test_retry_after_is_honoured_between_attempts() -> None:
    clock = Clock()
    fetcher = ScriptedFetcher(clock, TokenUnavailable("429", retry_after=0.2), 3600.0)
    tokens = source(fetcher, clock)
    await tokens.token()
    assert fetcher.calls[1] - fetcher.calls[0] >= 0.2


async def test_the_per_minute_cap_holds_whatever_the_demand() -> None:
    clock = Clock()
    fetcher = ScriptedFetcher(clock, 3600.0)
    tokens = source(fetcher, clock, requests_per_minute=3)
    token = await tokens.token()
    for _ in range(2):
        token = await tokens.renew(token)
    with pytest.raises(CapReached) as refused:
        await tokens.renew(token)
    assert len(fetcher.calls) == 3
    assert refused.value.retry_after == pytest.approx(60.0)
    assert "401" in refused.value.description  # renewals used it up: the API refuses tokens


async def test_a_cap_used_up_by_failed_token_requests_names_their_failure() -> None:
    clock = Clock()
    fetcher = ScriptedFetcher(clock, TokenUnavailable("the token endpoint answered 503"))
    tokens = source(fetcher, clock, sleep=clock.sleep, requests_per_minute=3)
    with pytest.raises(CapReached) as refused:
        await tokens.token()
    assert len(fetcher.calls) == 3
    assert "the token endpoint answered 503" in refused.value.description
    assert "401" not in refused.value.description


def test_request_cap_frees_a_slot_after_the_window() -> None:
    clock = Clock()
    cap = RequestCap(2, clock=clock)
    assert cap.try_acquire() == 0 and cap.try_acquire() == 0
    assert cap.try_acquire() == pytest.approx(60.0)
    clock.now += 60
    assert cap.try_acquire() == 0


def test_token_repr_hides_the_value() -> None:
    token = Token(Secret("s3cr3t-token"), 1.0, 1.0, "scope", 1.0)
    assert "s3cr3t-token" not in repr(token)
    assert "s3cr3t-token" not in str(token.value)


class Caller:
    """Stands for a request whose frame must be freed once its error answer is made."""


async def failing_call(tokens: TokenSource, caller: Caller) -> tuple[str, str, float | None]:
    """What a request learns of the failure (not the error object, whose traceback holds this
    frame and so `caller` until it is dropped)."""
    try:
        await tokens.token()
    except (TokenRejected, TokenUnavailable) as exc:
        return type(exc).__name__, str(exc), getattr(exc, "retry_after", None)
    raise AssertionError("the token request was expected to fail")


async def test_a_remembered_rejection_keeps_no_caller_alive() -> None:
    clock = Clock()
    tokens = source(ScriptedFetcher(clock, TokenRejected("invalid_client")), clock)
    callers = [Caller() for _ in range(3)]
    refs = [weakref.ref(caller) for caller in callers]
    errors = [await failing_call(tokens, caller) for caller in callers]
    del callers
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None]
    assert errors == [("TokenRejected", "invalid_client", None)] * 3


async def test_callers_waiting_on_a_failing_fetch_are_not_kept_alive() -> None:
    clock = Clock()
    fetcher = ScriptedFetcher(clock, TokenUnavailable("down", retry_after=30.0))
    fetcher.gate = asyncio.Event()
    tokens = source(fetcher, clock, max_attempts=1)
    callers = [Caller() for _ in range(3)]
    refs = [weakref.ref(caller) for caller in callers]
    waiting = [asyncio.ensure_future(failing_call(tokens, caller)) for caller in callers]
    await asyncio.sleep(0)
    fetcher.gate.set()
    errors = await asyncio.gather(*waiting)
    del callers, waiting
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None]
    assert errors == [("TokenUnavailable", "down", 30.0)] * 3
    assert len(fetcher.calls) == 1


async def test_an_unexpected_error_of_a_token_request_is_an_unavailability() -> None:
    clock = Clock()
    fetcher = ScriptedFetcher(clock, RuntimeError("bug"))
    tokens = source(fetcher, clock, max_attempts=2)
    with structlog.testing.capture_logs() as logs, pytest.raises(TokenUnavailable) as unavailable:
        await tokens.token()
    assert "RuntimeError" in unavailable.value.description
    assert isinstance(tokens.last_error, TokenUnavailable)
    assert len(fetcher.calls) == 2  # retried like any other unavailability
    failures = [entry for entry in logs if entry["event"] == "token_request_failed"]
    assert len(failures) == 2 and all(entry["exc_info"] for entry in failures)


async def test_the_refresher_outlives_unexpected_errors_of_token_requests() -> None:
    clock = Clock()
    fetcher = ScriptedFetcher(clock, RuntimeError("bug"), RuntimeError("bug"), 3600.0)
    tokens = source(fetcher, clock, max_attempts=1, sleep=clock.sleep)
    refresher = asyncio.create_task(tokens.run())
    try:
        async with asyncio.timeout(5):
            while tokens.current is None and not refresher.done():
                await asyncio.sleep(0)
        assert not refresher.done()
        assert tokens.current is not None and len(fetcher.calls) == 3
    finally:
        refresher.cancel()


async def run_for(tokens: TokenSource, clock: Clock, seconds: float) -> None:
    """Run the background refresher for `seconds` of virtual time."""
    refresher = asyncio.create_task(tokens.run())
    end = clock.now + seconds
    try:
        async with asyncio.timeout(10):
            while clock.now < end:
                assert not refresher.done()
                await asyncio.sleep(0)
    finally:
        refresher.cancel()


def through_an_outage(fetcher: ScriptedFetcher, clock: Clock) -> TokenSource:
    """A token source with the production backoff, in virtual time."""
    return source(
        fetcher,
        clock,
        sleep=clock.sleep,
        backoff_initial=0.25,
        backoff_ceiling=30.0,
        max_attempts=5,
    )


def pauses(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


async def test_backoff_keeps_growing_through_an_outage_up_to_its_ceiling() -> None:
    clock = Clock()
    fetcher = ScriptedFetcher(clock, TokenUnavailable("503"))
    tokens = through_an_outage(fetcher, clock)
    await run_for(tokens, clock, 600)
    for number, gap in enumerate(pauses(fetcher.at)):
        step = min(30.0, 0.25 * 2**number)  # 0.25, 0.5, 1, 2, 4, 8, 16, then 30 s on
        assert step / 2 <= gap <= step, f"pause {number}"  # equal jitter
    assert len(fetcher.at) <= 8 + (600 - 31.75) / 15
    assert not isinstance(tokens.last_error, CapReached)  # the cap was never needed


async def test_backoff_starts_again_from_its_first_step_after_a_success() -> None:
    clock = Clock()
    down = TokenUnavailable("503")
    fetcher = ScriptedFetcher(clock, *[down] * 12, 600.0, down, 3600.0)
    tokens = through_an_outage(fetcher, clock)
    await run_for(tokens, clock, 1000)
    assert len(fetcher.at) == 15
    assert pauses(fetcher.at)[11] >= 15.0  # the outage had reached the ceiling
    assert pauses(fetcher.at)[13] <= 0.25  # a new outage starts with the first step


async def test_a_remembered_unavailability_tells_clients_when_the_next_attempt_is() -> None:
    clock = Clock()
    fetcher = ScriptedFetcher(clock, TokenUnavailable("503", retry_after=20.0))
    tokens = source(fetcher, clock, max_attempts=1)
    with pytest.raises(TokenUnavailable) as first:
        await tokens.token()
    assert first.value.retry_after == 20.0
    clock.now += 15.0
    with pytest.raises(TokenUnavailable) as remembered:
        await tokens.token()
    assert remembered.value.retry_after == pytest.approx(5.0)
    assert len(fetcher.calls) == 1


async def test_a_retry_after_longer_than_a_request_waits_ends_the_attempts_at_once() -> None:
    clock = Clock()
    fetcher = ScriptedFetcher(clock, TokenUnavailable("429", retry_after=60.0))
    tokens = source(fetcher, clock, sleep=clock.sleep, wait_timeout=30.0)
    with pytest.raises(TokenUnavailable) as unavailable:
        await tokens.token()
    assert unavailable.value.retry_after == 60.0
    assert len(fetcher.calls) == 1


def test_backoff_stays_at_its_ceiling_however_long_the_outage() -> None:
    assert 15.0 <= backoff(5000, 0.25, 30.0) <= 30.0


async def test_closing_the_source_answers_its_waiters_with_token_unavailable() -> None:
    clock = Clock()
    fetcher = ScriptedFetcher(clock, 3600.0)
    fetcher.gate = asyncio.Event()  # the token request hangs
    tokens = source(fetcher, clock)
    waiting = asyncio.create_task(tokens.token())
    while not fetcher.calls:  # the request is in flight
        await asyncio.sleep(0)
    await tokens.close()
    with pytest.raises(TokenUnavailable, match="shutting down"):
        await waiting
