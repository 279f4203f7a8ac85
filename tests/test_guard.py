"""The protection rules: client addresses, Host names (DNS rebinding) and web origins."""

from __future__ import annotations

import ipaddress
import socket

import pytest
import structlog

from proxy.settings import Listen
from tests.conftest import ProxyFactory
from tests.rawhttp import RawUpstream, raw_request


def request(target: str = "/v1/x", *headers: str, method: str = "GET") -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    ).encode()


def outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback else address


async def send_from(address: str, port: int, data: bytes) -> bytes:
    import asyncio

    reader, writer = await asyncio.open_connection(address, port)
    writer.write(data)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_client_outside_allowed_clients_gets_403(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    address = outward_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    proxy = await make_proxy(
        listen=Listen("0.0.0.0", 0), allowed_clients=(ipaddress.ip_network("203.0.113.0/24"),)
    )
    answer = await send_from(
        address, proxy.port, request("/v1/x", f"Host: {address}", "Connection: close")
    )
    assert answer.startswith(b"HTTP/1.1 403")
    assert b'"client_not_allowed"' in answer
    assert upstream.received == []


async def test_client_inside_allowed_clients_is_served(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    address = outward_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    proxy = await make_proxy(
        listen=Listen("0.0.0.0", 0),
        allowed_clients=(ipaddress.ip_network(f"{address}/32"),),
        allowed_hosts=(address,),
    )
    answer = await send_from(
        address, proxy.port, request("/v1/x", f"Host: {address}:{proxy.port}", "Connection: close")
    )
    assert answer.startswith(b"HTTP/1.1 200")
    assert len(upstream.received) == 1


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8080", "attacker.test.", "127.0.0.1.nip.io"]
)
async def test_foreign_host_header_gets_403_and_nothing_is_forwarded(
    make_proxy: ProxyFactory, upstream: RawUpstream, host: str
) -> None:
    proxy = await make_proxy()
    response = await raw_request(proxy.port, request("/v1/x", f"Host: {host}"))
    assert response.status == 403
    assert b'"host_not_allowed"' in response.body
    assert upstream.received == []


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost:8080", "127.0.0.1:1", "[::1]:8080", "127.1.2.3", "proxy.internal"],
)
async def test_loopback_names_and_allowed_hosts_are_served(
    make_proxy: ProxyFactory, upstream: RawUpstream, host: str
) -> None:
    proxy = await make_proxy(allowed_hosts=("proxy.internal",))
    response = await raw_request(proxy.port, request("/v1/x", f"Host: {host}"))
    assert response.status == 200


async def test_foreign_origin_gets_403_and_nothing_is_forwarded(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy()
    for method in ("GET", "POST", "OPTIONS"):
        response = await raw_request(
            proxy.port,
            request(
                "/v1/x",
                "Host: 127.0.0.1",
                "Origin: https://evil.example",
                "Access-Control-Request-Method: PUT",
                method=method,
            ),
        )
        assert response.status == 403
        assert b'"origin_not_allowed"' in response.body
        assert response.header("Access-Control-Allow-Origin") is None
    assert upstream.received == []


async def test_cross_site_request_without_origin_is_refused(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    # Browsers send no Origin on a no-cors GET (an <img>, a fetch in no-cors mode), but they
    # do say Sec-Fetch-Site.
    proxy = await make_proxy()
    response = await raw_request(
        proxy.port, request("/v1/x", "Host: 127.0.0.1", "Sec-Fetch-Site: cross-site")
    )
    assert response.status == 403
    assert b'"origin_not_allowed"' in response.body
    assert upstream.received == []


async def test_allowed_origin_gets_cors_headers_on_the_forwarded_answer(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy(allowed_origins=("https://app.example.com",))
    response = await raw_request(
        proxy.port, request("/v1/x", "Host: 127.0.0.1", "Origin: https://app.example.com")
    )
    assert response.status == 200
    assert response.header("Access-Control-Allow-Origin") == "https://app.example.com"
    assert "X-Request-Id" in (response.header("Access-Control-Expose-Headers") or "")
    assert "Origin" in response.all("Vary")
    assert len(upstream.received) == 1


async def test_preflight_from_an_allowed_origin_is_answered_not_forwarded(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy(allowed_origins=("https://app.example.com",))
    with structlog.testing.capture_logs() as logs:
        response = await raw_request(
            proxy.port,
            request(
                "/contracting/v1/customers/products/1",
                "Host: 127.0.0.1",
                "Origin: https://app.example.com",
                "Access-Control-Request-Method: PUT",
                "Access-Control-Request-Headers: content-type, x-trace",
                method="OPTIONS",
            ),
        )
    assert [(line["method"], line["status"]) for line in logs if line["event"] == "request"] == [
        ("OPTIONS", 204)
    ]
    assert response.status == 204
    assert response.header("Access-Control-Allow-Origin") == "https://app.example.com"
    assert "PUT" in (response.header("Access-Control-Allow-Methods") or "")
    assert response.header("Access-Control-Allow-Headers") == "content-type, x-trace"
    assert upstream.received == []


async def test_probes_answer_whatever_the_host(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    response = await raw_request(proxy.port, request("/-/healthy", "Host: 10.1.2.3:8080"))
    assert response.status == 200


async def test_metrics_are_refused_to_a_foreign_host_and_probes_are_not(
    make_proxy: ProxyFactory,
) -> None:
    proxy = await make_proxy()
    metrics = await raw_request(proxy.port, request("/-/metrics", "Host: evil.example"))
    assert metrics.status == 403
    assert b'"host_not_allowed"' in metrics.body
    for probe in ("/-/healthy", "/-/ready", "/-/healthy?verbose=1"):
        response = await raw_request(proxy.port, request(probe, "Host: 10.1.2.3:8080"))
        assert response.status != 403


async def test_expect_100_continue_from_a_refused_origin_gets_403_without_continue(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy()
    response = await raw_request(
        proxy.port,
        request(
            "/v1/x",
            "Host: 127.0.0.1",
            "Origin: https://evil.example",
            "Expect: 100-continue",
            "Content-Length: 10",
            method="POST",
        ),
    )
    assert response.status == 403
    assert b'"origin_not_allowed"' in response.body
    assert upstream.received == []


async def test_refused_requests_get_an_access_line_and_are_counted(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy()
    refused = [
        (request("/v1/a?secret=s3", "Host: evil.example"), 403, "host_not_allowed"),
        (
            request("/v1/b", "Host: 127.0.0.1", "Origin: https://evil.example"),
            403,
            "origin_not_allowed",
        ),
        (request("127.0.0.1:443", "Host: 127.0.0.1", method="CONNECT"), 405, "method_not_allowed"),
    ]
    with structlog.testing.capture_logs() as logs:
        for data, status, _ in refused:
            assert (await raw_request(proxy.port, data)).status == status
    lines = [line for line in logs if line["event"] == "request"]
    assert [(line["status"], line["error"]) for line in lines] == [
        (status, code) for _, status, code in refused
    ]
    assert lines[0]["path"] == "/v1/a?secret=***"
    assert all(line["request_id"] and line["client"] == "127.0.0.1" for line in lines)
    text = (await raw_request(proxy.port, request("/-/metrics", "Host: 127.0.0.1"))).body.decode()
    for _, _, code in refused:
        assert f'agentsync_proxy_errors_total{{error="{code}"}} 1.0' in text
    assert upstream.received == []
