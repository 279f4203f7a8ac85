"""Faults injected while the soak's traffic runs, through the simulator's control endpoints:
every few seconds the next action of a fixed cycle (token-endpoint 503s and 429s, one of them
slow, one longer than the proxy's quick retries, and a revocation of every token issued so far
every other step). Token-endpoint faults come one at a time, each once the proxy got a token
past the last: the simulator queues faults for the next token requests, and a proxy backing
off through one outage would otherwise meet the next ones too and see one endless outage."""

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
        f" token-endpoint fault, in turn: {', '.join(faults)} (one at a time: skipped while the"
        " proxy has not got a token past the last)"
    )


@dataclass
class Chaos:
    control: aiohttp.ClientSession
    simulator_url: str
    every: float = EVERY
    done: Counter[str] = field(default_factory=Counter)

    async def run(self, stop: asyncio.Event) -> None:
        used_up_at = -1  # the simulator's count of token requests once the queued faults are used
        for label, path, body in itertools.cycle(CYCLE):
            try:
                await asyncio.wait_for(stop.wait(), self.every)
                return
            except TimeoutError:
                pass
            is_fault = path == "/_simulator/faults"
            requests = await self.token_requests() if is_fault else 0
            if is_fault and requests <= used_up_at:  # no token request since the last fault
                self.done[f"{label} skipped (the last one not over)"] += 1
                continue
            async with self.control.post(self.simulator_url + path, json=body) as answer:
                answer.raise_for_status()
                if is_fault:
                    used_up_at = requests + int((await answer.json())["pending_faults"])
            self.done[label] += 1

    async def token_requests(self) -> int:
        async with self.control.get(self.simulator_url + "/_simulator/stats") as answer:
            answer.raise_for_status()
            return int((await answer.json())["token_requests"])
