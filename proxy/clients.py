"""The proxy's two HTTP clients, each a single pool for the life of the process: our lean client
for the API (proxy.upstream_client), an aiohttp session for the token endpoint."""

from __future__ import annotations

import ssl
import urllib.request

import aiohttp
from yarl import URL

from proxy.settings import Settings
from proxy.token_endpoint import TokenEndpoint
from proxy.upstream_client import UpstreamClient


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The system's CAs, plus --ca-bundle's; certificates and host names are always verified."""
    context = ssl.create_default_context()
    if settings.ca_bundle is not None:
        context.load_verify_locations(cafile=str(settings.ca_bundle))
    return context


def env_proxy(url: str) -> str | None:
    """The egress proxy for `url` from HTTPS_PROXY / HTTP_PROXY / NO_PROXY, looked up once.

    aiohttp's trust_env would look it up (and read ~/.netrc) in a thread on every request."""
    parsed = URL(url)
    proxies = urllib.request.getproxies_environment()
    if parsed.host is None or urllib.request.proxy_bypass(parsed.host):
        return None
    return proxies.get(parsed.scheme)


def upstream_client(settings: Settings) -> UpstreamClient:
    """Must be created inside the running event loop."""
    return UpstreamClient(
        settings.api_base_url,
        ssl_context=ssl_context(settings),
        connect_timeout=settings.connect_timeout,
        timeout=settings.upstream_timeout,
        proxy=env_proxy(settings.api_base_url),
    )


def token_session(settings: Settings) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=4, ssl=ssl_context(settings)),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
        proxy=env_proxy(settings.token_url),
    )


def token_endpoint(session: aiohttp.ClientSession, settings: Settings) -> TokenEndpoint:
    return TokenEndpoint(
        session=session,
        url=settings.token_url,
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        environment=settings.environment,
        scope=settings.scope,
        client_auth=settings.client_auth,
        default_lifetime=settings.default_token_lifetime,
        timeout=settings.token_timeout,
    )
