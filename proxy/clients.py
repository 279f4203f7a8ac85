"""The proxy's two HTTP clients, aiohttp sessions each with one pool for the life of the
process: one for the API, one for the token endpoint."""

from __future__ import annotations

import ssl
import urllib.request

import aiohttp
from yarl import URL

from proxy.settings import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The system's CAs, plus --ca-bundle's; certificates and host names are always verified."""
    context = ssl.create_default_context()
    if settings.ca_bundle is not None:
        context.load_verify_locations(cafile=str(settings.ca_bundle))
    return context


def env_proxy(url: str) -> str | None:
    """The egress proxy for `url` from HTTPS_PROXY / HTTP_PROXY / NO_PROXY, looked up once:
    aiohttp's trust_env would look it up (and read ~/.netrc) in a thread on every request."""
    parsed = URL(url)
    if parsed.host is None or urllib.request.proxy_bypass(parsed.host):
        return None
    return urllib.request.getproxies_environment().get(parsed.scheme)


def upstream_session(settings: Settings) -> aiohttp.ClientSession:
    """Must be created inside the running event loop. Nothing times out a long answer that keeps
    flowing: only no connection within --connect-timeout, or no byte for --upstream-timeout."""
    connector = aiohttp.TCPConnector(
        limit=settings.max_connections,
        limit_per_host=settings.max_connections,
        keepalive_timeout=30.0,  # seconds an idle upstream connection stays in the pool
        ssl=ssl_context(settings),
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout, sock_read=settings.upstream_timeout
        ),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        # Headers aiohttp would add on its own; the client's own, if it sent them, still pass.
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        proxy=env_proxy(settings.api_base_url),
    )


def token_session(settings: Settings) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=4, ssl=ssl_context(settings)),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
        proxy=env_proxy(settings.token_url),
    )
