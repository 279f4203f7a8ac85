"""Replay: an upstream 401 renews the token once for everyone and replays the request once."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from proxy.access import Exchange
from proxy.credentials import Secret
from proxy.errors import TokenUnavailable
from proxy.metrics import Metrics
from proxy.pacing import Pacer
from proxy.replay import send_with_replay
from proxy.servers import RunningSimulator, running_proxy, settings_for
from proxy.token_endpoint import Token
from tests.conftest import ProxyFactory
from tests.leaks import temporary_files
from tests.rawhttp import (
    LoopbackServer,
    RawUpstream,
    Received,
    Writer,
    read_body,
    read_head,
    reply,
    response_bytes,
)


def reject_first_token(upstream: RawUpstream) -> None:
    """The upstream refuses the first bearer token it sees and accepts any other."""
    first: list[str] = []

    async def respond(received: Received, writer: Writer) -> None:
        token = received.header("Authorization") or ""
        first[:] = first or [token]
        status = 401 if token == first[0] else 200
        headers = [("WWW-Authenticate", 'Bearer error="invalid_token"')] if status == 401 else []
        writer.write(response_bytes(status, b'{"seen": "%d"}' % status, headers))
        await writer.drain()

    upstream.responder = respond


def without_authorization(received: Received) -> list[tuple[str, str]]:
    return [(k, v) for k, v in received.headers if k.lower() != "authorization"]


async def test_replayed_request_is_identical_but_for_the_token(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    reject_first_token(upstream)
    proxy = await make_proxy()
    body = os.urandom(64 * 1024)
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            f"{proxy.url}/contracting/v1/x%2Fy?a=1&a=2",
            data=body,
            headers={"Content-Type": "application/octet-stream", "X-Custom": "1"},
        ) as response,
    ):
        assert response.status == 200
    first, replay = upstream.received
    assert (replay.method, replay.target) == (first.method, first.target)
    assert without_authorization(replay) == without_authorization(first)
    assert replay.body_sha256 == first.body_sha256 == hashlib.sha256(body).hexdigest()
    assert replay.header("Authorization") != first.header("Authorization")


async def test_second_401_goes_to_the_client_unchanged(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    upstream.responder = reply(
        401,
        b'{"error": "invalid_token", "detail": "from upstream"}',
        [
            ("WWW-Authenticate", 'Bearer error="invalid_token"'),
            ("Content-Type", "application/json"),
        ],
    )
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session, session.get(f"{proxy.url}/v1/x") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        assert await response.read() == b'{"error": "invalid_token", "detail": "from upstream"}'
    assert len(upstream.received) == 2


async def test_100_concurrent_401s_with_one_token_share_one_renewal(
    agentsync_simulator: RunningSimulator,
) -> None:
    # The API's rate limit out of the way: this test is about the renewal, not the pacing.
    agentsync_simulator.state.api_requests_per_minute = 1_000_000
    async with (
        running_proxy(settings_for(agentsync_simulator)) as proxy,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(f"{proxy.url}/v2/entities") as response:
            assert response.status == 200
        async with session.post(f"{agentsync_simulator.url}/_simulator/revoke") as response:
            assert response.status == 200

        async def one() -> int:
            async with session.get(f"{proxy.url}/v2/entities/17345829") as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(one() for _ in range(100)))
    assert statuses == [200] * 100
    state = agentsync_simulator.state
    assert state.token_requests == 2
    assert state.api_calls["401"] == 100
    assert state.api_calls["200"] == 101


def refuse_each_request_once(upstream: RawUpstream) -> None:
    """The upstream answers 401 to the first attempt of every request id, 200 to the replay."""
    seen: set[str] = set()

    async def respond(received: Received, writer: Writer) -> None:
        request_id = received.header("X-Request-Id") or ""
        status = 200 if request_id in seen else 401
        seen.add(request_id)
        writer.write(response_bytes(status, b'{"seen": "%d"}' % status))
        await writer.drain()

    upstream.responder = respond


async def test_spool_file_is_gone_when_the_request_ends(
    agentsync_simulator: RunningSimulator, upstream: RawUpstream
) -> None:
    refuse_each_request_once(upstream)
    before = temporary_files()
    settings = settings_for(
        agentsync_simulator, api_base_url=upstream.url, spool_threshold=16 * 1024
    )
    # The second body, smaller, gets a file of its own: only its own bytes may come back.
    bodies = [os.urandom(5 * 1024 * 1024 + 7), os.urandom(200 * 1024 + 1)]
    async with running_proxy(settings) as proxy, aiohttp.ClientSession() as session:
        for body in bodies:
            async with session.post(f"{proxy.url}/v1/upload", data=io.BytesIO(body)) as response:
                assert response.status == 200
            assert temporary_files() == before  # freed with its request, not kept
    sent = [hashlib.sha256(body).hexdigest() for body in bodies for _attempt in (1, 2)]
    assert [received.body_sha256 for received in upstream.received] == sent
    lengths = [str(len(body)) for body in bodies for _attempt in (1, 2)]
    assert [received.header("Content-Length") for received in upstream.received] == lengths


class RefusesBeforeTheBody(LoopbackServer):
    """Answers its first request 401 as soon as the head is in, before any of the body, and
    records the body of every later one."""

    def __init__(self) -> None:
        super().__init__()
        self.first_head = asyncio.Event()
        self.bodies: list[bytes] = []

    async def exchange(
        self,
        request_line: str,
        headers: list[tuple[str, str]],
        reader: asyncio.StreamReader,
        writer: Writer,
    ) -> bool:
        if not self.first_head.is_set():
            self.first_head.set()
            writer.write(response_bytes(401, b"{}"))
            await writer.drain()
            await read_body(reader, headers)  # whatever the proxy still sends is dropped
            return True
        self.bodies.append(await read_body(reader, headers))
        writer.write(response_bytes(200, b"{}"))
        await writer.drain()
        return True


async def test_a_body_still_arriving_when_the_401_comes_is_replayed_whole(
    make_proxy: ProxyFactory,
) -> None:
    refusing = RefusesBeforeTheBody()
    await refusing.start()
    try:
        proxy = await make_proxy(api_base_url=refusing.url, spool_threshold=64 * 1024)
        body = os.urandom(1 << 20)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        head = f"PUT /v1/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body[:300_000])
        await writer.drain()
        async with asyncio.timeout(5):
            await refusing.first_head.wait()
        writer.write(body[300_000:])
        await writer.drain()
        status_line, _ = await read_head(reader)
        writer.close()
    finally:
        await refusing.close()
    assert status_line.startswith("HTTP/1.1 200")
    assert [hashlib.sha256(b).hexdigest() for b in refusing.bodies] == [
        hashlib.sha256(body).hexdigest()
    ]


async def test_body_over_the_maximum_gets_413_and_nothing_is_forwarded(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy(max_body_size=1000)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 500

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxy.url}/v1/x", data=b"x" * 1001) as response:
            assert response.status == 413
            assert (await response.json())["error"] == "request_too_large"
        async with session.post(f"{proxy.url}/v1/x", data=chunks()) as response:
            assert response.status == 413
    assert upstream.received == []


@dataclass
class FakeResponse:
    status: int
    released: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    def release(self) -> None:
        self.released = True


class TokensThatCannotRenew:
    def __init__(self) -> None:
        self.current = Token(Secret("t"), 1e12, 3600.0, None, 1e12)

    async def token(self) -> Token:
        return self.current

    async def renew(self, rejected: Token) -> Token:
        raise TokenUnavailable("token endpoint down")


async def test_replay_policy_lets_the_401_go_and_reports_a_failed_renewal() -> None:
    rejected = FakeResponse(401)

    async def send(token: Token) -> FakeResponse:
        return rejected

    record = Exchange("id", "GET", "/v1/x", None)
    with pytest.raises(TokenUnavailable):
        pacer = Pacer.for_mode("off", 30.0, Metrics())
        await send_with_replay(send, TokensThatCannotRenew(), pacer, record)
    assert rejected.released
    assert not record.replayed  # without a new token nothing was sent again
