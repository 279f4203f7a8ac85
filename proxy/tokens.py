"""The one token all requests share: fetched once for everyone (single flight), renewed in the
background before it expires, retried with backoff, and never requested more often than a cap."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, InitVar, dataclass, field
from typing import Protocol, runtime_checkable

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    stop_before_delay,
)

from proxy.errors import TokenError, TokenRejected, TokenUnavailable
from proxy.token_endpoint import Token

log = structlog.get_logger("proxy.tokens")


class TokenFetcher(Protocol):
    async def fetch(self) -> Token: ...


@runtime_checkable
class RejectionAware(Protocol):
    """A fetcher told which token the upstream refused: a fleet evicts only that shared token."""

    def rejected(self, token: Token) -> None: ...


class CountedFetcher:
    """Tells `on_attempt` each token request's outcome (success, rejected, unavailable) and
    duration. It wraps the token endpoint itself: only requests really sent count, whoever asks."""

    def __init__(self, fetcher: TokenFetcher, on_attempt: Callable[[str, float], None]) -> None:
        self.fetcher, self.on_attempt = fetcher, on_attempt

    async def fetch(self) -> Token:
        started = time.monotonic()
        outcome = "unavailable"
        try:
            token = await self.fetcher.fetch()
            outcome = "success"
            return token
        except TokenRejected:
            outcome = "rejected"
            raise
        finally:
            self.on_attempt(outcome, time.monotonic() - started)


class CapReached(TokenUnavailable):
    """The proxy's own per-minute cap on token requests is used up."""


@dataclass(eq=False)
class RequestCap:
    """At most `limit` events in any sliding window of `window` seconds."""

    limit: int
    window: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _times: deque[float] = field(default_factory=deque, init=False, repr=False)

    def try_acquire(self) -> float:
        """Take a slot and return 0, or return the seconds until one frees."""
        now = self.clock()
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return self._times[0] + self.window - now
        self._times.append(now)
        return 0.0


@dataclass(frozen=True)
class _Failure:
    error: TokenError
    until: float


def backoff(attempt: int, initial: float, ceiling: float) -> float:
    """Exponential backoff with equal jitter: half fixed, half random."""
    # The exponent stops at 64: 2.0 ** 1024 overflows, and an outage can last that many attempts.
    base = min(ceiling, initial * 2.0 ** min(attempt - 1, 64))
    jitter: float = random.uniform(0, base / 2)  # noqa: S311 - jitter, not security
    return base / 2 + jitter


