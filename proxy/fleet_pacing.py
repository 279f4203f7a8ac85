"""One rate budget for a fleet of proxies: proxy.pacing's state kept in Redis, each step one Lua
script on Redis's clock, and each replica pacing on its own share while Redis fails."""

from __future__ import annotations

import contextlib
import time

from redis.commands.core import AsyncScript

from proxy.fleet import Fleet
from proxy.pacing import WINDOW, Budget, MemoryPacingState, Refusal, Reservation
from proxy.redis_link import RedisUnavailable

# A fleet paced faster than this (one request every 2 ms, 30,000 a minute) needs no Redis round
# trip per request, which on a busy host takes longer than the interval it would keep: each
# replica paces on its share, and tells Redis the budgets it hears.
FAST_INTERVAL = 0.002

# KEYS: the state (a hash), the slots given back (a sorted set), the requests in flight (a hash,
# replica -> count), the replicas alive (the fleet's sorted set, read only). ARGV: the replica,
# its requests in flight, the cap's interval, how long a replica counts as alive (ms), then the
# step's own. Times are seconds by Redis's clock; slots are in slot time (the clock minus every
# pause so far), as in proxy.pacing. Numbers come back as text: Lua would cut them to integers.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local f = redis.call('HMGET', KEYS[1], 'paced', 'shift', 'next', 'paused_until')
local paced = tonumber(f[1]) or 0
local shift = tonumber(f[2]) or 0
local nxt = tonumber(f[3]) or 0
local paused_until = tonumber(f[4]) or 0
local floor = tonumber(ARGV[3])
local function fmt(x) return string.format('%.17g', x) end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local function answer(a, b)
  -- Kept while a slot or a pause lies ahead, and two windows more.
  local ms = math.ceil((math.max(nxt + shift, paused_until, now) - now + 120) * 1000)
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ms) end
  return {a, b, fmt(math.max(floor, paced)), fmt(shift), fmt(now),
          fmt(math.max(0, paused_until - now))}
end
"""

# ARGV[5]: the longest wait. The next free slot, or 'refused' and the wait.
_RESERVE = """
local now_s = now - shift
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. fmt(now_s))
local hole = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local slot = math.max(now_s, nxt)
if hole[1] then slot = tonumber(hole[2]) end
if slot - now_s > tonumber(ARGV[5]) then return answer('refused', fmt(slot - now_s)) end
if hole[1] then
  redis.call('ZREM', KEYS[2], hole[1])
else
  nxt = slot + math.max(floor, paced)
  redis.call('HSET', KEYS[1], 'next', fmt(nxt))
end
if slot <= now_s then redis.call('HSET', KEYS[3], ARGV[1], tonumber(ARGV[2]) + 1) end
return answer(fmt(slot), fmt(slot - now_s))
"""

# ARGV[5]: a slot that will not be used.
_GIVE_BACK = """
if tonumber(ARGV[5]) + shift > now then redis.call('ZADD', KEYS[2], ARGV[5], ARGV[5]) end
return answer('', '')
"""

# ARGV[5..7]: a budget (remaining, reset, limit or 0), or '' for none: the count in flight only.
_SETTLE = """
if ARGV[5] ~= '' then
  local remaining, reset, limit = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local in_flight = 0
  local since = now * 1000 - tonumber(ARGV[4])
  local counts = redis.call('HGETALL', KEYS[3])
  for i = 1, #counts, 2 do
    local seen = redis.call('ZSCORE', KEYS[4], counts[i])
    if seen and tonumber(seen) >= since then
      in_flight = in_flight + tonumber(counts[i + 1])
    else
      redis.call('HDEL', KEYS[3], counts[i])  -- a replica gone: nothing of its is in flight
    end
  end
  local spendable = remaining - in_flight
  if spendable > 0 then
    paced = reset / spendable
  else
    if limit > 0 then paced = 60 / limit end
    local untl = now + reset
    local push = untl - math.max(now, paused_until)
    if push > 0 then
      shift = shift + push
      nxt = math.max(nxt, untl - shift)
      paused_until = untl
    end
  end
  redis.call('HSET', KEYS[1], 'paced', fmt(paced), 'shift', fmt(shift), 'next', fmt(nxt),
             'paused_until', fmt(paused_until))
end
return answer('', '')
"""


class LocalReservation(Reservation):
    """A reservation on the replica's own state: given back and settled there."""

    __slots__ = ()


