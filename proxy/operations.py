"""The operations endpoints under /-/: liveness, readiness and metrics. Never forwarded."""

from __future__ import annotations

import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.access import logged_path
from proxy.keys import ACCESS_LOG, METRICS, SETTINGS, SHUTTING_DOWN, TOKENS

log = structlog.get_logger("proxy.access")


def logged(handler: Handler) -> Handler:
    """Probes are left out of the access log unless --log-probes is set."""

    async def probe(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handler(request)
        settings = request.app[SETTINGS]
        if settings.log_probes:
            log.info(
                "request",
                method=request.method,
                path=logged_path(request.raw_path, settings.log_query),
                status=response.status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                client=request.remote,
            )
        return response

    return probe


@logged
async def healthy(request: web.Request) -> web.Response:
    return web.json_response({"status": "healthy"})


@logged
async def ready(request: web.Request) -> web.Response:
    if request.app[SHUTTING_DOWN].is_set():
        return web.json_response({"status": "not ready", "reason": "shutting down"}, status=503)
    tokens = request.app[TOKENS]
    if tokens.valid_token() is None:
        error = tokens.last_error
        reason = f"no valid token ({error.code}: {error.description})" if error else "no token yet"
        return web.json_response({"status": "not ready", "reason": reason}, status=503)
    return web.json_response({"status": "ready"})


@logged
async def metrics(request: web.Request) -> web.Response:
    request.app[ACCESS_LOG].write()  # every request answered so far is counted
    return web.Response(
        body=request.app[METRICS].render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def not_found(request: web.Request) -> web.Response:
    return web.json_response(
        {"error": "not_found", "error_description": "paths under /-/ belong to the proxy"},
        status=404,
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/-/metrics", metrics)
    app.router.add_route("*", "/-/{rest:.*}", not_found)