@dataclass(eq=False, repr=False)
class TokenSource:
    fetcher: TokenFetcher
    _: KW_ONLY
    refresh_margin: float = 300.0
    requests_per_minute: InitVar[int] = 20
    wait_timeout: float = 30.0
    max_attempts: int = 5
    backoff_initial: float = 0.25
    backoff_ceiling: float = 30.0
    rejection_ttl: float = 30.0
    clock: Callable[[], float] = time.monotonic
    # With the clock, lets tests run the refresher in virtual time.
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    current: Token | None = field(default=None, init=False)
    _failure: _Failure | None = field(default=None, init=False)
    _unavailable_in_a_row: int = field(default=0, init=False)  # failed requests since a success
    _last_request_failed: str | None = field(default=None, init=False)  # why, if it failed
    _inflight: asyncio.Task[Token] | None = field(default=None, init=False)

    def __post_init__(self, requests_per_minute: int) -> None:
        self.cap = RequestCap(requests_per_minute, clock=self.clock)

    @property
    def last_error(self) -> TokenError | None:
        """Why the last token request failed, while that is remembered."""
        return self._failure.error if self._failure is not None else None

    def seconds_left(self) -> float:
        token = self.valid_token()
        return max(0.0, token.expires_at - self.clock()) if token is not None else 0.0

    def valid_token(self) -> Token | None:
        token = self.current
        return token if token is not None and token.is_valid(self.clock()) else None

    async def token(self) -> Token:
        """The shared token; waits only when there is no valid one."""
        now = self.clock()
        token = self.current
        if token is not None and token.is_valid(now):
            if now >= token.refresh_at(self.refresh_margin) and not self._failing(now):
                self._start_refresh()
            return token
        if self._failure is not None and self._failing(now):
            raise _fresh(self._failure.error, retry_after=self._failure.until - now)
        return await self._await_refresh()

    async def renew(self, rejected: Token) -> Token:
        """The upstream refused `rejected`: renew it unless someone already has."""
        if self.current is rejected:
            self.current = None
            self._failure = None
            log.info("token_evicted", reason="upstream answered 401")
            if isinstance(self.fetcher, RejectionAware):
                self.fetcher.rejected(rejected)
        return await self.token()

    async def run(self) -> None:
        """Keep a fresh token: fetch at start, renew before the margin, wait out failures."""
        while True:
            now = self.clock()
            token = self.current
            if token is not None and now < token.refresh_at(self.refresh_margin):
                delay = token.refresh_at(self.refresh_margin) - now
            elif self._failure is not None and self._failing(now):
                delay = self._failure.until - now
            else:
                with contextlib.suppress(TokenError):
                    await asyncio.shield(self._start_refresh())
                continue
            await self.sleep(delay)

    async def close(self) -> None:
        """Stop a token request still in flight: the session it uses is about to close, and it
        would otherwise retry on it until --token-timeout."""
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
            await asyncio.wait((self._inflight,))

    def _failing(self, now: float) -> bool:
        return self._failure is not None and now < self._failure.until

    def _start_refresh(self) -> asyncio.Task[Token]:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._refresh())
            self._inflight.add_done_callback(_consume_exception)
        return self._inflight

    async def _await_refresh(self) -> Token:
        # asyncio.wait neither cancels the shared fetch nor raises its error: the error object is
        # shared by every waiter, and raising it again would chain each waiter's frame onto it.
        task = self._start_refresh()
        await asyncio.wait((task,), timeout=self.wait_timeout)
        if not task.done():
            raise TokenUnavailable(
                "no token yet: the token endpoint has not answered within --token-timeout;"
                " check AGENTSYNC_TOKEN_URL and the network",
                retry_after=self.backoff_initial * 4,
            )
        if task.cancelled():  # by close(): the proxy is stopping
            raise TokenUnavailable(
                "the token request was stopped: the proxy is shutting down", retry_after=1.0
            )
        error = task.exception()
        if error is not None:
            raise _fresh(error)
        return task.result()

    async def _refresh(self) -> Token:
        try:
            token = await self._fetch_with_retries()
        except TokenRejected as exc:
            self._failure = _Failure(exc, self.clock() + self.rejection_ttl)
            log.error("token_request_rejected", error=exc.description)
            raise
        except Exception as exc:  # whatever went wrong, the failure is remembered and reported
            error = exc if isinstance(exc, TokenUnavailable) else _unexpected(exc)
            pause = self._pause(error)
            self._failure = _Failure(error, self.clock() + pause)
            log.error("token_unavailable", error=error.description, retry_after=round(pause, 3))
            # Clients are told to come back when the next token request is due.
            raise _fresh(error, retry_after=pause) from None
        self.current = token
        self._failure = None
        log.info("token_obtained", expires_in=round(token.lifetime), scope=token.scope)
        return token

    async def _fetch_with_retries(self) -> Token:
        # A first failure gets a few quick retries; after those, each round is one request, its
        # pause growing until one succeeds (see _pause). A round also ends rather than make its
        # waiters wait past --token-timeout (a long Retry-After): they get the 503 at once.
        attempts = self.max_attempts if self._unavailable_in_a_row == 0 else 1
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TokenUnavailable)
            & retry_if_not_exception_type(CapReached),
            stop=stop_after_attempt(attempts) | stop_before_delay(self.wait_timeout),
            wait=self._wait,
            before_sleep=_log_retry,
            sleep=self.sleep,
            reraise=True,
        )
        return await retrying.wraps(self._attempt)()

    async def _attempt(self) -> Token:
        wait = self.cap.try_acquire()
        if wait:
            raise CapReached(self._cap_reached_description(), retry_after=wait)
        try:
            token = await self.fetcher.fetch()
            self._unavailable_in_a_row, self._last_request_failed = 0, None
            return token
        except TokenRejected as exc:
            self._last_request_failed = exc.description
            raise
        except Exception as exc:  # unforeseen answers and bugs are retried like a 503 too
            error = exc if isinstance(exc, TokenUnavailable) else _unexpected(exc)
            self._unavailable_in_a_row += 1
            self._last_request_failed = error.description
            raise error from None

    def _cap_reached_description(self) -> str:
        used_up = (
            "the proxy's cap on token requests per minute (--token-requests-per-minute) is used up"
        )
        if self._last_request_failed is not None:
            return f"{used_up} by failed token requests; the last one: {self._last_request_failed}"
        return (
            f"{used_up} by token renewals: the API may be answering 401 to every new token"
            " (check that AGENTSYNC_ENVIRONMENT and the credentials match --api-base-url), or"
            " tokens live only seconds"
        )

    def _wait(self, state: RetryCallState) -> float:
        return self._pause(state.outcome.exception() if state.outcome else None)

    def _pause(self, error: BaseException | None) -> float:
        """The pause before the next token request: the backoff, or a longer Retry-After."""
        failed = max(1, self._unavailable_in_a_row)
        delay = backoff(failed, self.backoff_initial, self.backoff_ceiling)
        retry_after = error.retry_after if isinstance(error, TokenUnavailable) else None
        if retry_after is not None and retry_after > delay:
            return min(retry_after, self.backoff_ceiling * 4)
        return delay


def _unexpected(error: Exception) -> TokenUnavailable:
    """An unforeseen error of a token request as an unavailability, so that it cannot end the
    background refresher. Its traceback goes to the log; clients get its type only."""
    log.error("token_request_failed", exc_info=error)
    return TokenUnavailable(
        f"the token request failed unexpectedly ({type(error).__name__}); the proxy retries with"
        " backoff; its log has the details (token_request_failed)"
    )


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning(
        "token_request_retry",
        attempt=state.attempt_number,
        error=getattr(error, "description", type(error).__name__),
        retry_in=round(state.upcoming_sleep, 3),
    )


def _fresh(error: BaseException, retry_after: float | None = None) -> BaseException:
    """A copy of a remembered error, to raise without its traceback: raising the stored object
    again would append every caller's frames to it and keep their requests in memory."""
    if not isinstance(error, TokenError):
        return error
    fresh = copy.copy(error)
    fresh.__traceback__ = None
    if retry_after is not None and isinstance(fresh, TokenUnavailable):
        fresh.retry_after = retry_after
    return fresh


def _consume_exception(task: asyncio.Task[Token]) -> None:
    if not task.cancelled():
        task.exception()
