"""What comes back to the client: the upstream's answer streamed through, hop-by-hop headers
dropped, and the API's links (Location, Link, and in JSON bodies) pointed back at the proxy."""

from __future__ import annotations

import asyncio

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDictProxy

from proxy import links
from proxy.access import Exchange
from proxy.errors import UpstreamUnreachable
from proxy.forwarding import HOP_BY_HOP, SMALL_BODY, dropped

log = structlog.get_logger("proxy.answers")
_DROPPED = HOP_BY_HOP | {"x-request-id"}  # the client gets the proxy's request id
# Rewriting a larger answer takes milliseconds: a worker thread does it, the loop going on.
REWRITE_IN_THREAD = 1 << 20
# An answer's body that stops before its end, or stalls for the upstream timeout.
BODY_BROKE_OFF = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError)


def response_headers(
    incoming: CIMultiDictProxy[str],
    request_id: str,
    rewriter: links.LinkRewriter,
    proxy_origin: str,
    *,
    link_headers: bool,
) -> list[tuple[str, str]]:
    """The upstream's end-to-end headers and the request id; Location, and Link with
    `link_headers`, pointed at the proxy."""
    drop = dropped(incoming, _DROPPED)
    headers = []
    for name, value in incoming.items():
        lower = name.lower()
        if lower in drop:
            continue
        if lower == "location":
            value = rewriter.url(value, proxy_origin)
        elif lower == "link" and link_headers:
            value = rewriter.link_header(value, proxy_origin)
        headers.append((name, value))
    headers.append(("X-Request-Id", request_id))
    return headers


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    exchange: Exchange,
    rewriter: links.LinkRewriter,
    rewrite_links: bool,
) -> web.StreamResponse:
    """Stream the upstream's answer, counting body bytes; a JSON one, with `rewrite_links`, is read
    whole and its links rewritten. A cut body aborts the connection: it never looks complete."""
    origin = f"http://{request.host}"
    headers = response_headers(
        upstream.headers, exchange.request_id, rewriter, origin, link_headers=rewrite_links
    )
    has_body = request.method != "HEAD" and upstream.status not in (204, 304)
    length = upstream.content_length
    head: bytes = b""
    if has_body and rewrite_links and links.is_json(upstream.headers.get("Content-Type")):
        if length is None or length <= links.LIMIT:
            # Of known length, read as a small answer is, in one go.
            head = await _read(upstream, None if length is not None else links.LIMIT + 1)
            if len(head) <= links.LIMIT:
                answer = await _rewritten(upstream, head, headers, exchange, rewriter, origin)
                if exchange.bytes_out > SMALL_BODY:
                    # Sent here rather than by aiohttp once the handler returns, as a streamed
                    # answer is: its duration ends when it has left, and a client that leaves
                    # meanwhile is seen (499).
                    await answer.prepare(request)
                    await answer.write_eof()
                return answer
        log.warning(
            "links_not_rewritten",
            request_id=exchange.request_id,
            reason=f"the answer is larger than {links.LIMIT >> 20} MiB",
        )
    elif has_body and length is not None and length <= SMALL_BODY:
        # Read first and sent in one write: headers and body leave together, and a body that
        # breaks off becomes a clean 502.
        body = await _read(upstream)
        if upstream.status == 403:
            exchange.scope_hint(body)
        exchange.bytes_out = len(body)
        return web.Response(
            status=upstream.status, reason=upstream.reason, headers=headers, body=body
        )
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    await response.prepare(request)
    if not has_body:
        await response.write_eof()
        return response
    chunk = head
    while True:
        if chunk:
            if exchange.bytes_out == 0 and upstream.status == 403:
                exchange.scope_hint(chunk)
            await response.write(chunk)  # a client gone raises ConnectionError
            exchange.bytes_out += len(chunk)
        try:
            chunk = await upstream.content.readany()
        except BODY_BROKE_OFF:
            exchange.error = "upstream_broke_off"
            if request.transport is not None:
                request.transport.abort()
            return response
        if not chunk:
            break
    await response.write_eof()
    return response


async def _read(upstream: aiohttp.ClientResponse, limit: int | None = None) -> bytes:
    """The body whole, or its first `limit` bytes or a little more; a break-off is a clean 502."""
    try:
        if limit is None:
            return await upstream.read()
        parts, size = [], 0
        while size < limit and (chunk := await upstream.content.readany()):
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)
    except BODY_BROKE_OFF:  # before anything of the answer was sent to the client
        raise UpstreamUnreachable(
            "the API broke off its answer; retry, and check the API's health if it persists"
        ) from None


async def _rewritten(
    upstream: aiohttp.ClientResponse,
    body: bytes,
    headers: list[tuple[str, str]],
    exchange: Exchange,
    rewriter: links.LinkRewriter,
    proxy_origin: str,
) -> web.Response:
    encoding = upstream.headers.get("Content-Encoding")
    if len(body) > REWRITE_IN_THREAD:
        result = await asyncio.to_thread(rewriter.answer, body, encoding, proxy_origin)
    else:
        result = rewriter.answer(body, encoding, proxy_origin)
    if result.skipped is not None:
        log.warning("links_not_rewritten", request_id=exchange.request_id, reason=result.skipped)
    if upstream.status == 403:
        exchange.scope_hint(result.body)
    exchange.bytes_out = len(result.body)
    exchange.links_rewritten = result.changed  # re-encoded as it came: Content-Encoding stays
    answer = web.Response(
        status=upstream.status, reason=upstream.reason, headers=headers, body=result.body
    )
    if result.changed:  # else the upstream's very bytes, under its headers as they came
        # web.Response gives the new body its Content-Length once the upstream's is gone; a
        # body that is no longer the upstream's byte for byte has a weak ETag.
        answer.headers.popall("Content-Length", None)
        if (etag := answer.headers.get("ETag")) is not None:
            answer.headers["ETag"] = links.weak_etag(etag)
    return answer
