"""Start the simulator and the proxy inside a running event loop, for the demo and for tests."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy.app import create_app
from proxy.credentials import ClientSecret, Secret
from proxy.settings import ConfigError, Listen, Settings
from proxy.simulator import SIMULATOR_STATE, SimulatorConfig, SimulatorState
from proxy.simulator import create_app as create_simulator_app
from proxy.simulator.tokens import Clock


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


async def listen(runner: web.AppRunner, flag: str, host: str, port: int, **options: Any) -> None:
    """Serve the runner's app on host:port; an address that cannot be had is the user's
    configuration problem, one line naming the setting."""
    try:
        await web.TCPSite(runner, host, port, **options).start()
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason += "; another process listens there: stop it, or choose another address"
        raise ConfigError([f"{flag} {_authority(host, port)}: {reason}"]) from None


async def _start(
    app: web.Application, flag: str, host: str, port: int
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await listen(runner, flag, host, port)
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _origin(host: str, port: int) -> str:
    return "http://" + _authority(host, port)


@asynccontextmanager
async def running_simulator(
    config: SimulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    flag: str = "--listen",
    clock: Clock = time.monotonic,
) -> AsyncIterator[RunningSimulator]:
    """The simulator on host:port; `clock` times its token expiry and rate limits."""
    config = config or SimulatorConfig()
    app = create_simulator_app(config, clock)
    runner, bound = await _start(app, flag, host, port)
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
    runner, bound = await _start(app, "--listen", settings.listen.host, settings.listen.port)
    try:
        yield RunningProxy(_origin(settings.listen.host, bound), bound, settings, app)
    finally:
        await runner.cleanup()