class RedisPacingState:
    """The pacing state of a fleet (a proxy.pacing.PacingState).

    - Shared: each reservation is one script on the fleet's state in Redis (the announced
      budget, the fleet's cap, a pause after any replica's 429, the slots given back); a held
      request leaves at its slot as last known, pushed back by any pause Redis told of since; a
      settle that announced a budget is one script more, and the count in flight goes along
      with the replica's next call.
    - Alone: while Redis fails, or the fleet's pace needs no round trip (no budget and no cap,
      or a generous one), the replica paces on a MemoryPacingState with its share (the cap and
      each budget divided by the replicas it last saw alive). It tells Redis the budgets it
      hears at its heartbeat (at once if one would slow the fleet), which brings back the rest.
    """

    def __init__(self, fleet: Fleet, per_minute: int | None) -> None:
        self.fleet = fleet
        self._clock = time.monotonic
        self.local = MemoryPacingState(self._clock, per_minute)
        # The fleet's state as Redis last told it, on this replica's clock.
        self.interval = WINDOW / per_minute if per_minute else 0.0
        self._floor = repr(self.interval)
        self._alive_ms = str(round(fleet.heartbeat * 3 * 1000))
        self._keys = [
            fleet.key("pacing"),
            fleet.key("pacing", "given-back"),
            fleet.key("pacing", "in-flight"),
            fleet.key("replicas"),
        ]
        link = fleet.link
        self._reserve = link.script(_PRELUDE + _RESERVE)
        self._give_back = link.script(_PRELUDE + _GIVE_BACK)
        self._settle = link.script(_PRELUDE + _SETTLE)
        self.in_flight = 0  # left on the fleet's state and not settled: what Redis is told
        self._shift = 0.0
        self._offset = 0.0  # Redis's clock minus this replica's
        self.paused_until = -float("inf")
        self._alone = self.interval < FAST_INTERVAL  # the pace needs no round trip
        self._was_shared = True  # the last reservation: the local state is set up when used
        self._unsent: tuple[Budget, float] | None = None  # a budget heard, and when
        fleet.on_heartbeat = self.look

    @classmethod
    async def joined(cls, fleet: Fleet, per_minute: int | None) -> RedisPacingState:
        """A state for `fleet` that has read the fleet's (if Redis answers)."""
        state = cls(fleet, per_minute)
        await state.look()
        return state

    async def reserve(self, max_wait: float) -> Reservation | Refusal:
        if self._alone or not self.fleet.link.up:
            return await self._reserve_alone(max_wait)
        try:
            reply = await self._call(self._reserve, repr(max_wait))
        except RedisUnavailable:
            return await self._reserve_alone(max_wait)
        self._was_shared = True
        if reply[0] == b"refused":
            return Refusal(float(reply[1]))
        reservation = Reservation(float(reply[0]), float(reply[1]))
        if reservation.wait <= 0:
            self.in_flight += 1
        return reservation

    async def depart(self, reservation: Reservation) -> float:
        if isinstance(reservation, LocalReservation):
            return await self.local.depart(reservation)
        wait = reservation.slot + self._shift - (self._clock() + self._offset)
        if wait <= 0:
            self.in_flight += 1
        return max(0.0, wait)

    async def give_back(self, reservation: Reservation) -> None:
        if isinstance(reservation, LocalReservation):
            await self.local.give_back(reservation)
            return
        with contextlib.suppress(RedisUnavailable):  # else the slot passes unused
            await self._call(self._give_back, repr(reservation.slot))

    async def settle(self, reservation: Reservation, budget: Budget | None) -> None:
        if isinstance(reservation, LocalReservation):
            await self.local.settle(reservation, budget)
            if budget is not None and self.fleet.link.up:
                # Told at once what would slow the fleet down; the rest at the heartbeat.
                if budget.remaining == 0 or budget.reset / budget.remaining >= FAST_INTERVAL:
                    await self._tell(budget)
                else:
                    self._unsent = (budget, self._clock())
            return
        self.in_flight = max(0, self.in_flight - 1)
        if budget is not None:
            await self._tell(budget)

    async def look(self) -> None:
        """Tell Redis what this replica has not yet told, and learn the fleet's state: at the
        heartbeat, and when the state is made."""
        unsent, self._unsent = self._unsent, None
        budget = None
        if unsent is not None:  # told as it stands now: its reset is nearer
            heard, at = unsent
            left = heard.reset - (self._clock() - at)
            budget = Budget(heard.remaining, left, heard.limit) if left > 0 else None
        await self._tell(budget)
        if not self._was_shared:
            self.local.divide(self.fleet.replicas_alive)

    async def _tell(self, budget: Budget | None) -> None:
        self._unsent = None
        told = ("", "", "")
        if budget is not None:
            told = (str(budget.remaining), repr(budget.reset), str(budget.limit or 0))
        try:
            await self._call(self._settle, *told)
        except RedisUnavailable:
            if budget is not None and self._unsent is None:  # for the heartbeat after
                self._unsent = (budget, self._clock())

    async def _reserve_alone(self, max_wait: float) -> Reservation | Refusal:
        if self._was_shared:  # from the fleet's state to this replica's share of it
            self._was_shared = False
            replicas = self.fleet.replicas_alive
            self.local.divide(replicas, self.interval * replicas)
            self.local.hold_until(self.paused_until)
        reservation = await self.local.reserve(max_wait)
        return reservation if isinstance(reservation, Refusal) else LocalReservation(*reservation)

    async def _call(self, script: AsyncScript, *args: str) -> list[bytes]:
        arguments = [self.fleet.replica, str(self.in_flight), self._floor, self._alive_ms, *args]
        reply = await self.fleet.link.call(lambda _: script(keys=self._keys, args=arguments))
        interval, shift, now, paused = (float(value) for value in reply[2:6])
        here = self._clock()
        self.interval, self._shift, self._offset = interval, shift, now - here
        self.paused_until = here + paused
        self._alone = interval < FAST_INTERVAL and paused <= 0
        return list(reply)
