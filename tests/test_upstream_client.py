"""The lean upstream client on its own, against a byte-level upstream: what it writes, how it
reads each kind of answer, when it reuses a connection, and how each failure surfaces."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from functools import partial

import pytest

from proxy import upstream_client
from proxy.upstream_client import (
    BadResponse,
    BodyBrokeOff,
    ResponseTimeout,
    UpstreamClient,
    UpstreamClosed,
)
from tests.rawhttp import (
    AnswersAtOnce,
    RawUpstream,
    Received,
    Responder,
    Writer,
    reply,
    response_bytes,
)

# Every test runs on asyncio's loop and on uvloop's, the production one (see conftest.py).
pytestmark = pytest.mark.uvloop_too


@pytest.fixture
async def client(upstream: RawUpstream) -> AsyncIterator[UpstreamClient]:
    client = make_client(upstream.url)
    yield client
    await client.close()


def make_client(base_url: str, timeout: float = 5.0) -> UpstreamClient:
    return UpstreamClient(
        base_url, ssl_context=ssl.create_default_context(), connect_timeout=5.0, timeout=timeout
    )


async def get(client: UpstreamClient, target: str = "/v1/x", method: str = "GET") -> bytes:
    async with await client.request(method, target, []) as response:
        return await response.read()


def answer(data: bytes) -> Responder:
    """Answer every request with exactly these bytes."""

    async def respond(_: Received, writer: Writer) -> None:
        writer.write(data)
        await writer.drain()

    return respond


async def test_request_is_written_as_given_with_no_header_of_its_own(upstream: RawUpstream) -> None:
    client = make_client(upstream.url + "/api")
    headers = [("X-B", "2"), ("x-a", "1"), ("X-B", "3"), ("Content-Length", "5")]
    async with await client.request("PATCH", "//v1/a%2Fb/../c?x=%20&y=", headers, b"hello"):
        pass
    await client.close()
    [received] = upstream.received
    assert (received.method, received.target) == ("PATCH", "/api//v1/a%2Fb/../c?x=%20&y=")
    assert received.headers == [("Host", f"127.0.0.1:{upstream.port}"), *headers]
    assert received.body == b"hello"


async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent(
    client: UpstreamClient, upstream: RawUpstream
) -> None:
    with pytest.raises(ValueError, match="control character"):
        await client.request("GET", "/v1/x", [("X-Evil", "a\r\nHost: evil.example")])
    assert upstream.connections == 0


async def test_connection_is_reused_and_answers_are_exact(
    client: UpstreamClient, upstream: RawUpstream
) -> None:
    upstream.responder = reply(headers=[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    async with await client.request("GET", "/v1/x", []) as response:
        assert (response.status, response.reason) == (200, "OK")
        assert response.headers.getall("set-cookie") == ["a=1", "b=2"]
        assert await response.read() == b'{"ok": true}'
    assert await get(client) == b'{"ok": true}'
    assert upstream.connections == 1


async def test_chunked_body_is_passed_de_chunked(
    client: UpstreamClient, upstream: RawUpstream
) -> None:
    upstream.responder = answer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nfirst\r\n7\r\n second\r\n0\r\n\r\n"
    )
    assert await get(client) == b"first second"
    assert await get(client) == b"first second"
    assert upstream.connections == 1


async def test_connection_close_is_honoured(client: UpstreamClient, upstream: RawUpstream) -> None:
    upstream.responder = reply(headers=[("Connection", "close")])
    await get(client)
    await get(client)
    assert upstream.connections == 2


async def test_head_204_and_304_have_no_body_and_keep_the_connection(
    client: UpstreamClient, upstream: RawUpstream
) -> None:
    async def respond(received: Received, writer: Writer) -> None:
        if received.method == "HEAD":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n")
        elif received.target == "/v1/empty":
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        else:
            writer.write(b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n')
        await writer.drain()

    upstream.responder = respond
    assert await get(client, method="HEAD") == b""
    assert await get(client, "/v1/empty") == b""
    assert await get(client, "/v1/cached") == b""
    assert await get(client, method="HEAD") == b""
    assert await get(client, "/v1/empty") == b""
    assert upstream.connections == 1


async def test_informational_answers_are_skipped(
    client: UpstreamClient, upstream: RawUpstream
) -> None:
    upstream.responder = answer(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + response_bytes(201, b"made")
    )
    async with await client.request("POST", "/v1/x", []) as response:
        assert response.status == 201
        assert "Link" not in response.headers
        assert await response.read() == b"made"


async def test_body_without_length_ends_with_the_connection(
    client: UpstreamClient, upstream: RawUpstream
) -> None:
    async def respond(_: Received, writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    upstream.responder = respond
    assert await get(client) == b"until the end"
    await get(client)
    assert upstream.connections == 2


async def test_body_without_length_cut_by_a_reset_breaks_off(
    client: UpstreamClient, upstream: RawUpstream
) -> None:
    async def respond(_: Received, writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a reset, not an end

    upstream.responder = respond
    async with await client.request("GET", "/v1/x", []) as response:
        with pytest.raises(BodyBrokeOff):
            await response.read()


async def test_stale_pooled_connection_is_retried_once_on_a_fresh_one(
    client: UpstreamClient, upstream: RawUpstream
) -> None:
    async def respond(received: Received, writer: Writer) -> None:
        if len(upstream.received) == 2:  # closed while the request was on its way
            writer.close()
            return
        writer.write(response_bytes(body=received.body))
        await writer.drain()

    upstream.responder = respond
    await get(client)
    async with await client.request("PUT", "/v1/x", [("Content-Length", "4")], b"once") as r:
        assert await r.read() == b"once"
    assert [each.body for each in upstream.received] == [b"", b"once", b"once"]
    assert upstream.connections == 2


async def test_close_before_answering_on_a_fresh_connection_is_not_retried(
    client: UpstreamClient, upstream: RawUpstream
) -> None:
    async def reset(_: Received, writer: Writer) -> None:
        writer.transport.abort()

    upstream.responder = reset
    with pytest.raises(UpstreamClosed):
        await get(client)
    assert len(upstream.received) == 1


async def test_refused_connection_is_upstream_closed(unused_tcp_port: int) -> None:
    client = make_client(f"http://127.0.0.1:{unused_tcp_port}")
    with pytest.raises(UpstreamClosed) as caught:
        await get(client)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    await client.close()


async def test_body_that_breaks_off_raises_and_the_connection_is_dropped(
    client: UpstreamClient, upstream: RawUpstream
) -> None:
    async def respond(_: Received, writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        await writer.drain()
        writer.transport.abort()

    upstream.responder = respond
    async with await client.request("GET", "/v1/x", []) as response:
        with pytest.raises(BodyBrokeOff):
            await response.read()
    upstream.responder = reply()
    assert await get(client) == b'{"ok": true}'
    assert upstream.connections == 2


async def test_malformed_answer_is_a_bad_response(
    client: UpstreamClient, upstream: RawUpstream
) -> None:
    upstream.responder = answer(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
    with pytest.raises(BadResponse):
        await get(client)


async def test_no_answer_within_the_timeout(upstream: RawUpstream) -> None:
    async def silent(_: Received, writer: Writer) -> None:
        await asyncio.Event().wait()

    upstream.responder = silent
    client = make_client(upstream.url, timeout=0.2)
    with pytest.raises(ResponseTimeout):
        await get(client)
    await client.close()


async def test_body_that_stalls_breaks_off_after_the_timeout_and_trickling_is_progress(
    upstream: RawUpstream,
) -> None:
    async def trickle(_: Received, writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _tick in range(5):  # 0.5 s in all, each gap under the timeout
            await asyncio.sleep(0.1)
            writer.write(b"x")
            await writer.drain()
        await asyncio.Event().wait()

    upstream.responder = trickle
    client = make_client(upstream.url, timeout=0.25)
    started = asyncio.get_running_loop().time()
    async with await client.request("GET", "/v1/x", []) as response:
        with pytest.raises(BodyBrokeOff):
            await response.read()
    assert asyncio.get_running_loop().time() - started >= 0.5 + 0.25
    await client.close()


async def test_a_reader_that_stops_holds_the_upstream_back(
    client: UpstreamClient, upstream: RawUpstream
) -> None:
    body = bytes(range(256)) * (16 * 1024 // 256 * 1024)  # 16 MiB
    blocked = asyncio.Event()

    async def big(_: Received, writer: Writer) -> None:
        writer.write(response_bytes(body=body, headers=[]))
        try:
            await asyncio.wait_for(writer.drain(), 0.5)
        except TimeoutError:
            blocked.set()
            await writer.drain()

    upstream.responder = big
    async with await client.request("GET", "/v1/big", []) as response:
        await asyncio.wait_for(blocked.wait(), 5)
        received = await response.read()
    assert hashlib.sha256(received).digest() == hashlib.sha256(body).digest()


async def in_chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_large_iterated_body_is_sent_whole(
    client: UpstreamClient, upstream: RawUpstream
) -> None:
    data = bytes(range(256)) * (8 * 1024 * 4)  # 8 MiB
    headers = [("Content-Length", str(len(data)))]
    body = partial(in_chunks, data, 256 * 1024)  # produced again for a retry
    async with await client.request("POST", "/v1/x", headers, body) as response:
        assert response.status == 200
    assert upstream.received[-1].body_sha256 == hashlib.sha256(data).hexdigest()


async def test_idle_connections_are_closed_after_the_keepalive(
    client: UpstreamClient, upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream_client, "KEEPALIVE", 0.1)
    await get(client)
    assert len(client.connections) == 1
    await asyncio.sleep(0.3)
    assert client.connections == set()
    await get(client)
    assert upstream.connections == 2


async def test_close_closes_every_connection(upstream: RawUpstream) -> None:
    client = make_client(upstream.url)
    await asyncio.gather(*(get(client) for _ in range(3)))
    assert len(client.connections) == 3
    await client.close()
    assert client.connections == set()


async def test_http_through_an_egress_proxy_is_in_absolute_form_with_its_credentials(
    upstream: RawUpstream,
) -> None:
    proxy = f"http://agent:p%40ss@127.0.0.1:{upstream.port}"  # the raw upstream plays the proxy
    client = UpstreamClient(
        "http://api.example:8000/api",
        ssl_context=ssl.create_default_context(),
        connect_timeout=5.0,
        timeout=5.0,
        proxy=proxy,
    )
    assert await get(client, "/v1/x?a=%20") == b'{"ok": true}'
    await client.close()
    [received] = upstream.received
    assert received.target == "http://api.example:8000/api/v1/x?a=%20"
    assert received.headers == [
        ("Host", "api.example:8000"),
        ("Proxy-Authorization", "Basic YWdlbnQ6cEBzcw=="),  # agent:p@ss
    ]


async def test_egress_proxy_refusing_the_tunnel_is_upstream_closed(upstream: RawUpstream) -> None:
    upstream.responder = answer(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    client = UpstreamClient(
        "https://api.example",
        ssl_context=ssl.create_default_context(),
        connect_timeout=5.0,
        timeout=5.0,
        proxy=upstream.url,
    )
    with pytest.raises(UpstreamClosed, match="refused the tunnel"):
        await get(client)
    await client.close()
    assert [(r.method, r.target) for r in upstream.received] == [("CONNECT", "api.example:443")]
    assert upstream.received[0].header("Host") == "api.example:443"


async def test_cancelling_a_request_whose_401_waits_for_the_body_cancels_it() -> None:
    refusing = AnswersAtOnce(response_bytes(401, b"{}"))
    await refusing.start()
    client = make_client(refusing.url)
    gave_part = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"a" * 100_000
        gave_part.set()
        await asyncio.Event().wait()  # the client sends nothing more
        yield b""

    try:
        sending = asyncio.create_task(
            client.request("PUT", "/v1/x", [("Content-Length", "1000000")], slow_body)
        )
        await gave_part.wait()
        for _ in range(20):  # the 401 is on loopback already: a few turns of the loop take it in
            await asyncio.sleep(0)
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
    finally:
        await client.close()
        await refusing.close()
