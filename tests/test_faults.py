"""The fault matrix: each way the token endpoint, the upstream or a client can fail, what the
client receives, what the log says, and that nothing is leaked afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import re
import resource
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.keys import METRICS
from proxy.servers import RunningProxy, RunningSimulator
from tests.conftest import ProxyFactory
from tests.leaks import temporary_files
from tests.rawhttp import RawUpstream, Received, Writer, reply, response_bytes

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Every fault, once its proxy and servers have closed, leaves nothing behind.
pytestmark = pytest.mark.usefixtures("nothing_leaked")


async def settled(proxy: RunningProxy) -> None:
    """Wait until the proxy has no request in flight (nothing announces it)."""
    registry = proxy.app[METRICS].registry
    async with asyncio.timeout(10):
        while registry.get_sample_value("agentsync_proxy_requests_in_flight"):
            await asyncio.sleep(0.01)


async def get(proxy: RunningProxy, path: str = "/v1/x") -> tuple[int, dict[str, Any], str]:
    async with aiohttp.ClientSession() as session, session.get(proxy.url + path) as response:
        body = await response.json() if response.content_type == "application/json" else {}
        return response.status, body, response.headers.get("Retry-After", "")


@pytest.fixture(autouse=True)
def logs(nothing_leaked: None, agentsync_simulator: RunningSimulator, upstream: RawUpstream) -> Any:
    """Every fault's log, checked afterwards for the client secret and every token."""
    with structlog.testing.capture_logs() as captured:
        yield captured
    text = repr(captured)
    tokens = set(agentsync_simulator.state.tokens.issued())
    tokens |= {value for r in upstream.received for value in r.all("Authorization")}
    for secret in (agentsync_simulator.config.client_secret, *tokens):
        assert secret.removeprefix("Bearer ") not in text


def token_app(behaviour: Behaviour) -> web.Application:
    app = web.Application()
    app.router.add_post("/oauth2/token", behaviour)
    return app


async def hang(request: web.Request) -> web.StreamResponse:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def status_500(request: web.Request) -> web.StreamResponse:
    return web.json_response({"error": "server_error"}, status=500)


async def status_503_with_odd_retry_after(request: web.Request) -> web.StreamResponse:
    # "²".isdigit() is True, yet it is no number of seconds
    return web.json_response({"error": "unavailable"}, status=503, headers={"Retry-After": "²"})


async def not_json(request: web.Request) -> web.StreamResponse:
    return web.Response(text="<html>maintenance</html>", content_type="text/html")


async def no_access_token(request: web.Request) -> web.StreamResponse:
    return web.json_response({"token_type": "Bearer", "expires_in": 3600})


@pytest.mark.parametrize(
    ("behaviour", "logged"),
    [
        # The request's wait and the token request time out together: either may say so first.
        (hang, r"has not answered within --token-timeout|could not be reached \(timed out\)"),
        (status_500, "answered 500"),
        (status_503_with_odd_retry_after, "answered 503"),
        (not_json, "not JSON"),
        (no_access_token, "without an access_token"),
    ],
)
async def test_token_endpoint_fault_gives_503_token_unavailable(
    make_proxy: ProxyFactory,
    upstream: RawUpstream,
    aiohttp_server: ServerFactory,
    logs: list[dict[str, Any]],
    behaviour: Behaviour,
    logged: str,
) -> None:
    server = await aiohttp_server(token_app(behaviour))
    proxy = await make_proxy(token_url=str(server.make_url("/oauth2/token")), token_timeout=0.5)
    status, body, retry_after = await get(proxy)
    assert (status, body["error"]) == (503, "token_unavailable")
    assert int(retry_after) >= 1
    assert upstream.received == []
    messages = " ".join(str(entry) for entry in logs)
    assert re.search(logged, messages) or re.search(logged, body["error_description"])


def answering(status: int, body: bytes, **headers: str) -> Behaviour:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=status, body=body, headers=headers, content_type="application/json"
        )

    return answer


TOKEN = b'{"access_token": "garbage-token", "token_type": "Bearer", '


