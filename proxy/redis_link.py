"""The proxy's connection to Redis: every call bounded (about 100 ms), the password never shown,
and whether Redis is up: a failure marks it down (one warning) until a probe finds it again."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    NoPermissionError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeout
from yarl import URL

from proxy.credentials import Secret
from proxy.settings import Settings, whole_number

log = structlog.get_logger("proxy.redis")
REDIS_TIMEOUT = 0.1  # seconds: Redis is a shortcut, never worth holding a request for
# Seconds a new connection (TCP, TLS, login) may take in a probe, which no request waits on: on
# a busy host a TLS handshake alone can take longer than REDIS_TIMEOUT.
CONNECT_TIMEOUT = 1.0
T = TypeVar("T")
Operation = Callable[[Redis], Awaitable[T]]


class RedisUnavailable(Exception):
    """Redis did not serve a call. The message names the address and why, never a password."""


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is, as logs may show it: no user name, no password."""

    host: str
    port: int
    db: int
    tls: bool

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}/{self.db}"


class RedisLink:
    """One Redis client for the process, with its up/down state. `call` runs one operation within
    the time bound, or fails at once while Redis is known to be down; `probe` always tries, and
    is how Redis is found again. Every failure is a RedisUnavailable, whatever raised it."""

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url is not None
        self._state: Literal["unknown", "up", "down"] = "unknown"
        self._down_reason = ""
        self._listeners: list[Callable[[bool], None]] = []
        self._broken: str | None = None  # a problem no call can get past (the password file)
        url = URL(settings.redis_url.reveal())
        self.address = RedisAddress(
            host=url.host or "localhost",
            port=url.port or 6379,
            db=whole_number(url.path.strip("/")) or 0,
            tls=url.scheme == "rediss",
        )
        self._password = Secret(url.password) if url.password else None
        if (password_file := settings.redis_password_file) is not None:  # wins over the URL's
            try:
                self._password = Secret(password_file.read_text(encoding="utf-8").strip())
            except (OSError, UnicodeDecodeError):
                self._broken = (
                    f"cannot read the Redis password file {password_file}"
                    " (AGENTSYNC_PROXY_REDIS_PASSWORD_FILE)"
                )
        self.client = Redis(
            host=self.address.host,
            port=self.address.port,
            db=self.address.db,
            username=url.user or None,
            password=self._password.reveal() if self._password else None,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,  # within each call's own bound
            # A failed call is not retried: the caller serves without Redis instead.
            retry=Retry(NoBackoff(), 0),
            ssl=self.address.tls,
            ssl_cert_reqs="required",
            ssl_check_hostname=True,  # the system's CAs, plus --ca-bundle's
            ssl_ca_certs=str(settings.ca_bundle) if settings.ca_bundle is not None else None,
            client_name="agentsync-proxy",
        )

    def __repr__(self) -> str:
        return f"RedisLink({self.address}, {self._state})"

    @property
    def up(self) -> bool:
        """Whether the last call reached Redis: what agentsync_proxy_redis_up shows."""
        return self._state == "up"

    def add_listener(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(up)` at each switch between up and down."""
        self._listeners.append(listener)

    def script(self, source: str) -> AsyncScript:
        """A Lua script run by EVALSHA (loaded again by itself after a Redis restart)."""
        return self.client.register_script(source)

    async def call(self, operation: Operation[T]) -> T:
        if self._state == "down":
            raise RedisUnavailable(self._down_reason)
        return await self.probe(operation)

    async def probe(self, operation: Operation[T], *, within: float = REDIS_TIMEOUT) -> T:
        """Try Redis even if it is known to be down, for up to `within` seconds."""
        if self._broken is not None:
            self._went_down(self._broken)
            raise RedisUnavailable(self._broken)
        try:
            async with asyncio.timeout(within):
                result = await operation(self.client)
        except (RedisError, OSError, TimeoutError) as exc:
            description = _describe(exc)
            if self._password:  # in case an error were to quote it
                description = description.replace(self._password.reveal(), "**********")
            reason = f"Redis at {self.address}: {description}"
            self._went_down(reason)
            raise RedisUnavailable(reason) from None
        self._came_up()
        return result

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except (RedisError, OSError) as exc:  # closing a broken connection
            log.debug("redis_close_failed", error=type(exc).__name__)

    def _came_up(self) -> None:
        if self._state == "up":
            return
        before, self._state = self._state, "up"
        if before == "down":
            log.info("redis_available", redis=str(self.address), sharing="again")
        else:
            log.info("redis_connected", redis=str(self.address))
        self._tell(True)

    def _went_down(self, reason: str) -> None:
        self._down_reason = reason
        if self._state == "down":
            return
        self._state = "down"
        log.warning(
            "redis_unavailable",
            reason=reason,
            fallback="serving on a token and a share of the rate budget of this replica's own"
            " until Redis answers again",
        )
        self._tell(False)

    def _tell(self, up: bool) -> None:
        for listener in self._listeners:
            listener(up)


def _describe(error: BaseException) -> str:
    """What went wrong, in words of our own: redis-py's messages are not ours to vouch for."""
    chain = list(_causes(error))
    if any(_is_authentication(e) for e in chain):
        return (
            "authentication failed: check the password (AGENTSYNC_PROXY_REDIS_PASSWORD_FILE, or"
            " the URL's) and the user name"
        )
    if any(isinstance(e, NoPermissionError) for e in chain):
        return (
            "its user may not run a command the proxy needs (NOPERM): see the README's ACL for"
            " the proxy's commands on keys agentsync-proxy:*"
        )
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain):
        return (
            "its TLS certificate is not trusted or does not name the host: give its CA with"
            " --ca-bundle (AGENTSYNC_PROXY_CA_BUNDLE)"
        )
    if any(isinstance(e, ssl.SSLError) for e in chain):
        return "the TLS handshake failed (does the server speak TLS on this port?)"
    if any(isinstance(e, TimeoutError | RedisTimeout) for e in chain):
        return "no answer in time"
    for e in chain:
        if isinstance(e, OSError) and e.errno:
            return f"cannot connect ({os.strerror(e.errno).lower()})"
    if any(isinstance(e, ResponseError) for e in chain):
        return f"it answered an error ({_code(error)})"
    return f"the call failed ({type(error).__name__})"


def _is_authentication(error: BaseException) -> bool:
    if isinstance(error, AuthenticationError | AuthenticationWrongNumberOfArgsError):
        return True
    return isinstance(error, ResponseError) and _code(error) in ("WRONGPASS", "NOAUTH")


def _causes(error: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(found) < 8 and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _code(error: BaseException) -> str:
    """The error code Redis put first in its message (ERR, WRONGPASS, NOSCRIPT, ...)."""
    words = str(error.args[0]).split() if error.args else []
    code = words[0] if words else ""
    return code if code.isascii() and code.isalpha() and code.isupper() else "unknown"
