"""Links in answers on the wire: JSON bodies, Location and Link headers pointed back at the proxy
as the client reached it, compressed answers re-sent with a correct length, everything else
byte for byte."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
import zlib
from typing import Any

import aiohttp
import pytest
import structlog

from proxy.keys import ACCESS_LOG, METRICS
from proxy.servers import RunningProxy, RunningSimulator, running_proxy, settings_for
from tests.conftest import ProxyFactory
from tests.leaks import until
from tests.rawhttp import RawUpstream, raw_request, read_body, read_head, reply

pytestmark = pytest.mark.usefixtures("nothing_leaked")


def page(base: str) -> bytes:
    """A ProducerSync v2 page as AgentSync writes it, links absolute."""
    return (
        b'{"licenses": [{"npn": "12345", "fee": 1.50}],\n "links": {"next": {"href": "%s/v2/'
        b'licenses?continuationToken=a%%2Bb"}, "self": {"href": "%s\\/v2\\/licenses"}},'
        b' "elsewhere": "https://other.example.com/v2/x"}' % (base.encode(), base.encode())
    )


async def get_raw(proxy: RunningProxy, target: str, host: str | None = None) -> Any:
    host = host or f"127.0.0.1:{proxy.port}"
    request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept-Encoding: gzip\r\n\r\n"
    return await raw_request(proxy.port, request.encode())


async def test_json_links_under_the_api_come_back_through_the_proxy(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    upstream.responder = reply(200, page(upstream.url), [("Content-Type", "application/json")])
    proxy = await make_proxy()
    response = await get_raw(proxy, "/v2/licenses")
    origin = f"http://127.0.0.1:{proxy.port}"
    assert response.body == page(origin)  # the link on another origin is left alone
    assert response.header("Content-Length") == str(len(response.body))
    await proxy.app[ACCESS_LOG].written()
    assert (
        proxy.app[METRICS].registry.get_sample_value("agentsync_proxy_links_rewritten_total") == 1
    )


async def test_host_the_client_used_is_the_host_in_links(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    upstream.responder = reply(200, page(upstream.url), [("Content-Type", "application/json")])
    proxy = await make_proxy()
    response = await get_raw(proxy, "/v2/licenses", host=f"localhost:{proxy.port}")
    assert response.body == page(f"http://localhost:{proxy.port}")
    response = await get_raw(proxy, "/v2/licenses", host="127.0.0.1")  # a port-80 name
    assert response.body == page("http://127.0.0.1")


async def test_gzip_answer_rewritten_with_a_correct_length(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    compressed = gzip.compress(page(upstream.url))
    headers = [
        ("Content-Type", "application/hal+json; charset=utf-8"),
        ("Content-Encoding", "gzip"),
        ("ETag", '"v1"'),
    ]
    upstream.responder = reply(200, compressed, headers)
    proxy = await make_proxy()
    response = await get_raw(proxy, "/v2/licenses")
    assert response.header("Content-Encoding") == "gzip"
    assert response.header("Content-Length") == str(len(response.body))
    assert gzip.decompress(response.body) == page(f"http://127.0.0.1:{proxy.port}")
    assert response.header("ETag") == 'W/"v1"'


async def test_deflate_answer_rewritten_with_a_correct_length(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    headers = [("Content-Type", "application/json"), ("Content-Encoding", "deflate")]
    upstream.responder = reply(200, zlib.compress(page(upstream.url)), headers)
    proxy = await make_proxy()
    response = await get_raw(proxy, "/v2/licenses")
    assert response.header("Content-Length") == str(len(response.body))
    assert zlib.decompress(response.body) == page(f"http://127.0.0.1:{proxy.port}")


async def test_link_and_location_headers(make_proxy: ProxyFactory, upstream: RawUpstream) -> None:
    base = upstream.url + "/api"
    link = f'<{base}/v2/x?continuationToken=a%2Bb>; rel="next", <https://else.example/y>; rel="up"'
    headers = [("Location", f"{base}/v2/created/7"), ("Link", link)]
    upstream.responder = reply(201, b"{}", headers)
    proxy = await make_proxy(api_base_url=base)
    response = await get_raw(proxy, "/v2/x")
    origin = f"http://127.0.0.1:{proxy.port}"
    assert response.header("Location") == f"{origin}/v2/created/7"
    assert response.header("Link") == (
        f'<{origin}/v2/x?continuationToken=a%2Bb>; rel="next", <https://else.example/y>; rel="up"'
    )


async def test_link_origins_are_rewritten_too(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    body = b'{"next": "https://links.example.com/v2/x?p=2"}'
    upstream.responder = reply(200, body, [("Content-Type", "application/json")])
    proxy = await make_proxy(link_origins=("https://links.example.com",))
    response = await get_raw(proxy, "/v2/x")
    assert json.loads(response.body) == {"next": f"http://127.0.0.1:{proxy.port}/v2/x?p=2"}


async def test_large_or_invalid_json_passes_unchanged(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    link = f'"{upstream.url}/v2/x"'.encode()
    large = b"[" + b",".join([link] * 600_000) + b"]"  # over 16 MiB
    invalid = b'{"next": ' + link + b", oops"
    bodies = {"/large": large, "/invalid": invalid}

    async def respond(received: Any, writer: Any) -> None:
        await reply(200, bodies[received.target], [("Content-Type", "application/json")])(
            received, writer
        )

    upstream.responder = respond
    proxy = await make_proxy()
    with structlog.testing.capture_logs() as logs:
        for target, body in bodies.items():
            response = await get_raw(proxy, target)
            assert response.body == body
    warnings = [entry for entry in logs if entry["event"] == "links_not_rewritten"]
    assert len(warnings) == 2


@pytest.mark.parametrize("framing", ["Content-Length", "chunked"])
async def test_a_json_answer_without_links_keeps_its_bytes_and_strong_etag(
    make_proxy: ProxyFactory, upstream: RawUpstream, framing: str
) -> None:
    body = b'{"href": "https://other.example.org/v2/x", "n": 1.50}'
    headers = [("Content-Type", "application/json"), ("ETag", '"v1"')]
    sent = body
    if framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        sent = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    upstream.responder = reply(200, sent, headers)
    proxy = await make_proxy()
    response = await get_raw(proxy, "/v2/licenses")
    assert response.body == body
    assert (response.header("Content-Length"), response.header("ETag")) == (str(len(body)), '"v1"')


async def test_answers_that_are_not_json_stream_untouched(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    body = page(upstream.url)
    upstream.responder = reply(200, body, [("Content-Type", "text/plain")])
    proxy = await make_proxy()
    response = await get_raw(proxy, "/v2/licenses")
    assert response.body == body


async def test_rewrite_off_is_byte_identical(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    body = page(upstream.url)
    link = f'<{upstream.url}/v2/x>; rel="next"'
    headers = [("Content-Type", "application/json"), ("Link", link), ("ETag", '"v1"')]
    upstream.responder = reply(200, body, headers)
    proxy = await make_proxy(rewrite_links=False)
    response = await get_raw(proxy, "/v2/licenses")
    assert response.body == body
    assert (response.header("Link"), response.header("ETag")) == (link, '"v1"')


async def test_accept_encoding_keeps_only_what_the_proxy_can_decode(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session:
        for sent in ("br, gzip;q=0.8, zstd", "br"):
            async with session.get(
                proxy.url + "/v2/x", headers={"Accept-Encoding": sent}
            ) as response:
                assert response.status == 200
    assert [received.header("Accept-Encoding") for received in upstream.received] == [
        "gzip;q=0.8",
        None,
    ]


async def test_following_next_through_the_proxy_reaches_page_two(
    agentsync_simulator: RunningSimulator,
) -> None:
    async with (
        running_proxy(settings_for(agentsync_simulator)) as proxy,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(f"{proxy.url}/v2/licenses?limit=2") as response:
            first = await response.json()
        following = first["links"]["next"]["href"]
        assert following.startswith(proxy.url + "/v2/licenses?")
        assert "%2B" in following  # the continuation token's encoding, kept byte for byte
        async with session.get(following) as response:  # no token: the proxy adds one
            assert response.status == 200
            second = await response.json()
        # The same link as AgentSync wrote it leads straight to the API, without a token.
        direct = following.replace(proxy.url, agentsync_simulator.url)
        async with session.get(direct) as response:
            assert response.status == 401
    assert second["embedded"]["licenses"] != first["embedded"]["licenses"]
    assert second["links"]["self"]["href"] == following


# A JSON answer larger than the socket buffers between the proxy and a client that reads slowly
# (the proxy's send buffer grows to 4 MiB at most on Linux), with no link to rewrite.
LARGE_JSON = b"[" + b",".join(b'{"npn": "%08d"}' % n for n in range(700_000)) + b"]"


async def slow_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose receive buffer is small: what it has not read stays with the proxy."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /v2/licenses HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    return reader, writer


async def test_a_large_json_answers_duration_ends_when_a_slow_client_has_it(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    upstream.responder = reply(200, LARGE_JSON, [("Content-Type", "application/json")])
    proxy = await make_proxy()
    with structlog.testing.capture_logs() as logs:
        sent = time.perf_counter()
        reader, writer = await slow_client(proxy.port)
        _, headers = await read_head(reader)
        # Longer than the proxy took to begin its answer: only then does the client read on.
        pause = 0.2 + 2 * (time.perf_counter() - sent)
        await asyncio.sleep(pause)
        assert await read_body(reader, headers) == LARGE_JSON
        writer.close()
        await proxy.app[ACCESS_LOG].written()
    [line] = [entry for entry in logs if entry["event"] == "request"]
    assert line["duration_ms"] >= pause * 1000


async def test_a_client_gone_during_a_large_json_answer_is_logged_as_gone(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    upstream.responder = reply(200, LARGE_JSON, [("Content-Type", "application/json")])
    proxy = await make_proxy()
    with structlog.testing.capture_logs() as logs:
        reader, writer = await slow_client(proxy.port)
        await reader.readexactly(1 << 20)
        writer.transport.abort()
        await until(lambda: proxy.app[METRICS].in_flight == 0)
    [line] = [entry for entry in logs if entry["event"] == "request"]
    assert (line["status"], line.get("error")) == (499, "client_disconnected")
