"""The fleet's token and its Redis connection, in process, on a real redis-server and the
simulator: eviction by fingerprint, the fleet's cap, damaged entries, bounds and secrecy."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
from redis.asyncio import Redis

from proxy import clients
from proxy.credentials import Secret
from proxy.errors import TokenUnavailable
from proxy.fleet import Fleet
from proxy.fleet_tokens import FleetTokenFetcher, join_fleet
from proxy.redis_link import RedisLink, RedisUnavailable
from proxy.servers import RunningSimulator, settings_for
from proxy.settings import Settings
from proxy.token_endpoint import TokenEndpoint
from proxy.tokens import CapReached, TokenSource
from tests.redis_server import RedisServer, running_redis

PortFactory = Callable[[], int]


@pytest.fixture
async def redis_server(unused_tcp_port_factory: PortFactory) -> AsyncIterator[RedisServer]:
    async with running_redis(unused_tcp_port_factory()) as server:
        yield server


@asynccontextmanager
async def replica(
    settings: Settings, on_redis: Callable[[bool], None] | None = None
) -> AsyncIterator[tuple[Fleet, FleetTokenFetcher]]:
    """What a proxy with a Redis URL builds: the fleet and the token endpoint wrapped for it."""
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(clients.token_session(settings))
        endpoint = TokenEndpoint(session, settings)
        fleet, fetcher = await join_fleet(settings, endpoint, on_redis=on_redis)
        stack.push_async_callback(fleet.close)
        yield fleet, fetcher


def as_bytes(value: object) -> bytes:
    assert isinstance(value, bytes), value
    return value


def fleet_settings(simulator: RunningSimulator, url: str, **overrides: Any) -> Settings:
    return settings_for(simulator, redis_url=Secret(url), **overrides)


async def shared_entries(url: str) -> dict[bytes, bytes]:
    """The token entries in Redis, by key."""
    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match="agentsync-proxy:*:token:*")]
        return {key: as_bytes(await client.get(key)) for key in keys}
    finally:
        await client.aclose()


async def test_a_late_401_does_not_evict_a_newer_token(
    agentsync_simulator: RunningSimulator, redis_server: RedisServer
) -> None:
    settings = fleet_settings(agentsync_simulator, redis_server.url())
    async with replica(settings) as (_, first), replica(settings) as (_, second):
        old = await first.fetch()
        assert (await second.fetch()).value == old.value  # shared, not requested again
        first.rejected(old)
        new = await first.fetch()
        assert new.value != old.value
        second.rejected(old)  # the same 401, seen later by the other replica
        assert (await second.fetch()).value == new.value
    assert agentsync_simulator.state.token_requests == 2


async def test_the_fleets_cap_counts_every_replicas_token_requests(
    agentsync_simulator: RunningSimulator, redis_server: RedisServer
) -> None:
    settings = fleet_settings(agentsync_simulator, redis_server.url(), token_requests_per_minute=2)
    async with replica(settings) as (_, first), replica(settings) as (_, second):
        first.rejected(await first.fetch())
        second.rejected(await first.fetch())
        with pytest.raises(CapReached) as refused:
            await second.fetch()
    assert refused.value.retry_after is not None and 0 < refused.value.retry_after <= 60
    assert "fleet's cap" in refused.value.description
    assert agentsync_simulator.state.token_requests == 2


async def test_a_failed_token_request_releases_the_fleets_lock(
    agentsync_simulator: RunningSimulator, redis_server: RedisServer
) -> None:
    agentsync_simulator.state.add_fault(503, 1, 0.0)
    settings = fleet_settings(agentsync_simulator, redis_server.url())
    async with replica(settings) as (_, first), replica(settings) as (_, second):
        with pytest.raises(TokenUnavailable):
            await first.fetch()
        started = time.monotonic()
        await second.fetch()  # at once: no lock left behind to wait out
        assert time.monotonic() - started < 5
    assert agentsync_simulator.state.token_requests == 2


async def test_a_damaged_shared_token_is_replaced_not_used(
    agentsync_simulator: RunningSimulator, redis_server: RedisServer
) -> None:
    settings = fleet_settings(agentsync_simulator, redis_server.url())
    async with replica(settings) as (_, fetcher):
        stored = await fetcher.fetch()
    ((key, entry),) = (await shared_entries(redis_server.url())).items()
    client = Redis.from_url(redis_server.url())
    try:
        damaged = entry[:-1] + bytes([entry[-1] ^ 1])
        await client.set(key, damaged, keepttl=True)
    finally:
        await client.aclose()

    async with replica(settings) as (_, fetcher):
        token = await fetcher.fetch()
    assert token.value != stored.value
    assert agentsync_simulator.state.token_requests == 2
    assert await shared_entries(redis_server.url()) not in ({}, {key: damaged})


async def test_replicas_alive_counts_the_announced_replicas(
    agentsync_simulator: RunningSimulator, redis_server: RedisServer
) -> None:
    settings = fleet_settings(agentsync_simulator, redis_server.url())
    async with replica(settings) as (first, _):
        async with replica(settings) as (second, _):
            assert second.replicas_alive == 2
            await first.announce()
            assert first.replicas_alive == 2
        await first.announce()  # the second left on closing
        assert first.replicas_alive == 1
        assert first.link.up


async def test_redis_down_keeps_the_last_count_and_falls_back_to_a_token_of_its_own(
    agentsync_simulator: RunningSimulator, redis_server: RedisServer
) -> None:
    settings = fleet_settings(agentsync_simulator, redis_server.url())
    states: list[bool] = []
    async with replica(settings, states.append) as (first, fetcher), replica(settings):
        await first.announce()
        assert states == [True]  # from the first call on
        states.clear()
        await redis_server.kill()
        token = await fetcher.fetch()
        assert token.value.reveal() in agentsync_simulator.state.tokens.issued()
        assert first.replicas_alive == 2
        assert not first.link.up
        assert states == [False]
        await redis_server.start()
        await first.announce()
        assert first.link.up
        assert states == [False, True]


async def test_a_redis_that_does_not_answer_costs_one_bounded_wait(
    agentsync_simulator: RunningSimulator,
) -> None:
    connections: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = fleet_settings(agentsync_simulator, f"redis://127.0.0.1:{port}/0")
    try:
        started = time.monotonic()
        async with replica(settings) as (fleet, fetcher):
            assert not fleet.link.up
            assert time.monotonic() - started < 2  # one 100 ms wait on a loaded machine
            started = time.monotonic()
            await fetcher.fetch()  # a token of its own, without waiting on Redis again
            assert time.monotonic() - started < 2
            with pytest.raises(RedisUnavailable):
                await fleet.link.call(lambda redis: redis.ping())
        assert len(connections) == 1
        assert agentsync_simulator.state.token_requests == 1
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_the_redis_password_is_never_shown(
    agentsync_simulator: RunningSimulator, unused_tcp_port_factory: PortFactory
) -> None:
    password = "the-right-redis-password"
    async with running_redis(unused_tcp_port_factory(), "--requirepass", password) as redis:
        for given in (password, "a-wrong-redis-password"):
            settings = fleet_settings(agentsync_simulator, redis.url(given))
            link = RedisLink(settings)
            try:
                try:
                    await link.call(lambda client: client.ping())
                    shown = ""
                except RedisUnavailable as exc:
                    shown = str(exc)
                    assert "authentication failed" in shown
                fleet = Fleet(link, "test")
                for text in (shown, repr(link), repr(fleet), repr(link.client), str(settings)):
                    assert given not in text
            finally:
                await link.close()
        await redis.kill()
        link = RedisLink(fleet_settings(agentsync_simulator, redis.url(password)))
        try:
            with pytest.raises(RedisUnavailable) as refused:
                await link.call(lambda client: client.ping())
        finally:
            await link.close()
        assert str(refused.value) == (
            f"Redis at redis://127.0.0.1:{redis.port}/0: cannot connect (connection refused)"
        )


def test_without_a_redis_url_neither_redis_nor_cryptography_is_loaded() -> None:
    program = """
