"""Forwarding: what reaches the upstream, byte for byte, and what comes back."""

from __future__ import annotations

import asyncio
import gzip
import json

import aiohttp
import pytest

from tests.conftest import ProxyFactory
from tests.rawhttp import (
    AnswersAtOnce,
    RawUpstream,
    Received,
    Writer,
    raw_request,
    read_body,
    read_head,
    reply,
    response_bytes,
)


def http(target: str, *headers: str, method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize(
    "target",
    [
        "/v1/a%2Fb/%2e%2e/c?x=1&x=2&y=%20+&z",
        "/v2/entities/%7Bnpn%7D",
        "/contracting/v1/customers/carriers?page=0&size=20&sort=name,asc",
        "/v1/./x/../y//z?q=%2F%3F%26",
    ],
)
async def test_target_arrives_byte_identical(
    make_proxy: ProxyFactory, upstream: RawUpstream, target: str
) -> None:
    proxy = await make_proxy()
    response = await raw_request(proxy.port, http(target))
    assert response.status == 200
    assert upstream.received[-1].target == target


async def test_an_empty_query_arrives_without_its_question_mark(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    """The one normalisation of the HTTP client's URLs: `/x?` and `/x` name the same resource
    on every server we know of, AgentSync's included."""
    proxy = await make_proxy()
    response = await raw_request(proxy.port, http("/v2/entities/%7Bnpn%7D?"))
    assert response.status == 200
    assert upstream.received[-1].target == "/v2/entities/%7Bnpn%7D"


async def test_base_path_of_the_api_url_is_kept(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy(api_base_url=upstream.url + "/api/")
    await raw_request(proxy.port, http("/v1/a%2Fb?x=%20"))
    assert upstream.received[-1].target == "/api/v1/a%2Fb?x=%20"


@pytest.mark.parametrize("target", ["//evil.example/x", "/@evil.example", "/.evil.example"])
async def test_tricky_targets_stay_on_the_configured_host(
    make_proxy: ProxyFactory, upstream: RawUpstream, target: str
) -> None:
    proxy = await make_proxy()
    response = await raw_request(proxy.port, http(target))
    assert response.status == 200
    received = upstream.received[-1]
    assert received.target == target
    assert received.header("Host") == f"127.0.0.1:{upstream.port}"


async def test_hop_by_hop_headers_are_dropped_towards_the_upstream(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy()
    await raw_request(
        proxy.port,
        http(
            "/v1/x",
            "Connection: keep-alive, X-Secret-Hop",
            "X-Secret-Hop: 1",
            "Keep-Alive: timeout=5",
            "Proxy-Authorization: Basic cHJveHk6cHJveHk=",
            "TE: trailers",
            "Trailer: X-Checksum",
            "Upgrade: websocket",
            "Proxy-Connection: keep-alive",
            "X-End-To-End: kept",
        ),
    )
    names = upstream.received[-1].names
    for hop in ("x-secret-hop", "keep-alive", "proxy-authorization", "te", "trailer", "upgrade"):
        assert hop not in names
    assert "proxy-connection" not in names
    assert upstream.received[-1].header("X-End-To-End") == "kept"


async def test_hop_by_hop_headers_are_dropped_towards_the_client(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    upstream.responder = reply(
        headers=[
            ("Connection", "X-Upstream-Hop"),
            ("X-Upstream-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authenticate", "Basic"),
            ("Upgrade", "h2c"),
            ("X-Kept", "yes"),
        ]
    )
    proxy = await make_proxy()
    response = await raw_request(proxy.port, http("/v1/x"))
    names = {k.lower() for k, _ in response.headers}
    assert {"x-upstream-hop", "keep-alive", "proxy-authenticate", "upgrade"}.isdisjoint(names)
    assert response.header("X-Kept") == "yes"


async def test_incoming_authorization_is_replaced_by_the_bearer_token(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy()
    await raw_request(proxy.port, http("/v1/x", "Authorization: Bearer client-supplied"))
    values = upstream.received[-1].all("Authorization")
    assert len(values) == 1
    assert values[0].startswith("Bearer ")
    assert values[0] != "Bearer client-supplied"


async def test_repeated_response_headers_keep_every_value(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    upstream.responder = reply(
        headers=[("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/"), ("Vary", "A")]
    )
    proxy = await make_proxy()
    response = await raw_request(proxy.port, http("/v1/x"))
    assert response.all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]


async def test_upstream_cookies_are_not_shared_between_clients(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    # Through "localhost": aiohttp's jar would keep cookies for a named host but not for an IP.
    upstream.responder = reply(headers=[("Set-Cookie", "session=alice; Path=/")])
    proxy = await make_proxy(api_base_url=f"http://localhost:{upstream.port}")
    await raw_request(proxy.port, http("/v1/login"))
    await raw_request(proxy.port, http("/v1/other"))
    assert upstream.received[-1].header("Cookie") is None


async def test_compressed_bodies_pass_through_compressed(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    compressed = gzip.compress(b'{"carriers": []}' * 100)
    upstream.responder = reply(
        body=compressed,
        headers=[("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
    )
    proxy = await make_proxy()
    response = await raw_request(proxy.port, http("/v1/x", "Accept-Encoding: gzip"))
    assert response.header("Content-Encoding") == "gzip"
    assert response.body == compressed
    assert upstream.received[-1].header("Accept-Encoding") == "gzip"


async def test_request_id_is_kept_when_the_client_sends_one(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy()
    response = await raw_request(proxy.port, http("/v1/x", "X-Request-Id: abc-123"))
    assert upstream.received[-1].all("X-Request-Id") == ["abc-123"]
    assert response.header("X-Request-Id") == "abc-123"


async def test_request_id_is_generated_sent_upstream_and_returned(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy()
    first = await raw_request(proxy.port, http("/v1/x"))
    second = await raw_request(proxy.port, http("/v1/x"))
    generated = first.header("X-Request-Id")
    assert generated and len(generated) >= 16
    assert upstream.received[0].header("X-Request-Id") == generated
    assert second.header("X-Request-Id") != generated


async def test_head_204_and_304_carry_no_body(
    make_proxy: ProxyFactory, upstream: RawUpstream
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
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session:
        async with session.head(f"{proxy.url}/v1/x") as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == "42"
            assert await response.read() == b""
        # The next request on the same pooled connection proves no stray body bytes followed.
        async with session.get(f"{proxy.url}/v1/empty") as response:
            assert response.status == 204
            assert await response.read() == b""
        async with session.get(f"{proxy.url}/v1/cached") as response:
            assert response.status == 304
            assert response.headers["ETag"] == '"x"'
            assert await response.read() == b""
        async with session.get(f"{proxy.url}/v1/empty") as response:
            assert response.status == 204


async def test_redirects_are_not_followed_and_same_origin_location_is_rewritten(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    async def respond(received: Received, writer: Writer) -> None:
        location = (
            f"{upstream.url}/api/v2/next?x=%20"
            if received.target.endswith("/same")
            else "https://elsewhere.example/v2/next"
        )
        writer.write(response_bytes(302, b"", [("Location", location)], reason="Found"))
        await writer.drain()

    upstream.responder = respond
    proxy = await make_proxy(api_base_url=upstream.url + "/api")
    same = await raw_request(proxy.port, http("/v1/same"))
    other = await raw_request(proxy.port, http("/v1/other"))
    assert same.status == 302
    assert same.header("Location") == "http://127.0.0.1/v2/next?x=%20"
    assert other.header("Location") == "https://elsewhere.example/v2/next"
    assert len(upstream.received) == 2


async def test_absolute_form_target_on_the_api_host_is_served(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy()
    response = await raw_request(proxy.port, http(f"http://127.0.0.1:{upstream.port}/v1/a%2Fb?x"))
    assert response.status == 200
    assert upstream.received[-1].target == "/v1/a%2Fb?x"


@pytest.mark.parametrize(
    ("target", "status", "code"),
    [
        ("http://auth.sandbox.agentsync.io/oauth2/token", 403, "auth_host_refused"),
        ("https://AUTH.agentsync.io./v1/x", 403, "auth_host_refused"),
        ("http://evil.example/v1/x", 403, "target_not_allowed"),
        ("http://user@127.0.0.1/v1/x", 403, "target_not_allowed"),
    ],
)
async def test_absolute_form_targets_elsewhere_are_refused(
    make_proxy: ProxyFactory, upstream: RawUpstream, target: str, status: int, code: str
) -> None:
    proxy = await make_proxy()
    response = await raw_request(proxy.port, http(target))
    assert response.status == status
    assert (
        response.header(
            "Content-Type",
        )
        == "application/json"
    )
    assert f'"error": "{code}"' in response.body.decode()
    assert upstream.received == []


async def test_connect_is_refused_with_405(make_proxy: ProxyFactory, upstream: RawUpstream) -> None:
    proxy = await make_proxy()
    response = await raw_request(
        proxy.port, b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"
    )
    assert response.status == 405
    assert b'"method_not_allowed"' in response.body
    assert upstream.received == []


async def test_response_streams_before_the_upstream_has_finished(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    release = asyncio.Event()

    async def respond(_: Received, writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"4\r\nlast\r\n0\r\n\r\n")
        await writer.drain()

    upstream.responder = respond
    proxy = await make_proxy()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{proxy.url}/v1/stream") as response,
    ):
        assert await response.content.readexactly(5) == b"first"
        release.set()
        assert await response.read() == b"last"


async def test_upstream_body_that_breaks_off_breaks_off_for_the_client(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    async def respond(_: Received, writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 200_000)
        await writer.drain()
        writer.transport.abort()

    upstream.responder = respond
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session, session.get(f"{proxy.url}/v1/x") as response:
        assert response.status == 200  # the headers had left before the break
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_small_answer_that_breaks_off_becomes_a_502(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    async def respond(_: Received, writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
        await writer.drain()
        writer.transport.abort()

    upstream.responder = respond
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session, session.get(f"{proxy.url}/v1/x") as response:
        assert response.status == 502
        assert (await response.json())["error"] == "upstream_unreachable"


async def test_truncated_chunked_body_breaks_off_for_the_client(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    async def respond(_: Received, writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        writer.transport.abort()

    upstream.responder = respond
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session, session.get(f"{proxy.url}/v1/x") as response:
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_request_body_and_method_pass_through(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy()
    body = b'{"name": "Acme Life"}'
    await raw_request(
        proxy.port,
        http("/contracting/v1/x", "Content-Type: application/json", method="PATCH", body=body),
    )
    received = upstream.received[-1]
    assert (received.method, received.body) == ("PATCH", body)
    assert received.header("Content-Type") == "application/json"
    assert received.all("Content-Length") == [str(len(body))]
    assert "transfer-encoding" not in received.names


async def test_a_large_request_body_goes_upstream_while_it_arrives(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy(spool_threshold=64 * 1024)
    body = bytes(range(256)) * 4096  # 1 MiB
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(http("/v1/upload", f"Content-Length: {len(body)}", method="PUT") + body[:300_000])
    await writer.drain()
    async with asyncio.timeout(5):
        await upstream.head_arrived.wait()  # while the client still holds most of the body
    writer.write(body[300_000:])
    await writer.drain()
    status_line, _ = await read_head(reader)
    writer.close()
    assert status_line.startswith("HTTP/1.1 200")
    received = upstream.received[-1]
    assert (received.method, received.body) == ("PUT", body)
    assert received.all("Content-Length") == [str(len(body))]


async def test_a_slow_upload_is_not_taken_for_a_silent_upstream(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy(upstream_timeout=0.3, spool_threshold=64 * 1024)
    body = b"s" * (512 * 1024)
    parts = [body[i : i + 128 * 1024] for i in range(0, len(body), 128 * 1024)]
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(http("/v1/upload", f"Content-Length: {len(body)}", method="POST"))
    for part in parts:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.2)  # the client's pace: 0.8 s in all, over the upstream timeout
    status_line, _ = await read_head(reader)
    writer.close()
    assert status_line.startswith("HTTP/1.1 200")
    assert upstream.received[-1].body == body


async def test_chunked_request_body_is_sent_with_a_length(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy()
    await raw_request(
        proxy.port,
        b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    received = upstream.received[-1]
    assert received.body == b"abcde"
    assert received.all("Content-Length") == ["5"]
    assert "transfer-encoding" not in received.names


async def test_request_without_body_adds_no_body_headers(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy()
    await raw_request(proxy.port, http("/v1/x"))
    names = upstream.received[-1].names
    assert "content-length" not in names
    assert "content-type" not in names
    assert "user-agent" not in names


async def test_expect_100_continue_is_answered_before_the_body_is_forwarded(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy()
    body = b"b" * 5000
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    head = http("/v1/x", "Expect: 100-continue", f"Content-Length: {len(body)}", method="PUT")
    writer.write(head)
    await writer.drain()
    interim, _ = await read_head(reader)  # the client waits for it before sending the body
    writer.write(body)
    await writer.drain()
    final, _ = await read_head(reader)
    writer.close()
    assert interim == "HTTP/1.1 100 Continue"
    assert final.startswith("HTTP/1.1 200")
    received = upstream.received[-1]
    assert received.body == body
    assert "expect" not in received.names


async def test_expect_100_continue_with_a_body_over_the_maximum_gets_413_at_once(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy(max_body_size=1000)
    response = await raw_request(
        proxy.port, http("/v1/x", "Expect: 100-continue", "Content-Length: 5000", method="POST")
    )
    assert response.status == 413
    assert response.header("Content-Type") == "application/json"
    assert b'"request_too_large"' in response.body
    assert upstream.received == []


async def send_part_and_wait(port: int, sent: int, declared: int) -> tuple[str, bytes]:
    """PUT a body of `declared` bytes but send only `sent`, then wait, holding the rest, for
    the proxy's answer: its status line and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(http("/v1/upload", f"Content-Length: {declared}", method="PUT") + b"z" * sent)
    await writer.drain()
    try:
        async with asyncio.timeout(5):
            status_line, headers = await read_head(reader)
            return status_line, await read_body(reader, headers)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("upstream_answer", "status", "body_part"),
    [
        (response_bytes(200, b'{"early": true}'), 200, b'{"early": true}'),
        (response_bytes(413, b'{"early": true}'), 413, b'{"early": true}'),
        (b"", 502, b'"upstream_unreachable"'),  # closed the connection without an answer
    ],
)
async def test_what_the_upstream_does_before_the_body_ends_reaches_a_client_that_waits(
    make_proxy: ProxyFactory, upstream_answer: bytes, status: int, body_part: bytes
) -> None:
    early = AnswersAtOnce(upstream_answer)
    await early.start()
    try:
        proxy = await make_proxy(api_base_url=early.url, spool_threshold=64 * 1024)
        status_line, body = await send_part_and_wait(proxy.port, 100_000, 1_000_000)
        assert status_line.startswith(f"HTTP/1.1 {status}")
        assert body_part in body
    finally:
        await early.close()


@pytest.mark.parametrize("size", [10_000, 300_000])  # read whole first; sent while it arrives
async def test_a_client_that_stalls_mid_upload_gets_408_and_the_upstream_no_whole_request(
    make_proxy: ProxyFactory, upstream: RawUpstream, size: int
) -> None:
    # Not under the fault matrix's leak check: after an answer sent before the body's end,
    # aiohttp keeps the connection's task reading what is left for up to 10 s (lingering).
    proxy = await make_proxy(client_timeout=0.3, spool_threshold=64 * 1024)
    status_line, body = await send_part_and_wait(proxy.port, size, 2 * size)
    assert status_line.startswith("HTTP/1.1 408")
    assert json.loads(body)["error"] == "client_timeout"
    assert upstream.received == []
