"""Who may use the proxy, checked before anything is forwarded: the client's address, the Host
it asked for (DNS rebinding) and the web origin behind it (CORS)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.access import Exchange
from proxy.errors import (
    METHODS,
    BadRequest,
    ClientNotAllowed,
    HostNotAllowed,
    MethodNotAllowed,
    OriginNotAllowed,
    ProxyError,
    error_response,
)
from proxy.keys import METRICS, SETTINGS
from proxy.settings import IPNetwork, Settings, is_loopback_host

# Browsers mark the requests a page makes; curl and applications send no Sec-Fetch-Site at all.
SAFE_FETCH_SITES = frozenset({"none", "same-origin"})
# Liveness and readiness answer whatever the Host: an orchestrator probes by address. Metrics do
# not, so that a page reached by DNS rebinding cannot read them.
PROBES = frozenset({"/-/healthy", "/-/ready"})
VERDICTS_KEPT = 1024


@dataclass(frozen=True)
class Policy:
    clients: tuple[IPNetwork, ...]
    hosts: frozenset[str]
    origins: frozenset[str]
    # Verdicts on the addresses and Host values seen: parsing an address on every request was a
    # visible part of the proxy's latency. Bounded, since clients choose the Host they send.
    _verdicts: dict[tuple[str, str | None], bool] = field(
        default_factory=dict, compare=False, repr=False
    )

    def allows(self, kind: str, text: str | None) -> bool:
        """Whether the "client" address or the "host" header `text` may use the proxy."""
        verdict = self._verdicts.get((kind, text))
        if verdict is None:
            if len(self._verdicts) >= VERDICTS_KEPT:
                self._verdicts.clear()
            verdict = self._client(text) if kind == "client" else self._host(text or "")
            self._verdicts[kind, text] = verdict
        return verdict

    def _client(self, address: str | None) -> bool:
        if address is None:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback or any(ip in network for network in self.clients)

    def _host(self, host_header: str) -> bool:
        host = host_header.strip().lower()
        if host.startswith("["):
            host = host[1 : host.find("]")] if "]" in host else host
        else:
            host = host.rpartition(":")[0].rstrip(".") if ":" in host else host.rstrip(".")
        return is_loopback_host(host) or host in self.hosts


def _answered_here(request: web.Request, error: ProxyError | None = None) -> web.Response:
    """A refusal, or a CORS preflight's answer: never forwarded, logged and counted."""
    exchange = Exchange.of(request)
    if error is None:
        headers = {"Access-Control-Allow-Methods": METHODS, "Access-Control-Max-Age": "600"}
        if requested := request.headers.get("Access-Control-Request-Headers"):
            headers["Access-Control-Allow-Headers"] = requested
        response = web.Response(status=204, headers=headers)
    else:
        response = error_response(error, exchange.request_id)
        exchange.error = error.code
    exchange.status = response.status
    exchange.finish(request.app[METRICS], request.app[SETTINGS].log_query)
    return response


def install(app: web.Application, settings: Settings) -> None:
    hosts = {name.lower().rstrip(".") for name in settings.allowed_hosts}
    hosts.add(settings.listen.host.lower().strip("[]"))
    policy = Policy(settings.allowed_clients, frozenset(hosts), frozenset(settings.allowed_origins))

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:  # refused: the ProxyError that says why
            if not policy.allows("client", request.remote):
                raise ClientNotAllowed(
                    f"the address {request.remote} is not allowed to use this proxy;"
                    " add it to --allowed-clients"
                )
            if request.method == "CONNECT":
                raise MethodNotAllowed("CONNECT is not supported: this is a reverse proxy")
            if request.raw_path == "*":
                raise BadRequest(
                    "the request target * is not supported; send a path such as /v1/..."
                )
            host = request.headers.get("Host")
            if (
                host is not None
                and request.raw_path.startswith("/")  # origin form
                and not policy.allows("host", host)
                and request.raw_path.partition("?")[0] not in PROBES
            ):
                raise HostNotAllowed(
                    f"Host {host!r} is not allowed (a web page may be trying DNS rebinding);"
                    " call the proxy as localhost, or add the name to --allowed-hosts"
                )
            origin = request.headers.get("Origin")
            if origin is not None:
                if origin not in policy.origins:
                    raise OriginNotAllowed(
                        f"requests from web pages of {origin} are refused; add the origin to"
                        " --allowed-origins if that page should use the proxy"
                    )
            elif request.headers.get("Sec-Fetch-Site", "none") not in SAFE_FETCH_SITES:
                raise OriginNotAllowed(
                    "a web page of another site sent this request; pages may use the proxy only"
                    " from an origin in --allowed-origins"
                )
        except ProxyError as error:
            return _answered_here(request, error)
        if (
            request.method == "OPTIONS"
            and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers
        ):
            return _answered_here(request)
        return await handler(request)

    async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
        """Every answer to an allowed origin carries its CORS headers."""
        origin = request.headers.get("Origin")
        if origin is not None and origin in policy.origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "X-Request-Id"
            response.headers.add("Vary", "Origin")

    app.middlewares.append(guard)
    if policy.origins:
        app.on_response_prepare.append(add_cors_headers)
