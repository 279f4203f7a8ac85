"""The API's rate limit on the wire: requests held under the budget the upstream announces, a
request that would wait too long refused at once, an upstream 429 waited out and replayed once."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from proxy.keys import METRICS
from proxy.servers import (
    RunningProxy,
    RunningSimulator,
    running_proxy,
    running_simulator,
    settings_for,
)
from proxy.simulator import SimulatorConfig
from tests.conftest import ProxyFactory
from tests.rawhttp import RawUpstream, Received, Writer, response_bytes

pytestmark = pytest.mark.usefixtures("nothing_leaked")


def budget(remaining: int, reset: int, limit: int = 300) -> list[tuple[str, str]]:
    return [
        ("Content-Type", "application/json"),
        ("ratelimit-limit", str(limit)),
        ("ratelimit-remaining", str(remaining)),
        ("ratelimit-reset", str(reset)),
    ]


def too_many(retry_after: str) -> bytes:
    headers = [*budget(0, 1), ("Retry-After", retry_after)]
    return response_bytes(429, b'{"status": 429, "error": "Too Many Requests"}', headers)


def answers(upstream: RawUpstream, choose: Callable[[Received, int], bytes]) -> list[float]:
    """The upstream answers the n-th request it receives with choose(request, n); returns the
    list of arrival times (time.monotonic) it fills."""
    arrivals: list[float] = []

    async def respond(received: Received, writer: Writer) -> None:
        arrivals.append(time.monotonic())
        writer.write(choose(received, len(arrivals) - 1))
        await writer.drain()

    upstream.responder = respond
    return arrivals


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes, dict[str, str]]:
    async with session.get(url) as response:
        return response.status, await response.read(), dict(response.headers)


def sample(proxy: RunningProxy, name: str) -> float:
    return proxy.app[METRICS].registry.get_sample_value(name) or 0.0


async def test_wait_over_budget_gets_429_rate_limited_at_once(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    answers(upstream, lambda _, n: response_bytes(200, b"{}", budget(0, 60)))
    proxy = await make_proxy(rate_limit_wait=5.0)
    async with aiohttp.ClientSession() as session:
        assert (await fetch(session, proxy.url + "/v1/first"))[0] == 200  # spends the window
        started = time.monotonic()
        status, body, headers = await fetch(session, proxy.url + "/v1/second")
        took = time.monotonic() - started
    assert status == 429
    assert b'"error": "rate_limited"' in body
    assert 55 <= int(headers["Retry-After"]) <= 60
    assert took < 0.5  # answered at once, not after waiting
    assert [received.target for received in upstream.received] == ["/v1/first"]
    assert sample(proxy, "agentsync_proxy_rate_limited_total") == 1


async def test_upstream_429_holds_every_request_and_replays_once(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    arrivals = answers(
        upstream, lambda _, n: too_many("1") if n == 0 else response_bytes(200, b"{}")
    )
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session:
        first = asyncio.ensure_future(fetch(session, proxy.url + "/v1/first"))
        while not arrivals:  # the 429 is in: the pause has begun
            await asyncio.sleep(0.01)
        others = await asyncio.gather(*(fetch(session, f"{proxy.url}/v1/o{i}") for i in range(4)))
        status, _, _ = await first
    assert status == 200 and [other[0] for other in others] == [200] * 4
    targets = [received.target for received in upstream.received]
    assert targets.count("/v1/first") == 2  # replayed once
    assert len(targets) == 6
    # Nothing reached the upstream during the pause the 429 named.
    assert all(arrival - arrivals[0] >= 0.9 for arrival in arrivals[1:])
    assert sample(proxy, "agentsync_proxy_upstream_rate_limited_total") == 1


async def test_second_429_goes_to_the_client_unchanged(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    answers(upstream, lambda _, n: too_many("1"))
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session:
        status, body, headers = await fetch(session, proxy.url + "/v1/x")
    assert (status, body) == (429, b'{"status": 429, "error": "Too Many Requests"}')
    assert headers["Retry-After"] == "1"
    assert len(upstream.received) == 2  # the request and its one replay


async def test_a_429_whose_pause_exceeds_the_wait_goes_to_the_client_unchanged(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    answers(upstream, lambda _, n: too_many("120"))
    proxy = await make_proxy(rate_limit_wait=5.0)
    async with aiohttp.ClientSession() as session:
        status, body, headers = await fetch(session, proxy.url + "/v1/x")
    assert (status, headers["Retry-After"]) == (429, "120")
    assert b"Too Many Requests" in body
    assert len(upstream.received) == 1


async def test_post_replayed_after_429_is_identical(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    answers(upstream, lambda _, n: too_many("1") if n == 0 else response_bytes(201, b"{}"))
    proxy = await make_proxy(spool_threshold=16 * 1024)
    body = os.urandom(300 * 1024)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            proxy.url + "/v1/products", data=body, headers={"X-Custom": "kept"}
        ) as response,
    ):
        assert response.status == 201
    first, second = upstream.received
    assert first.body_sha256 == second.body_sha256 == hashlib.sha256(body).hexdigest()
    assert (first.method, first.target) == (second.method, second.target)
    assert first.headers == second.headers  # same token: a 429 needs no renewal


async def test_held_client_that_leaves_frees_its_slot(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    # The window is spent for 2 s; after the reset one request a minute (limit 1).
    arrivals = answers(upstream, lambda _, n: response_bytes(200, b"{}", budget(0, 2, limit=1)))
    proxy = await make_proxy(rate_limit_wait=30.0)
    async with aiohttp.ClientSession() as session:
        assert (await fetch(session, proxy.url + "/v1/first"))[0] == 200
        leaving = asyncio.ensure_future(fetch(session, proxy.url + "/v1/leaves"))
        async with asyncio.timeout(10):
            while not sample(proxy, "agentsync_proxy_requests_in_flight"):
                await asyncio.sleep(0.01)
        leaving.cancel()  # the client hangs up while held
        with pytest.raises(asyncio.CancelledError):
            await leaving
        started = time.monotonic()
        status, _, _ = await fetch(session, proxy.url + "/v1/next")
    # The next request takes the slot given back at the reset, not one a minute later.
    assert status == 200
    assert time.monotonic() - started < 10
    assert [received.target for received in upstream.received] == ["/v1/first", "/v1/next"]
    assert arrivals[1] - arrivals[0] >= 1.5


async def test_off_turns_pacing_off(make_proxy: ProxyFactory, upstream: RawUpstream) -> None:
    answers(upstream, lambda _, n: response_bytes(200, b"{}", budget(0, 60)))
    proxy = await make_proxy(pacing="off")
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(fetch(session, f"{proxy.url}/v1/{i}") for i in range(5)))
    assert [result[0] for result in results] == [200] * 5
    assert sample(proxy, "agentsync_proxy_rate_limit_held_total") == 0


async def test_auto_holds_nothing_when_nothing_is_announced(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    answers(upstream, lambda _, n: response_bytes(200, b"{}"))
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(fetch(session, f"{proxy.url}/v1/{i}") for i in range(50)))
    assert [result[0] for result in results] == [200] * 50
    assert sample(proxy, "agentsync_proxy_rate_limit_held_total") == 0


async def test_ratelimit_headers_pass_through(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    answers(upstream, lambda _, n: response_bytes(200, b"{}", budget(250, 42, limit=300)))
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session:
        status, _, headers = await fetch(session, proxy.url + "/v1/x")
    assert status == 200
    assert (headers["ratelimit-limit"], headers["ratelimit-remaining"]) == ("300", "250")
    assert headers["ratelimit-reset"] == "42"
    assert sample(proxy, "agentsync_proxy_rate_limit_remaining") == 250


class OffsetClock:
    """The simulator's clock: real time, plus whatever the test skips ahead."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped


async def stats(session: aiohttp.ClientSession, simulator: RunningSimulator) -> dict[str, Any]:
    async with session.get(simulator.url + "/_simulator/stats") as response:
        result: dict[str, Any] = await response.json()
        return result


async def test_backlog_drains_evenly_under_the_limit() -> None:
    config = SimulatorConfig(api_requests_per_minute=120)
    async with (
        running_simulator(config) as simulator,
        running_proxy(settings_for(simulator)) as proxy,
        aiohttp.ClientSession() as session,
    ):
        url = proxy.url + "/v2/entities/17345829"
        assert (await fetch(session, url))[0] == 200  # the API announces its budget

        async def timed() -> tuple[int, float]:
            status, _, _ = await fetch(session, url)
            return status, time.monotonic()

        started = time.monotonic()
        results = await asyncio.gather(*(timed() for _ in range(40)))
        calls = (await stats(session, simulator))["api_calls"]
    assert [status for status, _ in results] == [200] * 40
    assert "429" not in calls
    times = sorted(at - started for _, at in results)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # One every 60/119 s: 0.5 s apart, not in a burst (a loaded machine may bunch a pair).
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.5, abs=0.1)
    assert sum(gap < 0.1 for gap in gaps) <= 2
    assert 17 <= times[-1] <= 30


async def test_auto_follows_the_announced_remaining_and_reset() -> None:
    clock = OffsetClock()
    config = SimulatorConfig(api_requests_per_minute=10)
    async with (
        running_simulator(config, clock=clock) as simulator,
        running_proxy(settings_for(simulator)) as proxy,
        aiohttp.ClientSession() as session,
    ):
        url = proxy.url + "/v2/entities/17345829"
        assert (await fetch(session, url))[0] == 200  # 9 left in this window
        clock.skipped = 57.0  # the window resets in 3 s
        # Another application with the same client id spends all but one call, directly.
        form = {"grant_type": "client_credentials", "client_id": config.client_id}
        form["client_secret"] = config.client_secret
        async with session.post(simulator.token_url, data=form) as response:
            token = (await response.json())["access_token"]
        for _ in range(8):
            direct = simulator.url + "/v2/entities/17345829"
            async with session.get(direct, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
        status, _, headers = await fetch(session, url)  # the last call of the window
        assert (status, headers["ratelimit-remaining"]) == (200, "0")
        started = time.monotonic()
        status, _, headers = await fetch(session, url)  # held until the reset
        held = time.monotonic() - started
        calls = (await stats(session, simulator))["api_calls"]
    assert status == 200 and headers["ratelimit-remaining"] == "9"
    assert 1.5 <= held <= 10
    assert "429" not in calls
