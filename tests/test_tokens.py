"""Tokens end to end: one shared token, single flight, retries, rejections and the cap."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.credentials import ClientSecret, Secret
from proxy.keys import METRICS
from proxy.servers import RunningProxy, RunningSimulator, running_proxy, settings_for
from tests.conftest import ProxyFactory
from tests.leaks import tasks_left, until
from tests.rawhttp import AnswersAtOnce, RawUpstream, reply

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]

# Every fault, once its proxy and servers have closed, leaves nothing behind.
pytestmark = pytest.mark.usefixtures("nothing_leaked")


async def get_all(url: str, count: int, path: str = "/v1/x") -> list[int]:
    connector = aiohttp.TCPConnector(limit=count)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            async with session.get(url + path) as response:
                await response.read()
                return response.status

        return list(await asyncio.gather(*(one() for _ in range(count))))


class GatedTokenEndpoint:
    """A token endpoint that holds every answer until the test opens the gate."""

    def __init__(self) -> None:
        self.requests = 0
        self.gate = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/oauth2/token", self.token)

    async def token(self, request: web.Request) -> web.Response:
        self.requests += 1
        await request.post()
        await self.gate.wait()
        body = {"access_token": f"token-{self.requests}", "token_type": "Bearer"}
        return web.json_response({**body, "expires_in": 3600})


@pytest.fixture
async def gated(aiohttp_server: ServerFactory) -> AsyncIterator[tuple[GatedTokenEndpoint, str]]:
    endpoint = GatedTokenEndpoint()
    server = await aiohttp_server(endpoint.app)
    yield endpoint, str(server.make_url("/oauth2/token"))
    endpoint.gate.set()


def in_flight(proxy: RunningProxy) -> float:
    value = proxy.app[METRICS].registry.get_sample_value("agentsync_proxy_requests_in_flight")
    return value or 0.0


async def test_cold_start_burst_of_1000_requests_makes_one_token_request(
    make_proxy: ProxyFactory, upstream: RawUpstream, gated: tuple[GatedTokenEndpoint, str]
) -> None:
    endpoint, token_url = gated
    proxy = await make_proxy(token_url=token_url)
    burst = asyncio.create_task(get_all(proxy.url, 1000))
    await until(lambda: in_flight(proxy) == 1000)
    endpoint.gate.set()
    statuses = await burst
    assert statuses == [200] * 1000
    assert endpoint.requests == 1
    assert {r.header("Authorization") for r in upstream.received} == {"Bearer token-1"}


async def test_one_token_serves_many_requests(
    agentsync_simulator: RunningSimulator, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy()
    for _ in range(3):
        assert await get_all(proxy.url, 50) == [200] * 50
    assert agentsync_simulator.state.token_requests == 1


async def post_json(url: str, body: object) -> None:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        assert response.status == 200, await response.text()


async def test_token_endpoint_failing_twice_with_503_is_invisible_to_clients(
    agentsync_simulator: RunningSimulator, make_proxy: ProxyFactory
) -> None:
    await post_json(f"{agentsync_simulator.url}/_simulator/faults", {"status": 503, "count": 2})
    proxy = await make_proxy()
    assert await get_all(proxy.url, 20) == [200] * 20
    assert agentsync_simulator.state.token_requests == 3
    assert agentsync_simulator.state.tokens_issued == 1


async def test_wrong_client_secret_gives_502_and_is_not_retried_in_a_loop(
    agentsync_simulator: RunningSimulator, make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy(client_secret=ClientSecret(Secret("not-the-secret")))
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            async with session.get(f"{proxy.url}/v1/x") as response:
                assert response.status == 502
                body = await response.json()
    assert body["error"] == "token_request_rejected"
    assert "AGENTSYNC_CLIENT_SECRET" in body["error_description"]
    assert "not-the-secret" not in json.dumps(body)
    assert agentsync_simulator.state.token_requests <= 3
    assert upstream.received == []


async def test_token_endpoint_unreachable_gives_503_with_retry_after(
    make_proxy: ProxyFactory, upstream: RawUpstream, unused_tcp_port: int
) -> None:
    proxy = await make_proxy(token_url=f"http://127.0.0.1:{unused_tcp_port}/oauth2/token")
    async with aiohttp.ClientSession() as session, session.get(f"{proxy.url}/v1/x") as response:
        assert response.status == 503
        assert int(response.headers["Retry-After"]) >= 1
        assert (await response.json())["error"] == "token_unavailable"
    assert upstream.received == []


# isdigit() says yes to "²" and "١٢", and int() takes "١٢" for 12.
@pytest.mark.parametrize("expires_in", [None, "²", "١٢"])
async def test_a_missing_or_non_ascii_expires_in_falls_back_to_the_default_lifetime(
    make_proxy: ProxyFactory, aiohttp_server: ServerFactory, expires_in: str | None
) -> None:
    async def token(request: web.Request) -> web.Response:
        body = {"access_token": "odd-expiry", "token_type": "Bearer"}
        if expires_in is not None:
            body["expires_in"] = expires_in
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/oauth2/token", token)
    server = await aiohttp_server(app)
    proxy = await make_proxy(
        token_url=str(server.make_url("/oauth2/token")), default_token_lifetime=1234
    )
    assert await get_all(proxy.url, 1) == [200]
    left = proxy.app[METRICS].registry.get_sample_value("agentsync_proxy_token_expires_in_seconds")
    assert left is not None and 1200 < left <= 1234


async def test_a_retry_after_not_in_ascii_digits_is_ignored(
    make_proxy: ProxyFactory, aiohttp_server: ServerFactory
) -> None:
    answers = 0

    async def token(request: web.Request) -> web.Response:
        nonlocal answers
        answers += 1
        if answers == 1:
            return web.json_response({}, status=503, headers={"Retry-After": "²"})
        body = {"access_token": "after-503", "token_type": "Bearer", "expires_in": 3600}
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/oauth2/token", token)
    server = await aiohttp_server(app)
    proxy = await make_proxy(token_url=str(server.make_url("/oauth2/token")))
    assert await get_all(proxy.url, 1) == [200]
    assert answers == 2


async def test_upstream_rejecting_every_token_stays_within_the_token_cap(
    agentsync_simulator: RunningSimulator, make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    upstream.responder = reply(401, b'{"error": "invalid_token"}')
    proxy = await make_proxy(token_requests_per_minute=5)
    statuses, descriptions = [], set()
    async with aiohttp.ClientSession() as session:
        for _ in range(30):
            async with session.get(f"{proxy.url}/v1/x") as response:
                statuses.append(response.status)
                if response.status == 503:
                    descriptions.add((await response.json())["error_description"])
                await response.read()
    assert agentsync_simulator.state.token_requests <= 5
    assert set(statuses) <= {401, 503}
    [description] = descriptions
    assert "--token-requests-per-minute" in description and "401" in description


async def test_token_endpoint_outage_stays_within_the_token_cap_and_says_so(
    agentsync_simulator: RunningSimulator, make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    await post_json(f"{agentsync_simulator.url}/_simulator/faults", {"status": 503, "count": 99})
    proxy = await make_proxy(token_requests_per_minute=3)
    async with aiohttp.ClientSession() as session:
        for _ in range(10):
            async with session.get(f"{proxy.url}/v1/x") as response:
                assert response.status == 503
                body = await response.json()
    assert agentsync_simulator.state.token_requests == 3
    assert "--token-requests-per-minute" in body["error_description"]
    assert "answered 503" in body["error_description"]
    assert "401" not in body["error_description"]
    assert upstream.received == []


async def test_token_requests_use_http_basic_when_configured(
    agentsync_simulator: RunningSimulator, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(client_auth="basic")
    assert await get_all(proxy.url, 3) == [200, 200, 200]
    assert agentsync_simulator.state.tokens_issued == 1


async def test_secret_file_is_read_again_at_each_token_request(
    agentsync_simulator: RunningSimulator, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("stale-secret\n")
    secret_file.chmod(0o600)
    proxy = await make_proxy(
        client_secret=ClientSecret(file=secret_file),
        app_options={"token_source_options": {"rejection_ttl": 0.0, "backoff_initial": 0.01}},
    )
    assert await get_all(proxy.url, 1) == [502]
    secret_file.write_text(agentsync_simulator.config.client_secret + "\n")
    assert await get_all(proxy.url, 1) == [200]
    assert agentsync_simulator.state.tokens_issued == 1


async def test_a_proxy_closed_while_its_token_request_hangs_leaves_nothing_running(
    agentsync_simulator: RunningSimulator, upstream: RawUpstream
) -> None:
    silent = AnswersAtOnce(None)  # a token endpoint that never answers
    await silent.start()
    try:
        before = asyncio.all_tasks()
        settings = settings_for(
            agentsync_simulator, api_base_url=upstream.url, token_url=silent.url + "/oauth2/token"
        )
        async with running_proxy(settings):
            async with asyncio.timeout(5):
                await (
                    silent.head_arrived.wait()
                )  # the first token request is in flight as it closes
        assert await tasks_left(before) == set()
    finally:
        await silent.close()
