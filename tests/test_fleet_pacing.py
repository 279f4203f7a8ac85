"""One rate budget for a fleet on a real redis-server: three real replicas paced as one under the
simulator's limit; in process, a 429 on one replica holding another, each replica on its share
while Redis is down and sharing again after, and a slot given back to the whole fleet."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import structlog
from multidict import CIMultiDict
from redis.asyncio import Redis

from proxy.credentials import Secret
from proxy.fleet import Fleet
from proxy.fleet_pacing import RedisPacingState
from proxy.metrics import Metrics
from proxy.pacing import Pacer, Ticket
from proxy.servers import RunningSimulator, settings_for
from proxy.simulator import SimulatorConfig
from tests.redis_server import RedisServer, running_redis
from tests.test_fleet import PATH, fleet, fleet_env

PortFactory = Callable[[], int]
HEARTBEAT = 0.2  # seconds: the in-process replicas hear of each other quickly


@pytest.fixture
def agentsync_simulator_config() -> SimulatorConfig:
    return SimulatorConfig(api_requests_per_minute=120)


@pytest.fixture
async def redis_server(unused_tcp_port_factory: PortFactory) -> AsyncIterator[RedisServer]:
    async with running_redis(unused_tcp_port_factory()) as server:
        yield server


async def stats(simulator: RunningSimulator) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(simulator.url + "/_simulator/stats") as response,
    ):
        body = await response.json()
        assert isinstance(body, dict)
        return body


async def test_fleet_paces_under_one_limit(
    agentsync_simulator: RunningSimulator,
    redis_server: RedisServer,
    unused_tcp_port_factory: PortFactory,
    tmp_path: Path,
) -> None:
    env = fleet_env(
        agentsync_simulator,
        redis_server.url(),
        AGENTSYNC_PROXY_API_REQUESTS_PER_MINUTE="auto",
        AGENTSYNC_PROXY_RATE_LIMIT_WAIT="60",
    )
    async with (
        fleet([env] * 3, unused_tcp_port_factory, tmp_path) as replicas,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
    ):

        async def get(url: str) -> tuple[int, float]:
            async with session.get(url + PATH) as response:
                await response.read()
                return response.status, time.monotonic()

        # Each replica hears the budget from an answer of its own (119, 118, 117 left).
        for replica in replicas:
            assert (await get(replica.url))[0] == 200
        answers = await asyncio.gather(*(get(replicas[i % 3].url) for i in range(60)))

    assert [status for status, _ in answers] == [200] * 60
    calls = (await stats(agentsync_simulator))["api_calls"]
    assert isinstance(calls, dict) and calls.get("200") == 63 and "429" not in calls
    # About 60 / 117 s apart across the fleet: three paces of their own would take a third.
    times = sorted(when for _, when in answers)
    assert times[-1] - times[0] >= 25


@asynccontextmanager
async def replicas(
    simulator: RunningSimulator,
    redis: RedisServer,
    count: int,
    per_minute: int | None = None,
    heartbeat: float = HEARTBEAT,
) -> AsyncIterator[list[RedisPacingState]]:
    """`count` replicas' pacing states on one Redis, once each has seen them all alive."""
    settings = settings_for(simulator, redis_url=Secret(redis.url()))
    async with AsyncExitStack() as stack:
        fleets = []
        for _ in range(count):
            member = Fleet.for_settings(settings)
            member.heartbeat = heartbeat
            await member.start()
            stack.push_async_callback(member.close)
            fleets.append(member)
        async with asyncio.timeout(10):
            while any(member.replicas_alive < count for member in fleets):
                await asyncio.sleep(heartbeat / 4)
        yield [await RedisPacingState.joined(member, per_minute) for member in fleets]


def budget(remaining: int, reset: int, retry_after: int | None = None) -> CIMultiDict[str]:
    headers = CIMultiDict({"RateLimit-Remaining": str(remaining), "RateLimit-Reset": str(reset)})
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return headers


async def holds(pacer: Pacer, count: int) -> list[float]:
    """How long each of `count` requests arriving together is held, shortest first."""
    tickets: Sequence[Ticket] = await asyncio.gather(*(pacer.hold() for _ in range(count)))
    for ticket in tickets:
        await pacer.answered(ticket, 200, CIMultiDict())
    return sorted(ticket.held for ticket in tickets)


def one_pace(holds: Sequence[list[float]]) -> bool:
    """Whether the requests of several replicas left one at a time: only one at once."""
    every = sorted(held for replica in holds for held in replica)
    return every[0] == 0.0 and every[1] >= 0.05


