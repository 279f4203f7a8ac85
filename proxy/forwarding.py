"""What goes to the upstream: the target kept byte for byte, never sent anywhere but the API
base URL, hop-by-hop headers dropped, the bearer token set."""

from __future__ import annotations

import re
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from proxy.body import CapturedBody
from proxy.errors import AuthHostRefused, BadRequest, TargetNotAllowed
from proxy.settings import is_auth_host
from proxy.token_endpoint import Token

# RFC 9110 7.6.1, plus the proxy-only fields; names are compared in lower case.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"}
    | {"upgrade", "proxy-authorization", "proxy-authenticate"}
)
# Never copied from the client: the proxy sets these itself.
REQUEST_OWN = frozenset({"host", "content-length", "expect", "authorization", "x-request-id"})
_REQUEST_DROPPED = HOP_BY_HOP | REQUEST_OWN
# Bodies up to this size, with a Content-Length, are read whole and sent in one write.
SMALL_BODY = 64 * 1024
# What the proxy can decode to rewrite the links of a JSON answer.
DECODABLE = frozenset({"gzip", "x-gzip", "deflate", "identity"})
_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)


def dropped(headers: CIMultiDictProxy[str], always: frozenset[str]) -> frozenset[str]:
    """`always`, plus the names the Connection header lists."""
    listed = headers.getall("Connection", ())
    if not listed:
        return always
    return always | {name.strip().lower() for value in listed for name in value.split(",")}


def request_headers(
    incoming: CIMultiDictProxy[str],
    request_id: str,
    body_size: int | None,
    *,
    decodable_only: bool = False,
) -> list[tuple[str, str]]:
    """The client's end-to-end headers, without Authorization (added per send). With
    `decodable_only`, Accept-Encoding keeps only codings whose links the proxy can rewrite."""
    drop = dropped(incoming, _REQUEST_DROPPED)
    headers = [(name, value) for name, value in incoming.items() if name.lower() not in drop]
    if decodable_only and "Accept-Encoding" in incoming:
        headers = [(n, _decodable(v) if n.lower() == "accept-encoding" else v) for n, v in headers]
        headers = [(n, v) for n, v in headers if v or n.lower() != "accept-encoding"]
    headers.append(("X-Request-Id", request_id))
    if body_size is not None:
        headers.append(("Content-Length", str(body_size)))
    return headers


def _decodable(accept_encoding: str) -> str:
    codings = [item.strip() for item in accept_encoding.split(",")]
    kept = [item for item in codings if item.partition(";")[0].strip().lower() in DECODABLE]
    return ", ".join(kept)


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
        if raw_target.startswith("/"):
            if "#" in raw_target:
                raise BadRequest("the request target must not contain '#'")
            return URL(self.base + raw_target, encoded=True)
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
        return URL(self.base + (rest if rest.startswith("/") else "/" + rest), encoded=True)


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
    return await session.request(
        method,
        url,
        headers=[*headers, ("Authorization", "Bearer " + token.value.reveal())],
        data=None if body is None else body.payload(),
        allow_redirects=False,
    )
