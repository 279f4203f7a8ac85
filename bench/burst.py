"""The cold-start burst: many concurrent requests fired at a proxy (or at several replicas at
once) that has just opened its port and holds no token yet."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class BurstResult:
    outcomes: Counter[str]  # "200", "503", "ClientConnectorError", ...
    p50_s: float
    p99_s: float
    max_s: float

    @property
    def ok(self) -> int:
        return self.outcomes["200"]


async def _one(session: aiohttp.ClientSession, url: str, started: float) -> tuple[str, float]:
    """The outcome and the time from the burst's start to the complete answer."""
    try:
        async with session.get(url) as response:
            await response.read()
            outcome = str(response.status)
    except (aiohttp.ClientError, TimeoutError) as error:
        outcome = type(error).__name__
    return outcome, time.perf_counter() - started


async def _fire(urls: list[str], count: int) -> BurstResult:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(_one(session, url, started) for url in urls for _ in range(count))
        )
    latencies = sorted(seconds for _, seconds in results)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return BurstResult(
        outcomes=Counter(outcome for outcome, _ in results),
        p50_s=cuts[49],
        p99_s=cuts[98],
        max_s=latencies[-1],
    )


def fire(url: str, count: int) -> BurstResult:
    """`count` GETs at once, each on its own connection."""
    return asyncio.run(_fire([url], count))


def fire_many(urls: list[str], count: int) -> BurstResult:
    """`count` GETs on each URL, all at once, each on its own connection."""
    return asyncio.run(_fire(urls, count))