async def test_an_upstream_429_on_one_replica_holds_another(
    agentsync_simulator: RunningSimulator, redis_server: RedisServer
) -> None:
    async with replicas(agentsync_simulator, redis_server, 2) as (first, second):
        one, other = Pacer(first, 30.0, Metrics()), Pacer(second, 30.0, Metrics())
        await one.answered(await one.hold(), 200, budget(100, 60))
        async with asyncio.timeout(10):  # the other replica hears of it at its heartbeat
            while second.interval < 0.5:
                await asyncio.sleep(HEARTBEAT / 4)
        ticket = await one.hold()
        assert await one.answered(ticket, 429, budget(0, 60, retry_after=2)) == 2
        started = time.monotonic()
        held = (await other.hold()).held
    assert 1.5 <= held <= time.monotonic() - started
    assert other.metrics.registry.get_sample_value("agentsync_proxy_rate_limit_held_total") == 1


async def test_a_429_reaches_a_replica_pacing_alone_at_its_heartbeat(
    agentsync_simulator: RunningSimulator, redis_server: RedisServer
) -> None:
    async with replicas(agentsync_simulator, redis_server, 2) as (first, second):
        one, other = Pacer(first, 30.0, Metrics()), Pacer(second, 30.0, Metrics())
        assert await holds(other, 5) == [0.0] * 5  # nothing announced: nothing asks Redis
        await one.answered(await one.hold(), 429, budget(0, 3, retry_after=3))
        async with asyncio.timeout(10):
            while second.paused_until < time.monotonic():
                await asyncio.sleep(HEARTBEAT / 4)
        held = (await other.hold()).held
    assert held >= 1.5


async def test_with_redis_down_each_replica_paces_on_its_share_then_shares_again(
    agentsync_simulator: RunningSimulator, redis_server: RedisServer
) -> None:
    # A cap of 600 a minute for the fleet: one every 0.1 s; each of 3 replicas alone, 0.3 s.
    async with replicas(agentsync_simulator, redis_server, 3, per_minute=600) as states:
        pacers = [Pacer(state, 30.0, Metrics()) for state in states]
        assert one_pace(await asyncio.gather(holds(pacers[0], 2), holds(pacers[1], 2)))

        with structlog.testing.capture_logs() as logs:
            await redis_server.kill()
            alone = await asyncio.gather(holds(pacers[0], 3), holds(pacers[1], 3))
            for held in alone:  # each at once, then 0.3 s apart
                assert held[0] == 0.0, alone
                assert all(held[i] >= 0.3 * i - 0.05 for i in range(3)), alone

            await redis_server.start()  # the same port, empty
            async with asyncio.timeout(10):
                while not all(state.fleet.link.up for state in states):
                    await asyncio.sleep(HEARTBEAT / 4)
            await asyncio.sleep(2 * HEARTBEAT)  # a heartbeat after Redis was found again
            again = await asyncio.gather(holds(pacers[0], 3), holds(pacers[1], 3))

    assert one_pace(again)
    assert max(max(held) for held in again) < 0.8, again  # 0.1 s apart, not 0.3 on each
    warnings = [entry for entry in logs if entry["log_level"] in ("warning", "error")]
    assert {entry["event"] for entry in warnings} == {"redis_unavailable"}
    assert len(warnings) <= 3  # one a replica, from its link


async def test_a_held_request_that_goes_away_gives_its_slot_to_another_replica(
    agentsync_simulator: RunningSimulator, redis_server: RedisServer
) -> None:
    # A cap of 60 a minute for the fleet: one a second.
    async with replicas(agentsync_simulator, redis_server, 2, per_minute=60) as (first, second):
        sleeping = asyncio.Event()

        async def sleep(seconds: float) -> None:
            sleeping.set()
            await asyncio.sleep(seconds)

        one, other = Pacer(first, 30.0, Metrics(), sleep=sleep), Pacer(second, 30.0, Metrics())
        await one.answered(await one.hold(), 200, CIMultiDict())  # slot 0
        leaving = asyncio.create_task(one.hold())  # slot 1, held
        await sleeping.wait()
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        taken = (await other.hold()).held  # slot 1, given back
        after = (await other.hold()).held  # slot 2
    assert taken < 1.5  # not slot 2, about 2 s away
    assert after >= 0.5  # slot 2 was still a second after slot 1


async def test_requests_in_flight_count_only_while_their_replica_is_alive(
    agentsync_simulator: RunningSimulator, redis_server: RedisServer
) -> None:
    # No heartbeat during the test: the replica stays in the fleet's set until it is taken out.
    async with replicas(agentsync_simulator, redis_server, 1, heartbeat=60) as (state,):
        pacer = Pacer(state, 30.0, Metrics())
        await pacer.answered(await pacer.hold(), 200, budget(1000, 10))  # 0.01 s apart
        tickets = [await pacer.hold() for _ in range(4)]  # in flight
        await pacer.answered(tickets[0], 200, budget(10, 10))
        assert state.interval == pytest.approx(10 / (10 - 3))  # three still in flight
        # As when the replica's heartbeats stop: it ages out of the replicas alive.
        client = Redis.from_url(redis_server.url())
        try:
            assert await client.zrem(state.fleet.key("replicas"), state.fleet.replica) == 1
        finally:
            await client.aclose()
        await pacer.answered(tickets[1], 200, budget(10, 10))
        assert state.interval == pytest.approx(10 / 10)  # its requests no longer count
