"""This replica's place in a fleet of proxies sharing one Redis: the fleet's keys, the heartbeat
that announces the replica (and finds Redis again), and how many replicas are alive."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import Awaitable, Callable

from proxy.redis_link import CONNECT_TIMEOUT, RedisLink, RedisUnavailable
from proxy.settings import Settings

KEY_PREFIX = "agentsync-proxy:"  # every key of the proxy's: an ACL can allow ~agentsync-proxy:*
HEARTBEAT = 2.0  # seconds between announcements; a replica counts as alive for three of them

# The replicas heard from within the last ARGV[2] ms, by Redis's clock (replicas' clocks differ).
_ANNOUNCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])
"""


class Fleet:
    """The replicas of one AgentSync client (client id and token URL) on one Redis."""

    def __init__(self, link: RedisLink, namespace: str) -> None:
        self.link = link
        self.namespace = namespace
        self.heartbeat = HEARTBEAT
        self.replica = secrets.token_hex(8)
        # Replicas heard from in the last three heartbeats, this one included (while Redis is
        # down, as it last answered): what a replica's own share of a fleet's budget divides by.
        self.replicas_alive = 1
        self._announce = link.script(_ANNOUNCE)
        self._beating: asyncio.Task[None] | None = None
        # Awaited after each heartbeat that reached Redis; it must not raise.
        self.on_heartbeat: Callable[[], Awaitable[None]] | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> Fleet:
        # Hashed: a client id may hold characters that mean something in a key pattern.
        client = f"{settings.token_url}\0{settings.client_id}".encode()
        return cls(RedisLink(settings), hashlib.sha256(client).hexdigest()[:16])

    def __repr__(self) -> str:
        return f"Fleet({self.namespace}, replica={self.replica}, {self.link!r})"

    def key(self, *parts: str) -> str:
        return ":".join((KEY_PREFIX + self.namespace, *parts))

    async def start(self) -> None:
        """Announce this replica at once, for the first token request, and then every heartbeat."""
        await self.announce()
        self._beating = asyncio.get_running_loop().create_task(self._beat())

    async def announce(self) -> None:
        """Tell Redis this replica is alive, and learn how many are. No request waits on it, so
        it gives a new connection (TLS included) the time a busy host may need."""
        ttl_ms = str(round(self.heartbeat * 3 * 1000))
        with contextlib.suppress(RedisUnavailable):
            count = await self.link.probe(
                lambda _: self._announce(keys=[self.key("replicas")], args=[self.replica, ttl_ms]),
                within=CONNECT_TIMEOUT,
            )
            self.replicas_alive = max(1, int(count))

    async def close(self) -> None:
        """Stop announcing, leave the fleet (the others stop counting it at once), disconnect."""
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
        with contextlib.suppress(RedisUnavailable):
            await self.link.call(lambda redis: redis.zrem(self.key("replicas"), self.replica))
        await self.link.close()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            await self.announce()
            if self.link.up and self.on_heartbeat is not None:
                await self.on_heartbeat()
