"""One token for a fleet of proxies: a TokenFetcher that takes the token the fleet keeps in Redis,
lets one replica at a time request a new one, and requests one of its own while Redis fails."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections.abc import Callable

import structlog

from proxy.credentials import Secret
from proxy.errors import TokenUnavailable
from proxy.fleet import Fleet
from proxy.redis_link import RedisUnavailable
from proxy.settings import Settings
from proxy.token_endpoint import Token
from proxy.token_seal import FINGERPRINT_SLICE, TokenSeal
from proxy.tokens import CapReached, RequestCap, TokenFetcher

log = structlog.get_logger("proxy.fleet")
POLL_INTERVAL = 0.05  # seconds between looks at Redis while another replica requests the token
LOCK_SLACK = 5.0  # the lock outlives the longest token request by this much
FRESH_SLACK = 1.0  # a shared token this close to its renewal time (or a tenth of its lifetime)
# is renewed rather than taken: taken, it would send the replica back for a new one at once
WINDOW_MS = 60_000

# The entry and its remaining lifetime, read together.
_READ = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}"
# Delete the shared token only if it is still the one rejected (ARGV[1]: its fingerprint, which
# sits in the entry from ARGV[2] to ARGV[3]): a replica late with its 401 evicts nothing newer.
_EVICT = """
local entry = redis.call('GET', KEYS[1])
if entry and string.sub(entry, tonumber(ARGV[2]), tonumber(ARGV[3])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# Release the lock only if this replica still holds it (its own random value).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# The fleet's cap: at most ARGV[1] token requests in any window of ARGV[2] ms, by Redis's clock.
# Returns 0 when a slot was taken, else the milliseconds until one frees.
_TAKE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""


class FleetTokenFetcher:
    """Wraps the token endpoint's fetcher for a TokenSource, which calls it when its own copy
    nears the refresh margin, is missing, or was rejected (see `rejected`).

    - A token in Redis that is not yet due for renewal (nor the one rejected) is taken.
    - Otherwise one replica takes the fleet's lock (SET NX PX, a random value, released by
      compare-and-delete) and requests a token, within the fleet's cap; the others look at Redis
      every POLL_INTERVAL until the new token is there, for up to --token-timeout.
    - When Redis fails, the replica requests a token of its own, within its share of the cap
      (the cap divided by the replicas last seen alive)."""

    def __init__(self, fleet: Fleet, fetcher: TokenFetcher, settings: Settings) -> None:
        self.fleet, self.fetcher, self.settings = fleet, fetcher, settings
        self._own_cap = RequestCap(settings.token_requests_per_minute)
        self._seal: tuple[Secret, TokenSeal] | None = None
        self._rejected: Token | None = None  # not to be taken from Redis again
        self._evict: Token | None = None  # to delete from Redis if it is still there
        self._unreadable: bytes | None = None  # digest of the last entry that would not open
        link = fleet.link
        self._read_script = link.script(_READ)
        self._evict_script = link.script(_EVICT)
        self._release_script = link.script(_RELEASE)
        self._slot_script = link.script(_TAKE_SLOT)

    def rejected(self, token: Token) -> None:
        """The upstream answered 401 to `token`: the next fetch evicts it from Redis if it is
        still the shared one, and does not take it from there again."""
        self._rejected = self._evict = token

    async def fetch(self) -> Token:
        seal = self._current_seal()
        if seal is None:  # the secret file cannot be read: the endpoint's fetcher says so
            return await self._alone()
        try:
            token = await self._shared(seal)
        except RedisUnavailable:
            token = await self._alone()
        self._rejected = None
        return token

    async def _shared(self, seal: TokenSeal) -> Token:
        token_key = self.fleet.key("token", seal.key_id)
        lock_key = self.fleet.key("token-lock", seal.key_id)
        lock_ms = round((self.settings.token_timeout + LOCK_SLACK) * 1000)
        deadline = time.monotonic() + self.settings.token_timeout
        link, owner = self.fleet.link, secrets.token_hex(16)
        while True:
            await self._evict_rejected(seal, token_key)
            token = await self._read(seal, token_key)
            if token is not None:
                return token
            if await link.call(lambda redis: redis.set(lock_key, owner, nx=True, px=lock_ms)):
                try:
                    # Another replica may have stored a token between the read and the lock.
                    token = await self._read(seal, token_key)
                    return token if token is not None else await self._request(seal, token_key)
                finally:
                    with contextlib.suppress(RedisUnavailable):  # else the lock expires by itself
                        await link.call(
                            lambda _: self._release_script(keys=[lock_key], args=[owner])
                        )
            if time.monotonic() >= deadline:
                raise TokenUnavailable(
                    "no token yet: another replica of the fleet has been requesting one for"
                    " longer than --token-timeout; check AGENTSYNC_TOKEN_URL and the network",
                    retry_after=1.0,
                )
            await asyncio.sleep(POLL_INTERVAL)

    async def _read(self, seal: TokenSeal, token_key: str) -> Token | None:
        """The shared token, unless it is missing, cannot be opened, was rejected here, or is
        itself due for renewal."""
        entry, ttl_ms = await self.fleet.link.call(lambda _: self._read_script(keys=[token_key]))
        if entry is None or ttl_ms <= 0:
            return None
        sealed = seal.open(entry)
        if sealed is None:
            self._report_unreadable(entry)
            return None
        if self._rejected is not None and sealed.value == self._rejected.value:
            return None
        remaining = ttl_ms / 1000
        renew_within = min(self.settings.refresh_margin, sealed.lifetime / 2)
        if remaining <= renew_within + min(FRESH_SLACK, sealed.lifetime / 10):
            return None
        return Token(
            value=sealed.value,
            expires_at=time.monotonic() + remaining,
            lifetime=sealed.lifetime,
            scope=sealed.scope,
            expires_at_wall=time.time() + remaining,
        )

    async def _request(self, seal: TokenSeal, token_key: str) -> Token:
        """Request a token for the fleet (this replica holds the lock) and store it."""
        member = f"{self.fleet.replica}:{secrets.token_hex(4)}"
        wait_ms = await self.fleet.link.call(
            lambda _: self._slot_script(
                keys=[self.fleet.key("token-requests")],
                args=[self.settings.token_requests_per_minute, WINDOW_MS, member],
            )
        )
        if int(wait_ms) > 0:
            raise CapReached(
                "the fleet's cap on token requests per minute (--token-requests-per-minute,"
                " counted across every replica on the Redis) is used up; the proxy's log"
                " (token_request_retry, token_unavailable) says why tokens were requested",
                retry_after=int(wait_ms) / 1000,
            )
        token = await self.fetcher.fetch()
        ttl_ms = round((token.expires_at - time.monotonic()) * 1000)
        if ttl_ms > 0:
            entry = seal.seal(token.value, token.lifetime, token.scope)
            # Without Redis the token serves this replica; the fleet shares again once it is back.
            with contextlib.suppress(RedisUnavailable):
                await self.fleet.link.call(lambda redis: redis.set(token_key, entry, px=ttl_ms))
        log.info("token_requested", for_fleet=True, replicas_alive=self.fleet.replicas_alive)
        return token

    async def _alone(self) -> Token:
        """Redis is unavailable: a token of this replica's own, within its share of the cap."""
        alive = self.fleet.replicas_alive
        self._own_cap.limit = max(1, self.settings.token_requests_per_minute // alive)
        wait = self._own_cap.try_acquire()
        if wait:
            raise CapReached(
                "this replica's share of --token-requests-per-minute while Redis is unavailable"
                f" ({self._own_cap.limit} a minute: the cap divided by the {alive} replicas last"
                " seen alive) is used up",
                retry_after=wait,
            )
        token = await self.fetcher.fetch()
        log.info("token_requested", for_fleet=False, replicas_alive=alive)
        return token

    async def _evict_rejected(self, seal: TokenSeal, token_key: str) -> None:
        rejected = self._evict
        if rejected is None:
            return
        fingerprint = seal.fingerprint(rejected.value)
        await self.fleet.link.call(
            lambda _: self._evict_script(keys=[token_key], args=[fingerprint, *FINGERPRINT_SLICE])
        )
        if self._evict is rejected:
            self._evict = None

    def _current_seal(self) -> TokenSeal | None:
        """The seal for the current secret; a secret file is re-read, and a new secret gets a
        new key (and so, new entries)."""
        settings = self.settings
        try:
            secret = settings.client_secret.read()
        except (OSError, UnicodeDecodeError):
            return None
        if self._seal is None or self._seal[0] != secret:
            seal = TokenSeal(secret, settings.client_id, settings.token_url, settings.scope)
            self._seal = (secret, seal)
        return self._seal[1]

    def _report_unreadable(self, entry: bytes) -> None:
        digest = hashlib.sha256(entry).digest()
        if digest != self._unreadable:  # once per entry, not at every look
            self._unreadable = digest
            log.warning(
                "fleet_token_unreadable",
                reason="the shared token in Redis cannot be opened with this replica's key"
                " (damaged or written by something else); this replica requests a new one",
            )


async def join_fleet(
    settings: Settings,
    fetcher: TokenFetcher,
    on_redis: Callable[[bool], None] | None = None,
) -> tuple[Fleet, FleetTokenFetcher]:
    """Connect to the settings' Redis, announce this replica, and wrap `fetcher` so that the
    fleet shares one token. Never fails because of Redis: a replica that cannot reach it serves
    on tokens of its own. `on_redis(up)` hears whether Redis answers, from the first call on
    (for agentsync_proxy_redis_up). Close the fleet when the proxy stops."""
    fleet = Fleet.for_settings(settings)
    if on_redis is not None:
        fleet.link.add_listener(on_redis)
    await fleet.start()
    return fleet, FleetTokenFetcher(fleet, fetcher, settings)