import asyncio, sys
import aiohttp
from proxy.servers import running_proxy, running_simulator, settings_for

async def main():
    async with running_simulator() as simulator:
        async with running_proxy(settings_for(simulator)) as proxy:
            async with aiohttp.ClientSession() as session:
                async with session.get(proxy.url + "/v2/entities/17345829") as response:
                    assert response.status == 200, response.status
    loaded = [name for name in sys.modules if name.split(".")[0] in ("redis", "cryptography")]
    print(sorted(loaded))

asyncio.run(main())
"""
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"  # after the proxy's log lines


async def test_background_renewals_are_shared(
    agentsync_simulator: RunningSimulator, redis_server: RedisServer
) -> None:
    agentsync_simulator.state.token_lifetime = 3.0  # renewed every 1.5 s
    settings = fleet_settings(agentsync_simulator, redis_server.url())
    async with AsyncExitStack() as stack:
        sources = []
        for _ in range(3):
            _, fetcher = await stack.enter_async_context(replica(settings))
            source = TokenSource(fetcher, refresh_margin=settings.refresh_margin)
            sources.append(source)
            stack.push_async_callback(stopped, asyncio.get_running_loop().create_task(source.run()))
            stack.push_async_callback(source.close)
        await asyncio.sleep(3.75)  # the renewals themselves are what this test watches
        tokens = {source.current.value.reveal() for source in sources if source.current}
    # 0 s, 1.5 s and 3 s for the whole fleet (a renewal late on a loaded machine adds one);
    # three replicas on their own would have made nine.
    assert 3 <= agentsync_simulator.state.token_requests <= 4
    assert len(tokens) == 1


async def stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_the_readmes_acl_allows_everything_the_fleet_does(
    agentsync_simulator: RunningSimulator, redis_server: RedisServer
) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    (line,) = [line for line in readme.splitlines() if line.startswith("ACL SETUSER ")]
    command = line.replace(">PASSWORD", ">the-acl-password").split()
    admin = Redis.from_url(redis_server.url())
    try:
        # redis-py leaves execute_command untyped
        answer = await admin.execute_command(*command)  # type: ignore[no-untyped-call]
        assert answer in (b"OK", "OK", True)
    finally:
        await admin.aclose()
    url = f"redis://agentsync-proxy:the-acl-password@127.0.0.1:{redis_server.port}/3"
    settings = fleet_settings(agentsync_simulator, url)
    states: list[bool] = []
    async with replica(settings) as (fleet, fetcher):
        fleet.link.add_listener(states.append)
        fetcher.rejected(await fetcher.fetch())
        await fetcher.fetch()
        await fleet.announce()
        assert fleet.link.up
    assert states == []  # never down: no command was refused
    assert agentsync_simulator.state.token_requests == 2


async def test_an_unreadable_password_file_means_serving_alone_with_one_warning(
    agentsync_simulator: RunningSimulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-file"
    settings = fleet_settings(agentsync_simulator, redis_server.url(), redis_password_file=missing)
    with structlog.testing.capture_logs() as logs:
        async with replica(settings) as (fleet, fetcher):
            assert not fleet.link.up
            with pytest.raises(RedisUnavailable) as refused:
                await fleet.link.probe(lambda redis: redis.ping())
            await fetcher.fetch()
    reason = f"cannot read the Redis password file {missing} (AGENTSYNC_PROXY_REDIS_PASSWORD_FILE)"
    assert str(refused.value) == reason
    assert [line["reason"] for line in logs if line["event"] == "redis_unavailable"] == [reason]
    assert agentsync_simulator.state.token_requests == 1
