"""What goes to the upstream and what comes back: the target kept byte for byte, hop-by-hop
headers dropped both ways, the bearer token set, the answer streamed through."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.access import Exchange
from proxy.body import CapturedBody
from proxy.errors import AuthHostRefused, BadRequest, TargetNotAllowed, upstream_broke_off
from proxy.settings import is_auth_host
from proxy.token_endpoint import Token

# RFC 9110 7.6.1, plus the proxy-only fields; names are compared in lower case.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    }
)
# Never copied from the client: the proxy sets these itself.
REQUEST_OWN = frozenset({"host", "content-length", "expect", "authorization", "x-request-id"})
_REQUEST_DROPPED = HOP_BY_HOP | REQUEST_OWN
_RESPONSE_DROPPED = HOP_BY_HOP | {"x-request-id"}  # the client gets the proxy's request id
# Answers up to this size, with a Content-Length, are read whole and sent in one write.
SMALL_BODY = 64 * 1024
# An answer's body that stops before its end, or stalls for the upstream timeout.
BODY_BROKE_OFF = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError)
_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)
Headers = CIMultiDictProxy[str] | CIMultiDict[str]


def _dropped(headers: Headers, always: frozenset[str]) -> frozenset[str]:
    """`always`, plus the names the Connection header lists."""
    listed = headers.getall("Connection", ())
    if not listed:
        return always
    names = {name.strip().lower() for value in listed for name in value.split(",")}
    return always | names


def request_headers(
    incoming: CIMultiDictProxy[str], request_id: str, body_size: int | None
) -> list[tuple[str, str]]:
    """The client's end-to-end headers, without Authorization; the token is added per send."""
    drop = _dropped(incoming, _REQUEST_DROPPED)
    headers = [(name, value) for name, value in incoming.items() if name.lower() not in drop]
    headers.append(("X-Request-Id", request_id))
    if body_size is not None:
        headers.append(("Content-Length", str(body_size)))
    return headers


def response_headers(
    incoming: Headers, request_id: str, rewrite_location: Callable[[str], str]
) -> list[tuple[str, str]]:
    """The upstream's end-to-end headers, a Location rewritten, and the request id."""
    drop = _dropped(incoming, _RESPONSE_DROPPED)
    headers = [(name, value) for name, value in incoming.items() if name.lower() not in drop]
    if "Location" in incoming:
        headers = [
            (name, rewrite_location(value) if name.lower() == "location" else value)
            for name, value in headers
        ]
    headers.append(("X-Request-Id", request_id))
    return headers


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

    def url(self, raw_target: str) -> URL:
        """The upstream URL of the client's target, kept byte for byte, or a ProxyError."""
        return URL(self.base + self.target(raw_target), encoded=True)

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
    headers: list[tuple[str, str]],
    body: CapturedBody | None,
    token: Token,
) -> aiohttp.ClientResponse:
    """Send to `url` (the API base URL and the client's target, joined once as text, never
    resolved), with the token; the answer once its headers are in."""
    headers = [*headers, ("Authorization", bearer(token))]
    return await session.request(
        method,
        url,
        headers=headers,
        data=None if body is None else body.payload(),
        allow_redirects=False,
    )


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    headers: list[tuple[str, str]],
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
        except BODY_BROKE_OFF:
            exchange.error = "upstream_broke_off"
            _abort(request)
            return response
        if not chunk:
            break
        if exchange.bytes_out == 0 and upstream.status == 403:
            exchange.scope_hint(chunk)
        await response.write(chunk)  # a client gone raises ConnectionError: the caller releases
        exchange.bytes_out += len(chunk)
    await response.write_eof()
    return response


async def _whole(
    upstream: aiohttp.ClientResponse, headers: list[tuple[str, str]], exchange: Exchange
) -> web.Response:
    """A small answer of known length is read first and sent in one write: headers and body
    leave together, and a body that breaks off becomes a clean 502."""
    try:
        body = await upstream.read()
    except BODY_BROKE_OFF:
        raise upstream_broke_off() from None
    if upstream.status == 403:
        exchange.scope_hint(body)
    exchange.bytes_out = len(body)
    return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()
