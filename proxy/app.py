"""The proxy's aiohttp application: its resources in one cleanup context, the operations
endpoints under /-/, and the thin handler that forwards everything else."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from functools import partial

import aiohttp
import structlog
from aiohttp import web

from proxy import answers, clients, forwarding, guard, operations
from proxy.access import AccessLog, Exchange
from proxy.body import CapturedBody, too_large_description
from proxy.errors import BodyNotKept, ProxyError, RequestTooLarge, error_response, upstream_failure
from proxy.keys import (
    ACCESS_LOG,
    CLIENT,
    LINKS,
    METRICS,
    PACER,
    SETTINGS,
    SHUTTING_DOWN,
    TOKENS,
    UPSTREAM,
)
from proxy.links import LinkRewriter
from proxy.metrics import Metrics
from proxy.pacing import Mode, Pacer
from proxy.replay import send_with_replay
from proxy.settings import Settings
from proxy.token_endpoint import TokenEndpoint
from proxy.tokens import CountedFetcher, TokenFetcher, TokenSource

log = structlog.get_logger("proxy")


def create_app(
    settings: Settings, *, token_source_options: dict[str, float] | None = None
) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_size)
    guard.install(app, settings)
    app[SETTINGS] = settings
    app[UPSTREAM] = forwarding.Upstream.from_base_url(settings.api_base_url)
    # A Location on the API always comes back through the proxy; links in bodies and Link
    # headers with --rewrite-links, from the --link-origins too.
    origins = settings.link_origins if settings.rewrite_links else ()
    app[LINKS] = LinkRewriter.for_upstream(settings.api_base_url, origins)
    app[SHUTTING_DOWN] = asyncio.Event()
    app[METRICS] = metrics = Metrics()
    app[ACCESS_LOG] = access_log = AccessLog(metrics, settings.log_query)
    mode: Mode = "off" if settings.pacing == "off" else settings.api_requests_per_minute or "auto"
    app[PACER] = pacer = Pacer.for_mode(mode, settings.rate_limit_wait, metrics)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        app[CLIENT] = upstream = clients.upstream_session(settings)
        token_session = clients.token_session(settings)
        endpoint = TokenEndpoint(token_session, settings)
        fetcher: TokenFetcher = CountedFetcher(endpoint, metrics.token_attempt)
        fleet = None
        if settings.redis_url is not None:
            # One token for a fleet of replicas; redis and cryptography are loaded only then.
            from proxy.fleet_tokens import join_fleet

            fleet, fetcher = await join_fleet(settings, fetcher, metrics.redis)
            if pacer.state is not None:  # and one rate budget
                from proxy.fleet_pacing import RedisPacingState

                per_minute = mode if isinstance(mode, int) else None
                pacer.state = await RedisPacingState.joined(fleet, per_minute)
        app[TOKENS] = tokens = TokenSource(
            fetcher,
            refresh_margin=settings.refresh_margin,
            requests_per_minute=settings.token_requests_per_minute,
            wait_timeout=settings.token_timeout,
            **(token_source_options or {}),  # type: ignore[arg-type]
        )
        metrics.track_token_expiry(tokens.seconds_left)
        refresher = asyncio.get_running_loop().create_task(tokens.run())
        async with contextlib.AsyncExitStack() as closing:  # each closes, whatever the others do
            if fleet is not None:
                closing.push_async_callback(fleet.close)  # the last: once nothing uses Redis
            closing.push_async_callback(token_session.close)
            closing.push_async_callback(upstream.close)
            closing.push_async_callback(tokens.close)
            closing.push_async_callback(asyncio.wait, (refresher,))
            closing.callback(access_log.write)  # the lines of the last requests
            closing.callback(refresher.cancel)  # the first to run
            yield

    async def on_shutdown(app: web.Application) -> None:
        app[SHUTTING_DOWN].set()

    app.cleanup_ctx.append(resources)
    app.on_shutdown.append(on_shutdown)
    operations.add_routes(app)
    app.router.add_route("*", "/{tail:.*}", forward, expect_handler=continue_later)
    return app


async def continue_later(request: web.Request) -> None:
    """Send no 100 Continue yet: the handler sends it once the guard has let the request pass
    and its declared size fits, so a refused client never sends the body."""


async def forward(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS]
    exchange = Exchange.of(request)
    access_log = app[ACCESS_LOG]
    access_log.begin()
    body: CapturedBody | None = None
    try:
        upstream = app[UPSTREAM]
        url = upstream.url(request.raw_path)
        length = request.content_length  # sent as it came, `Content-Length: 0` too
        if request.body_exists:
            if (length or 0) > settings.max_body_size:
                raise RequestTooLarge(too_large_description(settings.max_body_size))
            expects = request.headers.get("Expect", "").lower() == "100-continue"
            if expects and request.version >= aiohttp.HttpVersion11 and request.transport:
                request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = CapturedBody(
                request.content,
                max_size=settings.max_body_size,
                threshold=settings.spool_threshold,
                timeout=settings.client_timeout,
            )
            if length is None or length <= forwarding.SMALL_BODY:
                # A small body leaves with the head in one write; a chunked one is read whole so
                # that the upstream gets its length. Larger bodies go upstream as they arrive.
                await body.read_all()
                length = body.received
        headers = forwarding.request_headers(
            request.headers, exchange.request_id, length, decodable_only=settings.rewrite_links
        )
        sent_at = time.perf_counter()
        try:
            send = partial(forwarding.send, app[CLIENT], request.method, url, headers, body)
            access_log.write_soon()  # while this request is away
            answer = await send_with_replay(send, app[TOKENS], app[PACER], exchange)
        except (aiohttp.ClientError, TimeoutError) as exc:
            if body is not None and body.failure is not None:
                raise body.failure from None  # the client's side failed, not the upstream
            log.warning("upstream_failed", request_id=exchange.request_id, exc_info=exc)
            raise upstream_failure(exc, upstream.origin) from None
        exchange.upstream_seconds = time.perf_counter() - sent_at
        async with answer as upstream_response:
            exchange.status = exchange.upstream_status = upstream_response.status
            return await answers.relay(
                request, upstream_response, exchange, app[LINKS], settings.rewrite_links
            )
    except ProxyError as error:
        exchange.status, exchange.error = error.status, error.code
        response = error_response(error, exchange.request_id)
        if body is not None and not body.complete:
            response.force_close()  # the rest of the body is not worth waiting for
        return response
    except ConnectionError:
        # The client went away; 499 is what the access log calls it (nginx's convention).
        exchange.status, exchange.error = 499, "client_disconnected"
        return web.Response(status=499)
    except asyncio.CancelledError:  # the client hung up (the server cancels its handler)
        exchange.status, exchange.error = 499, "client_disconnected"
        raise
    except Exception:
        log.exception("request_failed", request_id=exchange.request_id)
        exchange.status, exchange.error = 500, "internal_error"
        return error_response(
            ProxyError(f"the proxy failed unexpectedly; its log has request {exchange.request_id}"),
            exchange.request_id,
        )
    finally:
        try:
            if body is not None:
                exchange.bytes_in = body.received
                if isinstance(failure := body.failure, BodyNotKept):
                    log.warning(
                        "request_body_not_kept",
                        request_id=exchange.request_id,
                        error=failure.description,
                    )
                # A second cancellation (shutdown's, then the closed connection's) can end this
                # wait for a worker thread: the line is still due.
                await body.close()
        finally:
            # The access line and the metrics wait for the answer to leave (the handler returns
            # it to aiohttp, which sends it), and for a moment when the proxy is idle: they are
            # not part of the client's latency. in_flight drops then too, so that "nothing in
            # flight" still means "every access line written".
            access_log.add(exchange)
