"""Smuggling attempts and malformed requests get a clear 4xx, and nothing reaches the upstream."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import ProxyFactory
from tests.rawhttp import RawUpstream


async def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes and read whatever comes back until the proxy closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/smuggled HTTP/1.1\r\n\r\n",
            id="content-length-and-transfer-encoding",
        ),
        pytest.param(
            b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
            b"Content-Length: 7\r\n\r\nhello",
            id="two-content-lengths",
        ),
        pytest.param(
            b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Transfer-Encoding: gzip, chunked, x\r\n\r\n",
            id="unknown-transfer-coding",
        ),
        pytest.param(
            b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n",
            id="negative-content-length",
        ),
        pytest.param(
            b"GET /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
            id="oversized-header",
        ),
        pytest.param(b"G@T /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id="bad-method"),
        pytest.param(b"GET /v1/a b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id="space-in-target"),
        pytest.param(b"GET /v1/\x00x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id="nul-in-target"),
        pytest.param(b"GET /v1/x HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", id="bad-version"),
        pytest.param(
            b"GET /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\r\n", id="space-in-name"
        ),
        pytest.param(b"GET /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\n x: folded\r\n\r\n", id="fold"),
    ],
)
async def test_malformed_request_gets_a_4xx_and_is_not_forwarded(
    make_proxy: ProxyFactory, upstream: RawUpstream, data: bytes
) -> None:
    proxy = await make_proxy()
    answer = await exchange(proxy.port, data)
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:200]
    assert upstream.received == []


@pytest.mark.parametrize("target", [b"v1/x", b"evil.example:443"])
async def test_target_that_is_not_a_path_gets_400(
    make_proxy: ProxyFactory, upstream: RawUpstream, target: bytes
) -> None:
    proxy = await make_proxy()
    answer = await exchange(proxy.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.split(b" ", 2)[1] == b"400"
    assert upstream.received == []


async def test_asterisk_form_gets_400_json(make_proxy: ProxyFactory, upstream: RawUpstream) -> None:
    proxy = await make_proxy()
    answer = await exchange(proxy.port, b"OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    assert b'"error": "bad_request"' in answer
    assert upstream.received == []
