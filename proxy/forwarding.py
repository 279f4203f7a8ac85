"""What goes to the upstream and what comes back: the target kept byte for byte, hop-by-hop
headers dropped both ways, the bearer token set, the answer streamed through."""

from __future__ import annotations

import re
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

from proxy.access import Exchange
from proxy.body import CapturedBody
from proxy.errors import AuthHostRefused, BadRequest, TargetNotAllowed, UpstreamUnreachable
from proxy.settings import is_auth_host
from proxy.token_endpoint import Token

# RFC 9110 7.6.1, plus the proxy-only fields.
HOP_BY_HOP = frozenset(
    istr(name)
    for name in (
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authorization",
        "Proxy-Authenticate",
    )
)
# Never copied from the client: the proxy sets these itself.
REQUEST_OWN = frozenset(
    istr(name) for name in ("Host", "Content-Length", "Expect", "Authorization", "X-Request-Id")
)
# Answers up to this size, with a Content-Length, are read whole and sent in one write.
SMALL_BODY = 64 * 1024
_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)


def _dropped(headers: CIMultiDictProxy[str], always: frozenset[istr]) -> set[str]:
    names: set[str] = set(always)
    for value in headers.getall("Connection", ()):
        names.update(istr(token.strip()) for token in value.split(",") if token.strip())
    return names


def request_headers(
    incoming: CIMultiDictProxy[str], request_id: str, body_size: int | None
) -> CIMultiDict[str]:
    """The client's end-to-end headers, without Authorization; the token is added per send."""
    drop = _dropped(incoming, HOP_BY_HOP | REQUEST_OWN)
    headers: CIMultiDict[str] = CIMultiDict(
        (name, value) for name, value in incoming.items() if name not in drop
    )
    headers["X-Request-Id"] = request_id
    if body_size is not None:
        headers["Content-Length"] = str(body_size)
    return headers


def response_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    drop = _dropped(incoming, HOP_BY_HOP)
    return CIMultiDict((name, value) for name, value in incoming.items() if name not in drop)


@dataclass(frozen=True)
class Upstream:
    """The configured API base URL, split once at start-up."""

    base: str  # scheme://authority/base-path, no trailing slash
    host: str
    origin: str

    @classmethod
    def from_base_url(cls, base_url: str) -> Upstream:
        url = URL(base_url, encoded=True)
        base = base_url.rstrip("/")
        return cls(base=base, host=(url.raw_host or "").lower(), origin=str(url.origin()))

    def target(self, raw_target: str) -> str:
        """The origin-form target to append to the base URL, or a ProxyError."""
        if raw_target.startswith("/"):
            if "#" in raw_target:
                raise BadRequest("the request target must not contain '#'")
            return raw_target
        match = _ABSOLUTE.fullmatch(raw_target)
        if match is None:
            raise BadRequest(
                "the request target must be a path such as /v1/... (an absolute URL is accepted"
                " only for the API host)"
            )
        authority, rest = match.group(2), match.group(3)
        host = authority.rpartition("@")[2]
        host = host.rpartition("]")[0] + "]" if host.startswith("[") else host.partition(":")[0]
        host = host.lower().rstrip(".")
        if is_auth_host(host):
            raise AuthHostRefused(
                f"{host} is an authorization server: the proxy sends API traffic only to"
                f" {self.origin}; send requests as paths, e.g. /v1/..."
            )
        if host != self.host or "@" in authority or "#" in rest:
            raise TargetNotAllowed(
                f"the proxy forwards only to {self.origin}; send requests as paths, e.g. /v1/..."
            )
        return rest if rest.startswith("/") else "/" + rest

    def url(self, target: str) -> URL:
        # Concatenation, never join: a target such as //evil.example stays a path.
        url = URL(self.base + target, encoded=True)
        if target.endswith("?") and not url.raw_query_string:
            # yarl drops an empty query; the client sent one, so the upstream gets one.
            url._cache["raw_path_qs"] = url.raw_path + "?"
        return url

    def rewrite_location(self, location: str, proxy_origin: str) -> str:
        """Point a redirect on the upstream's own origin back at the proxy."""
        if location.startswith(self.base + "/") or location == self.base:
            return proxy_origin + location[len(self.base) :]
        return location


def bearer(token: Token) -> str:
    return "Bearer " + token.value.reveal()


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: URL,
    headers: CIMultiDict[str],
    body: CapturedBody | None,
    token: Token,
) -> aiohttp.ClientResponse:
    headers = headers.copy()
    headers["Authorization"] = bearer(token)
    return await session.request(
        method,
        url,
        headers=headers,
        data=body.payload() if body is not None else None,
        allow_redirects=False,
    )


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    headers: CIMultiDict[str],
    exchange: Exchange,
) -> web.StreamResponse:
    """Stream the upstream's answer to the client, counting the body bytes sent.

    An upstream body that breaks off aborts the client's connection, so that a cut answer
    never looks complete."""
    has_body = request.method != "HEAD" and upstream.status not in (204, 304)
    length = upstream.content_length
    if has_body and length is not None and length <= SMALL_BODY:
        return await _whole(upstream, headers, exchange)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    await response.prepare(request)
    if not has_body:
        await response.write_eof()
        return response
    while True:
        try:
            chunk = await upstream.content.readany()
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
            exchange.error = "upstream_broke_off"
            _abort(request)
            upstream.close()
            return response
        if not chunk:
            break
        if exchange.bytes_out == 0 and upstream.status == 403:
            exchange.scope_hint(chunk)
        try:
            await response.write(chunk)
        except ConnectionError:  # the client went away
            upstream.close()
            raise
        exchange.bytes_out += len(chunk)
    await response.write_eof()
    return response


async def _whole(
    upstream: aiohttp.ClientResponse, headers: CIMultiDict[str], exchange: Exchange
) -> web.Response:
    """A small answer of known length is read first and sent in one write: headers and body
    leave together, and a body that breaks off becomes a clean 502."""
    try:
        body = await upstream.read()
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
        raise UpstreamUnreachable(
            "the API broke off its answer; retry, and check the API's health if it persists"
        ) from None
    if upstream.status == 403:
        exchange.scope_hint(body)
    exchange.bytes_out = len(body)
    return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()
