"""The plain aiohttp proxy a user would otherwise write, the benchmark's Python peer: one
catch-all route, one pooled ClientSession, the body read whole, the upstream's bytes answered in
one web.Response, a static bearer token, no logging. Usage: plain_proxy.py PORT UPSTREAM_URL"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)
NOT_FORWARDED = frozenset({"host", "connection", "keep-alive", "content-length", "authorization"})


async def forward(request: web.Request) -> web.Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
    headers["Authorization"] = "Bearer static"
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


def main() -> None:
    app = web.Application()
    app[UPSTREAM] = sys.argv[2].rstrip("/")
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