@pytest.mark.parametrize(
    ("behaviour", "status"),
    [
        pytest.param(status_503_with_odd_retry_after, 503, id="503-retry-after-superscript"),
        pytest.param(
            answering(503, b"{}", **{"Retry-After": "-1"}), 503, id="503-retry-after-negative"
        ),
        pytest.param(
            answering(429, b"{}", **{"Retry-After": "Thu, 99 Foo 2025 99:99:99 GMT"}),
            503,
            id="429-retry-after-bad-date",
        ),
        pytest.param(not_json, 503, id="200-html"),
        pytest.param(answering(200, b'[{"access_token": "in-an-array"}]'), 503, id="200-array"),
        pytest.param(answering(200, b"[" * 100_000), 503, id="200-nested-too-deep"),
        pytest.param(
            answering(200, b'{"access_token": 123, "token_type": "Bearer"}'),
            503,
            id="200-access-token-number",
        ),
        pytest.param(answering(200, TOKEN + b'"expires_in": "abc"}'), 200, id="200-expires-in-abc"),
        pytest.param(
            answering(200, TOKEN + b'"expires_in": "\\u00b2"}'),
            200,
            id="200-expires-in-superscript",
        ),
    ],
)
async def test_the_background_refresher_keeps_going_whatever_the_token_endpoint_answers(
    make_proxy: ProxyFactory, aiohttp_server: ServerFactory, behaviour: Behaviour, status: int
) -> None:
    requests, seventh = 0, asyncio.Event()

    async def counted(request: web.Request) -> web.StreamResponse:
        nonlocal requests
        requests += 1
        if requests == 7:
            seventh.set()
        return await behaviour(request)

    server = await aiohttp_server(token_app(counted))
    proxy = await make_proxy(
        token_url=str(server.make_url("/oauth2/token")), default_token_lifetime=0.2
    )
    async with asyncio.timeout(10):  # no client asked: the refresher made every request
        await seventh.wait()
    got, body, _ = await get(proxy)
    assert got == status
    if status == 503:
        assert body["error"] == "token_unavailable"


async def test_token_endpoint_429_with_retry_after_is_waited_out(
    agentsync_simulator: Any, make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            agentsync_simulator.url + "/_simulator/faults", json={"status": 429, "count": 1}
        ) as response,
    ):
        assert response.status == 200
    loop = asyncio.get_running_loop()
    started = loop.time()
    proxy = await make_proxy()
    status, _, _ = await get(proxy)
    assert status == 200
    assert loop.time() - started >= 1.0  # the simulator said Retry-After: 1
    assert agentsync_simulator.state.token_requests == 2


async def test_upstream_refusing_connections_gives_502(
    make_proxy: ProxyFactory, unused_tcp_port: int, logs: list[dict[str, Any]]
) -> None:
    proxy = await make_proxy(api_base_url=f"http://127.0.0.1:{unused_tcp_port}")
    status, body, _ = await get(proxy)
    assert (status, body["error"]) == (502, "upstream_unreachable")
    assert any(entry["event"] == "upstream_failed" for entry in logs)


