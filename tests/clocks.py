"""A clock that tests move by hand, and the simulator's app started on one, for its token
expiry and rate limits."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from proxy.simulator import SimulatorConfig, create_app

Client = TestClient[web.Request, web.Application]


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def start(
    aiohttp_client: AiohttpClient,
    config: SimulatorConfig | None = None,
    clock: FakeClock | None = None,
) -> Client:
    """The simulator on `config` (the defaults if none) and `clock` (a new FakeClock if none)."""
    return await aiohttp_client(create_app(config or SimulatorConfig(), clock or FakeClock()))
