"""Where the simulator's absolute links point: its public URL, else the address it listens on."""

from __future__ import annotations

from aiohttp import web

from .state import SIMULATOR_STATE


def public_base(request: web.Request) -> str:
    """The configured public URL without a trailing '/', or the origin of the listening socket
    that accepted this request (with the real port when the simulator was given port 0)."""
    configured = request.app[SIMULATOR_STATE].config.public_url
    if configured is not None:
        return configured.rstrip("/")
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if not isinstance(sockname, tuple):  # a connection already gone, or not a TCP socket
        return f"{request.scheme}://{request.host}"
    host, port = sockname[0], sockname[1]
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{request.scheme}://{authority}"
