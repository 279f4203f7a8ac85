"""Who may use the proxy: checks made before any request is forwarded (DESIGN.md section 8)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.errors import MethodNotAllowed, ProxyError, error_response


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.method == "CONNECT":
            raise MethodNotAllowed("CONNECT is not supported: this is a reverse proxy")
    except ProxyError as error:
        return error_response(error, request.headers.get("X-Request-Id"))
    return await handler(request)
