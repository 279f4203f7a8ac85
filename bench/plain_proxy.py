"""The plain aiohttp proxy a user would otherwise write, the benchmark's Python peer: one
catch-all route, one pooled ClientSession, the body read whole, the upstream's bytes answered in
one web.Response, a fixed bearer token (PLAIN_PROXY_TOKEN in its environment, else "static"), no
logging; on asyncio's event loop, or on uvloop's (agentsync-proxy's own) when the third argument
says so.

Usage: PLAIN_PROXY_TOKEN=... plain_proxy.py PORT UPSTREAM_URL [asyncio|uvloop]"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)
AUTHORIZATION = web.AppKey("authorization", str)
NOT_FORWARDED = frozenset({"host", "connection", "keep-alive", "content-length", "authorization"})


async def forward(request: web.Request) -> web.Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
    headers["Authorization"] = request.app[AUTHORIZATION]
    async with request.app[SESSION].request(
        request.method,
        request.app[UPSTREAM] + request.raw_path,
        headers=headers,
        data=await request.read() if request.body_exists else None,
        allow_redirects=False,
    ) as upstream:
        body = await upstream.read()
        content_type = upstream.headers.get("Content-Type", "application/octet-stream")
        return web.Response(
            status=upstream.status, body=body, headers={"Content-Type": content_type}
        )


async def session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as client:
        app[SESSION] = client
        yield


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        import uvloop  # only here: the asyncio peer runs without it

        return uvloop.new_event_loop()
    if name == "asyncio":
        return asyncio.new_event_loop()
    raise SystemExit(f"plain_proxy.py: unknown event loop {name!r}: asyncio or uvloop")


def main() -> None:
    port, upstream, *rest = sys.argv[1:]
    loop = new_loop(rest[0] if rest else "asyncio")
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app[AUTHORIZATION] = "Bearer " + os.environ.get("PLAIN_PROXY_TOKEN", "static")
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=int(port), access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
