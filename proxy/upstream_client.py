"""The lean HTTP/1.1 client for the API upstream: a keep-alive pool of connections (reused
last in, first out; closed after 30 s idle), each request written straight to bytes with no header
of its own but Host, through an egress proxy when the environment names one. The connections
themselves, their answers and the errors are in proxy.upstream_connection."""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import Callable, Iterable
from typing import cast

from yarl import URL

from proxy.upstream_connection import (
    BadResponse,
    Body,
    BodyBrokeOff,
    ClientError,
    Connection,
    Response,
    ResponseTimeout,
    UpstreamClosed,
)

__all__ = [
    "BadResponse",
    "BodyBrokeOff",
    "ClientError",
    "Response",
    "ResponseTimeout",
    "UpstreamClient",
    "UpstreamClosed",
]
KEEPALIVE = 30.0  # seconds an idle connection stays in the pool
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # CR and LF are counted apart


class UpstreamClient:
    """The keep-alive pool towards one upstream origin, directly or through an egress proxy
    (requests in absolute form for http://, a CONNECT tunnel for https://)."""

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext,
        connect_timeout: float,
        timeout: float,
        proxy: str | None = None,
    ) -> None:
        url = URL(base_url, encoded=True)
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout  # no answer, or no byte of it, for this long
        self.connections = _Connections(self)
        self._connect_timeout = connect_timeout
        self._host, self._port = url.raw_host or "", url.port or 80
        self._ssl = ssl_context if url.scheme == "https" else None
        self._proxy = URL(proxy) if proxy else None
        self._proxy_ssl = ssl_context if self._proxy and self._proxy.scheme == "https" else None
        self._proxy_lines = _proxy_authorization(self._proxy)
        absolute = self._proxy is not None and self._ssl is None  # requests in absolute form
        origin = f"{url.scheme}://{url.host_port_subcomponent}" if absolute else ""
        self._prefix = origin + url.raw_path.rstrip("/")
        self._host_lines = [f"Host: {url.host_port_subcomponent}"]
        self._closing_lines = self._proxy_lines if absolute else []
        self._authority = f"{url.host_subcomponent}:{self._port}"  # for CONNECT
        self._idle: list[Connection] = []  # the most recently used last
        self._sweeper: asyncio.TimerHandle | None = None

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | Callable[[], Body] | None = None,
    ) -> Response:
        """Send `method` for the base path + `target` (as given) and return the answer once its
        headers are in. `body` may be a function that produces it again, for a retry: a reused
        connection that turns out closed is retried once on a fresh one."""
        head = self._head(method, target, headers)
        connection = self._idle_connection()
        if connection is not None:
            try:
                return await connection.exchange(head, _produce(body), method == "HEAD")
            except UpstreamClosed as closed:
                if not closed.retryable:
                    raise
        connection = await self._connect()
        return await connection.exchange(head, _produce(body), method == "HEAD")

    def _head(self, method: str, target: str, headers: Iterable[tuple[str, str]]) -> bytes:
        lines = [f"{method} {self._prefix}{target} HTTP/1.1", *self._host_lines]
        lines += [f"{name}: {value}" for name, value in headers]
        lines += self._closing_lines
        text = "\r\n".join(lines) + "\r\n\r\n"
        ends = len(lines) + 1
        if text.count("\n") != ends or text.count("\r") != ends or _CONTROL.search(text):
            raise ValueError("a request header holds a control character")
        return text.encode("utf-8", "surrogateescape")

    def _idle_connection(self) -> Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.usable and self.loop.time() - connection.idle_since < KEEPALIVE:
                connection.reused = True
                return connection
            connection.close()
        return None

    def park(self, connection: Connection) -> None:
        connection.idle_since = self.loop.time()
        self._idle.append(connection)
        if self._sweeper is None:
            self._sweeper = self.loop.call_at(connection.idle_since + KEEPALIVE, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for KEEPALIVE seconds: the oldest are first in line."""
        self._sweeper, expired = None, self.loop.time() - KEEPALIVE
        count = 0
        for connection in self._idle:
            if connection.usable and connection.idle_since > expired:
                break
            connection.close()
            count += 1
        del self._idle[:count]
        if self._idle:
            self._sweeper = self.loop.call_at(self._idle[0].idle_since + KEEPALIVE, self._sweep)

    async def _connect(self) -> Connection:
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._proxy is not None and self._ssl is not None:
                    return await self._tunnel(self._proxy)
                if self._proxy is not None:  # http:// through the proxy
                    return await self._open(self._proxy.raw_host or "", self._proxy.port or 80)
                return await self._open(self._host, self._port, self._ssl)
        except TimeoutError:
            raise ResponseTimeout(f"no connection within {self._connect_timeout:g} s") from None
        except OSError as exc:
            raise UpstreamClosed(f"could not connect ({exc})") from exc

    async def _open(
        self, host: str, port: int, context: ssl.SSLContext | None = None
    ) -> Connection:
        _, connection = await self.loop.create_connection(
            lambda: Connection(self),
            host,
            port,
            ssl=context,
            server_hostname=host if context else None,
        )
        return connection

    async def _tunnel(self, proxy: URL) -> Connection:
        """TLS to the upstream inside a CONNECT tunnel through the egress proxy."""
        connection = await self._open(proxy.raw_host or "", proxy.port or 80, self._proxy_ssl)
        lines = [f"CONNECT {self._authority} HTTP/1.1", f"Host: {self._authority}"]
        head = "\r\n".join([*lines, *self._proxy_lines]) + "\r\n\r\n"
        try:
            # The answer to CONNECT ends with its headers, as an answer to HEAD does.
            answer = await connection.exchange(head.encode("latin-1"), None, head_only=True)
            if answer.status != 200:
                raise UpstreamClosed(f"the egress proxy refused the tunnel ({answer.status})")
            await connection.start_tls(cast(ssl.SSLContext, self._ssl), self._host)
        except BaseException:
            connection.abort()
            raise
        return connection

    async def close(self) -> None:
        """Close every connection, idle or not (at the application's cleanup)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.connections.stop_checking()
        self._idle.clear()
        connections = list(self.connections)
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.wait([connection.lost for connection in connections], timeout=1.0)
            for connection in connections:
                connection.abort()  # those that did not close gracefully in time
            await asyncio.sleep(0)


class _Connections(set[Connection]):
    """The open connections, checked for progress every quarter of the timeout (at most every
    second) while there are any: one timer for all, instead of one per exchange (a timer set
    and cancelled per request cost 2 us, about 2% of the proxy's CPU)."""

    def __init__(self, client: UpstreamClient) -> None:
        super().__init__()
        self._client = client
        self._every = min(1.0, client.timeout / 4)
        self._ticker: asyncio.TimerHandle | None = None

    def add(self, connection: Connection) -> None:
        super().add(connection)
        if self._ticker is None:
            self._ticker = self._client.loop.call_later(self._every, self._check)

    def _check(self) -> None:
        self._ticker = None
        now = self._client.loop.time()
        for connection in list(self):
            connection.check_progress(now)
        if self:
            self._ticker = self._client.loop.call_later(self._every, self._check)

    def stop_checking(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None


def _produce(body: bytes | Callable[[], Body] | None) -> Body | None:
    return body() if callable(body) else body


def _proxy_authorization(proxy: URL | None) -> list[str]:
    if proxy is None or proxy.user is None:
        return []
    credentials = f"{proxy.user}:{proxy.password or ''}".encode()
    return [f"Proxy-Authorization: Basic {base64.b64encode(credentials).decode('ascii')}"]
