"""Start the simulator and the proxy inside a running event loop, for the demo and for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy.app import create_app
from proxy.credentials import ClientSecret, Secret
from proxy.settings import Listen, Settings
from proxy.simulator import SIMULATOR_STATE, SimulatorConfig, SimulatorState
from proxy.simulator import create_app as create_simulator_app


@dataclass(frozen=True)
class RunningSimulator:
    url: str
    config: SimulatorConfig = field(repr=False)
    app: web.Application = field(repr=False)

    @property
    def token_url(self) -> str:
        return self.url + "/oauth2/token"

    @property
    def state(self) -> SimulatorState:
        return self.app[SIMULATOR_STATE]


@dataclass(frozen=True)
class RunningProxy:
    url: str
    port: int
    settings: Settings = field(repr=False)
    app: web.Application = field(repr=False)


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, int(runner.addresses[0][1])


def _origin(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@asynccontextmanager
async def running_simulator(
    config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSimulator]:
    config = config or SimulatorConfig()
    app = create_simulator_app(config)
    runner, bound = await _start(app, host, port)
    try:
        yield RunningSimulator(_origin(host, bound), config, app)
    finally:
        await runner.cleanup()


def settings_for(simulator: RunningSimulator, **overrides: Any) -> Settings:
    """Proxy settings wired to the simulator: its token URL, credentials and API."""
    values: dict[str, Any] = {
        "client_id": simulator.config.client_id,
        "client_secret": ClientSecret(Secret(simulator.config.client_secret)),
        "api_base_url": simulator.url,
        "token_url": simulator.token_url,
        "scope": " ".join(simulator.config.scopes),
        "listen": Listen("127.0.0.1", 0),
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running_proxy(settings: Settings, **app_options: Any) -> AsyncIterator[RunningProxy]:
    app = create_app(settings, **app_options)
    runner, bound = await _start(app, settings.listen.host, settings.listen.port)
    try:
        yield RunningProxy(_origin(settings.listen.host, bound), bound, settings, app)
    finally:
        await runner.cleanup()
