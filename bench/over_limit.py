"""Clients that want more than the API's rate limit allows: closed-loop clients that together
offer a fixed rate, and an open-loop offer that sends on schedule whatever the answers; each
answer's outcome (the proxy's own 429 `rate_limited` told apart from the API's 429) and latency."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

RATE_LIMITED = "rate_limited"  # the outcome of a 429 the proxy answered itself
TIMEOUT = aiohttp.ClientTimeout(total=120)  # beyond any wait for the rate limit


@dataclass(frozen=True)
class Answer:
    outcome: str  # "200", "429" (the API's), RATE_LIMITED, or an exception's name
    seconds: float  # from sending the request to its complete answer


@dataclass(frozen=True)
class Offer:
    answers: list[Answer]
    seconds: float  # from the first request sent to the last answer

    def outcomes(self) -> Counter[str]:
        return Counter(answer.outcome for answer in self.answers)

    def latencies(self, outcome: str) -> list[float]:
        return sorted(a.seconds for a in self.answers if a.outcome == outcome)


def _error_code(body: bytes) -> object:
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed.get("error") if isinstance(parsed, dict) else None


async def _get(session: aiohttp.ClientSession, url: str) -> Answer:
    started = time.perf_counter()
    try:
        async with session.get(url) as response:
            body = await response.read()
            outcome = str(response.status)
            if response.status == 429 and _error_code(body) == RATE_LIMITED:
                outcome = RATE_LIMITED
    except (aiohttp.ClientError, TimeoutError) as error:
        outcome = type(error).__name__
    return Answer(outcome, time.perf_counter() - started)


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=TIMEOUT)


async def _closed_loop(url: str, clients: int, per_second: float, seconds: float) -> Offer:
    """Each client sends, awaits the answer, and sends again when its share of the offer is
    due (at once if the answer came later): `clients` / `per_second` seconds between its sends.
    The clients start spread over one such interval; none sends after `seconds`."""
    loop = asyncio.get_running_loop()
    interval = clients / per_second
    answers: list[Answer] = []
    async with _session() as session:
        started = loop.time()
        deadline = started + seconds

        async def client(index: int) -> None:
            due = started + interval * index / clients
            while due < deadline:
                await asyncio.sleep(due - loop.time())
                answers.append(await _get(session, url))
                due = max(due + interval, loop.time())

        await asyncio.gather(*(client(index) for index in range(clients)))
        return Offer(answers, loop.time() - started)


async def _open_loop(url: str, per_second: float, seconds: float) -> Offer:
    """One request every 1 / `per_second` seconds for `seconds`, whatever the answers."""
    loop = asyncio.get_running_loop()
    async with _session() as session:
        started = loop.time()
        requests: list[asyncio.Task[Answer]] = []
        for index in range(round(per_second * seconds)):
            await asyncio.sleep(started + index / per_second - loop.time())
            requests.append(asyncio.create_task(_get(session, url)))
        answers = list(await asyncio.gather(*requests))
        return Offer(answers, loop.time() - started)


def closed_loops(
    urls: Sequence[str], clients: int, per_second: float, seconds: float
) -> list[Offer]:
    """The same closed-loop offer against every URL at once, one Offer each."""

    async def all_at_once() -> list[Offer]:
        runs = (_closed_loop(url, clients, per_second, seconds) for url in urls)
        return list(await asyncio.gather(*runs))

    return asyncio.run(all_at_once())


def open_loop(url: str, per_second: float, seconds: float) -> Offer:
    return asyncio.run(_open_loop(url, per_second, seconds))
