"""HTTPS towards the token endpoint and the API: certificates are always verified, against the
system's CAs or --ca-bundle; HTTPS_PROXY, HTTP_PROXY and NO_PROXY are honoured (real CLI)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
import trustme
from aiohttp import web
from yarl import URL

from proxy.servers import RunningProxy, RunningSimulator, running_proxy, settings_for
from proxy.simulator import SimulatorConfig
from proxy.simulator import create_app as create_simulator_app
from tests.cli_process import serve
from tests.conftest import FAST_RETRIES
from tests.rawhttp import LoopbackServer, RawUpstream, Writer, read_body, read_head

# ---- TLS servers signed by a test CA ----


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_bundle(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


LOCAL_NAMES = ("localhost", "127.0.0.1")


@asynccontextmanager
async def serve_tls(app: web.Application, context: ssl.SSLContext) -> AsyncIterator[str]:
    """Serve `app` over HTTPS on 127.0.0.1; yields its origin."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class ApiRequest(NamedTuple):
    method: str
    target: str
    host: str | None
    authorization: str | None


@dataclass
class TlsApi:
    """An HTTPS upstream that records each request and answers {"ok": true}."""

    url: str = ""
    received: list[ApiRequest] = field(default_factory=list)

    def app(self) -> web.Application:
        async def answer(request: web.Request) -> web.Response:
            self.received.append(
                ApiRequest(
                    request.method,
                    request.raw_path,
                    request.headers.get("Host"),
                    request.headers.get("Authorization"),
                )
            )
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        return app


@asynccontextmanager
async def tls_api(context: ssl.SSLContext) -> AsyncIterator[TlsApi]:
    api = TlsApi()
    async with serve_tls(api.app(), context) as url:
        api.url = url
        yield api


@asynccontextmanager
async def tls_simulator(context: ssl.SSLContext) -> AsyncIterator[RunningSimulator]:
    config = SimulatorConfig()
    app = create_simulator_app(config)
    async with serve_tls(app, context) as url:
        yield RunningSimulator(url, config, app)


@asynccontextmanager
async def proxy_to(
    simulator: RunningSimulator, api_base_url: str, **overrides: Any
) -> AsyncIterator[RunningProxy]:
    settings = settings_for(simulator, api_base_url=api_base_url, **overrides)
    async with running_proxy(settings, token_source_options=FAST_RETRIES) as proxy:
        yield proxy


