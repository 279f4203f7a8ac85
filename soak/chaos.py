"""Faults injected while the soak's traffic runs, through the simulator's control endpoints:
every few seconds the next action of a fixed cycle (token-endpoint 503s and 429s, one of them
slow, one longer than the proxy retries, and a revocation of every token issued so far every
other step)."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

Action = tuple[str, str, dict[str, object]]  # label, control path, JSON body

CYCLE: list[Action] = [
    ("token endpoint: 503 x2", "/_simulator/faults", {"status": 503, "count": 2}),
    ("revoke every token", "/_simulator/revoke", {}),
    ("token endpoint: 429 x1", "/_simulator/faults", {"status": 429, "count": 1}),
    ("revoke every token", "/_simulator/revoke", {}),
    (
        "token endpoint: 503 x1 after 2 s",
        "/_simulator/faults",
        {"status": 503, "count": 1, "delay": 2.0},
    ),
    ("revoke every token", "/_simulator/revoke", {}),
    # More failures than the proxy's five attempts: requests waiting for a token get 503s.
    ("token endpoint: 503 x6", "/_simulator/faults", {"status": 503, "count": 6}),
    ("revoke every token", "/_simulator/revoke", {}),
]
EVERY = 5.0  # seconds between actions


def describe() -> str:
    faults = [label.removeprefix("token endpoint: ") for label, path, _ in CYCLE if "fault" in path]
    return (
        f"every {EVERY * 2:g} s a revocation of every token, and {EVERY:g} s before each a"
        f" token-endpoint fault, in turn: {', '.join(faults)}"
    )


@dataclass
class Chaos:
    control: aiohttp.ClientSession
    simulator_url: str
    every: float = EVERY
    done: Counter[str] = field(default_factory=Counter)

    async def run(self, stop: asyncio.Event) -> None:
        for label, path, body in itertools.cycle(CYCLE):
            try:
                await asyncio.wait_for(stop.wait(), self.every)
                return
            except TimeoutError:
                pass
            async with self.control.post(self.simulator_url + path, json=body) as answer:
                answer.raise_for_status()
            self.done[label] += 1