async def test_upstream_hanging_gives_504_after_the_upstream_timeout(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    async def silent(received: Received, writer: Writer) -> None:
        await asyncio.Event().wait()

    upstream.responder = silent
    proxy = await make_proxy(upstream_timeout=0.3)
    status, body, _ = await get(proxy)
    assert (status, body["error"]) == (504, "upstream_timeout")
    assert "--upstream-timeout" in body["error_description"]


async def test_upstream_closing_before_answering_gives_502(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    async def reset(received: Received, writer: Writer) -> None:
        writer.transport.abort()

    upstream.responder = reset
    proxy = await make_proxy()
    status, body, _ = await get(proxy)
    assert (status, body["error"]) == (502, "upstream_unreachable")


async def test_post_is_not_sent_twice_when_the_upstream_closes_after_reading_it(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    async def carried_out_then_gone(received: Received, writer: Writer) -> None:
        if received.method == "GET":
            writer.write(response_bytes(200, b"{}"))  # the connection stays open, pooled
            await writer.drain()
        else:
            writer.transport.abort()  # read the POST, did it, and died before answering

    upstream.responder = carried_out_then_gone
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxy.url}/v1/warm") as response:
            assert response.status == 200
        async with session.post(f"{proxy.url}/v1/products", data=b'{"name": "x"}') as response:
            body = await response.json()
            assert (response.status, body["error"]) == (502, "upstream_unreachable")
    assert [received.method for received in upstream.received] == ["GET", "POST"]
    assert upstream.connections == 1  # the POST went on the warm connection, and only once


async def test_burst_of_500_requests_opens_at_most_max_connections_upstream(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    open_now = peak = 0
    release = asyncio.Event()

    async def slow(received: Received, writer: Writer) -> None:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        if open_now == 8:
            release.set()  # every connection the proxy may open is busy
        await release.wait()
        open_now -= 1
        writer.write(response_bytes(200, b"{}"))
        await writer.drain()

    upstream.responder = slow
    proxy = await make_proxy(max_connections=8)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(index: int) -> int:
            async with session.get(f"{proxy.url}/v1/x/{index}") as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(one(index) for index in range(500)))
    assert statuses == [200] * 500
    assert upstream.connections <= 8
    assert peak == 8


async def test_client_disconnecting_mid_upload_completes_nothing_upstream_and_leaks_nothing(
    make_proxy: ProxyFactory, upstream: RawUpstream, logs: list[dict[str, Any]]
) -> None:
    proxy = await make_proxy(spool_threshold=1024)
    before = temporary_files()
    _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(
        b"POST /v1/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n"
        + b"x" * 200_000
    )
    await writer.drain()
    async with asyncio.timeout(10):  # the proxy is forwarding the body as it arrives
        await upstream.head_arrived.wait()
    writer.transport.abort()
    await settled(proxy)
    assert upstream.received == []  # the upstream's connection was cut before the body's end
    assert temporary_files() == before  # the spool's file was freed with its request
    [line] = [entry for entry in logs if entry["event"] == "request"]
    assert (line["status"], line["error"]) == (499, "client_disconnected")
    assert line["bytes_in"] == 200_000


async def test_client_disconnecting_mid_download_closes_the_upstream_connection(
    make_proxy: ProxyFactory, upstream: RawUpstream, logs: list[dict[str, Any]]
) -> None:
    upstream_closed = asyncio.Event()

    async def endless(received: Received, writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(b"10000\r\n" + b"y" * 0x10000 + b"\r\n")
                await writer.drain()
        except ConnectionError:
            upstream_closed.set()

    upstream.responder = endless
    proxy = await make_proxy()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /v1/big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await reader.readexactly(100_000)
    writer.transport.abort()
    await asyncio.wait_for(upstream_closed.wait(), 10)
    await settled(proxy)
    access = [entry for entry in logs if entry["event"] == "request"]
    assert access[-1]["error"] == "client_disconnected"
    assert not any(entry.get("log_level") == "error" for entry in logs)


@contextlib.contextmanager
def files_limited_to(size: int) -> Iterator[None]:
    """No file of this process may grow past `size` bytes, as on a disk that is full."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, ignored)


async def post(proxy: RunningProxy, body: bytes | AsyncIterator[bytes]) -> tuple[int, Any]:
    data = io.BytesIO(body) if isinstance(body, bytes) else body
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{proxy.url}/v1/upload", data=data) as response,
    ):
        return response.status, await response.json()


def not_kept(logs: list[dict[str, Any]]) -> dict[str, Any]:
    """The one warning that a body was not kept, which is no traceback: the disk, not a bug."""
    assert [entry for entry in logs if entry.get("exc_info")] == []
    [warning] = [entry for entry in logs if entry["event"] == "request_body_not_kept"]
    [line] = [entry for entry in logs if entry["event"] == "request"]
    assert warning["request_id"] == line["request_id"]
    assert "could not keep the request body for a replay (File too large)" in warning["error"]
    return line


async def test_a_body_the_disk_cannot_keep_still_goes_upstream_once(
    make_proxy: ProxyFactory, upstream: RawUpstream, logs: list[dict[str, Any]]
) -> None:
    """The file only serves a replay: without one, the request is carried out as sent."""
    proxy = await make_proxy(spool_threshold=16 * 1024)
    body = os.urandom(4 << 20)
    with files_limited_to(256 * 1024):
        status, _ = await post(proxy, body)
    await settled(proxy)
    assert status == 200
    [received] = upstream.received
    assert received.body_sha256 == hashlib.sha256(body).hexdigest()
    assert not_kept(logs)["status"] == 200


async def test_a_401_for_a_body_the_disk_could_not_keep_is_a_clear_500_not_a_replay(
    make_proxy: ProxyFactory, upstream: RawUpstream, logs: list[dict[str, Any]]
) -> None:
    upstream.responder = reply(401, b'{"error": "invalid_token"}')
    proxy = await make_proxy(spool_threshold=16 * 1024)
    with files_limited_to(256 * 1024):
        status, answer = await post(proxy, os.urandom(4 << 20))
    await settled(proxy)
    assert (status, answer["error"]) == (500, "internal_error")
    assert "could not keep the request body for a replay" in answer["error_description"]
    assert len(upstream.received) == 1  # the refused first send; no replay went out whole
    assert not_kept(logs)["error"] == "internal_error"


async def test_a_chunked_body_the_disk_cannot_keep_is_a_500_and_never_sent(
    make_proxy: ProxyFactory, upstream: RawUpstream, logs: list[dict[str, Any]]
) -> None:
    """A chunked body is read whole before it leaves, to be sent from what was kept."""

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield os.urandom(64 * 1024)

    proxy = await make_proxy(spool_threshold=16 * 1024)
    with files_limited_to(256 * 1024):
        status, answer = await post(proxy, chunked())
    await settled(proxy)
    assert (status, answer["error"]) == (500, "internal_error")
    assert upstream.received == []
    assert not_kept(logs)["bytes_in"] == 64 * 64 * 1024