async def get(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


# ---- in-process proxy ----


async def test_token_endpoint_with_an_untrusted_certificate_gets_no_request(
    ca: trustme.CA,
) -> None:
    async with (
        tls_simulator(server_context(ca, *LOCAL_NAMES)) as simulator,
        tls_api(server_context(ca, *LOCAL_NAMES)) as api,
        proxy_to(simulator, api.url) as proxy,
    ):
        status, body = await get(proxy.url + "/v1/x")
    assert (status, body["error"]) == (503, "token_unavailable")
    assert simulator.state.token_requests == 0  # the secret never left over that connection
    assert api.received == []


async def test_upstream_with_an_untrusted_certificate_is_unreachable(
    ca: trustme.CA, agentsync_simulator: RunningSimulator
) -> None:
    async with (
        tls_api(server_context(ca, *LOCAL_NAMES)) as api,
        proxy_to(agentsync_simulator, api.url) as proxy,
    ):
        status, body = await get(proxy.url + "/v1/x")
    assert (status, body["error"]) == (502, "upstream_unreachable")
    assert api.received == []


async def test_ca_bundle_makes_https_token_endpoint_and_upstream_work_end_to_end(
    ca: trustme.CA, ca_bundle: Path
) -> None:
    async with (
        tls_simulator(server_context(ca, *LOCAL_NAMES)) as simulator,
        tls_api(server_context(ca, *LOCAL_NAMES)) as api,
        proxy_to(simulator, api.url, ca_bundle=ca_bundle) as proxy,
    ):
        status, body = await get(proxy.url + "/v1/x?page=1")
    assert (status, body) == (200, {"ok": True})
    [token] = simulator.state.tokens.issued()
    port = URL(api.url).port
    assert api.received == [("GET", "/v1/x?page=1", f"127.0.0.1:{port}", f"Bearer {token}")]


async def test_upstream_certificate_for_another_host_name_is_refused_even_with_the_ca(
    ca: trustme.CA, ca_bundle: Path, agentsync_simulator: RunningSimulator
) -> None:
    async with (
        tls_api(server_context(ca, "api.wrong.example")) as api,
        proxy_to(agentsync_simulator, api.url, ca_bundle=ca_bundle) as proxy,
    ):
        status, body = await get(proxy.url + "/v1/x")
    assert (status, body["error"]) == (502, "upstream_unreachable")
    assert api.received == []


async def test_token_endpoint_certificate_for_another_host_name_is_refused_even_with_the_ca(
    ca: trustme.CA, ca_bundle: Path
) -> None:
    async with (
        tls_simulator(server_context(ca, "auth.wrong.example")) as simulator,
        tls_api(server_context(ca, *LOCAL_NAMES)) as api,
        proxy_to(simulator, api.url, ca_bundle=ca_bundle) as proxy,
    ):
        status, body = await get(proxy.url + "/v1/x")
    assert (status, body["error"]) == (503, "token_unavailable")
    assert simulator.state.token_requests == 0
    assert api.received == []


# ---- the real CLI behind a forward proxy ----


class ForwardProxy(LoopbackServer):
    """A tiny HTTP forward proxy: records each request line, relays an absolute-form request to
    its origin in origin form (one upstream connection per request), tunnels a CONNECT."""

    def __init__(self) -> None:
        super().__init__()
        self.request_lines: list[str] = []

    async def exchange(
        self,
        request_line: str,
        headers: list[tuple[str, str]],
        reader: asyncio.StreamReader,
        writer: Writer,
    ) -> bool:
        self.request_lines.append(request_line)
        method, target, version = request_line.split(" ", 2)
        if method == "CONNECT":
            await self._tunnel(target, reader, writer)
            return False
        body = await read_body(reader, headers)
        writer.write(await self._exchange(method, target, version, headers, body))
        await writer.drain()
        return True

    async def _exchange(
        self, method: str, target: str, version: str, headers: list[tuple[str, str]], body: bytes
    ) -> bytes:
        url = URL(target, encoded=True)
        reader, writer = await asyncio.open_connection(url.raw_host, url.port)
        try:
            lines = [f"{method} {url.raw_path_qs} {version}"]
            lines += [f"{k}: {v}" for k, v in headers if k.lower() not in HOP_BY_HOP]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            status_line, response_headers = await read_head(reader)
            response_body = await read_body(reader, response_headers)
        finally:
            writer.close()
        lines = [status_line]
        lines += [f"{k}: {v}" for k, v in response_headers if k.lower() not in RE_FRAMED]
        lines.append(f"Content-Length: {len(response_body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response_body

    async def _tunnel(self, authority: str, reader: asyncio.StreamReader, writer: Writer) -> None:
        host, _, port = authority.rpartition(":")
        target_reader, target_writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(_pipe(reader, target_writer), _pipe(target_reader, writer))
        finally:
            target_writer.close()


HOP_BY_HOP = frozenset({"connection", "proxy-connection", "keep-alive", "proxy-authorization"})
RE_FRAMED = HOP_BY_HOP | {"content-length", "transfer-encoding"}


async def _pipe(reader: asyncio.StreamReader, writer: Writer) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


@pytest.fixture
async def forward_proxy() -> AsyncIterator[ForwardProxy]:
    proxy = ForwardProxy()
    await proxy.start()
    yield proxy
    await proxy.close()


def cli_env(simulator: RunningSimulator, api_base_url: str, **extra: str) -> dict[str, str]:
    return {
        "AGENTSYNC_CLIENT_ID": simulator.config.client_id,
        "AGENTSYNC_CLIENT_SECRET": simulator.config.client_secret,
        "AGENTSYNC_TOKEN_URL": simulator.token_url,
        "AGENTSYNC_API_BASE_URL": api_base_url,
        **extra,
    }


async def test_http_proxy_carries_token_and_api_requests(
    agentsync_simulator: RunningSimulator,
    upstream: RawUpstream,
    forward_proxy: ForwardProxy,
    unused_tcp_port: int,
) -> None:
    env = cli_env(agentsync_simulator, upstream.url, HTTP_PROXY=forward_proxy.url)
    async with serve(env, unused_tcp_port, capture=False) as served:
        status, body = await get(served.url + "/v1/x?a=1")
    assert (status, body) == (200, {"ok": True})
    assert f"POST {agentsync_simulator.token_url} HTTP/1.1" in forward_proxy.request_lines
    assert f"GET {upstream.url}/v1/x?a=1 HTTP/1.1" in forward_proxy.request_lines
    assert [r.target for r in upstream.received] == ["/v1/x?a=1"]


async def test_no_proxy_sends_requests_to_listed_hosts_directly(
    agentsync_simulator: RunningSimulator,
    upstream: RawUpstream,
    forward_proxy: ForwardProxy,
    unused_tcp_port: int,
) -> None:
    env = cli_env(
        agentsync_simulator, upstream.url, HTTP_PROXY=forward_proxy.url, NO_PROXY="127.0.0.1"
    )
    async with serve(env, unused_tcp_port, capture=False) as served:
        status, body = await get(served.url + "/v1/x")
    assert (status, body) == (200, {"ok": True})
    assert forward_proxy.request_lines == []
    assert [r.target for r in upstream.received] == ["/v1/x"]


async def test_https_proxy_tunnels_https_api_requests_with_connect(
    ca: trustme.CA,
    ca_bundle: Path,
    agentsync_simulator: RunningSimulator,
    forward_proxy: ForwardProxy,
    unused_tcp_port: int,
) -> None:
    async with tls_api(server_context(ca, *LOCAL_NAMES)) as api:
        env = cli_env(
            agentsync_simulator,
            api.url,
            HTTPS_PROXY=forward_proxy.url,
            AGENTSYNC_PROXY_CA_BUNDLE=str(ca_bundle),
        )
        async with serve(env, unused_tcp_port, capture=False) as served:
            status, body = await get(served.url + "/v1/x")
    assert (status, body) == (200, {"ok": True})
    # The token endpoint is plain http://, which HTTPS_PROXY does not cover.
    assert forward_proxy.request_lines == [f"CONNECT {URL(api.url).authority} HTTP/1.1"]
    assert [(r.method, r.target) for r in api.received] == [("GET", "/v1/x")]
