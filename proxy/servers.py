"""Start the simulator and the proxy inside a running event loop, for the demo and for tests."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
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


async def start(
    app: web.Application,
    flag: str,
    listen: Listen,
    *,
    shutdown_timeout: float = 60.0,
    **site_options: Any,
) -> tuple[web.AppRunner, int]:
    """Serve `app` on `listen`: its runner, and the port it got. An address that cannot be had
    is the user's configuration problem, one line naming the setting (`flag`)."""
    # A client that hangs up cancels its request: a request held for the rate limit gives its
    # slot back, and nothing more goes upstream for it.
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, listen.host, listen.port, **site_options).start()
    except BaseException as exc:
        await runner.cleanup()
        if not isinstance(exc, OSError):
            raise
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason += "; another process listens there: stop it, or choose another address"
        raise ConfigError([f"{flag} {listen}: {reason}"]) from None
    return runner, int(runner.addresses[0][1])


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
    runner, bound = await start(app, flag, Listen(host, port))
    try:
        yield RunningSimulator(f"http://{Listen(host, bound)}", config, app)
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
        **overrides,
    }
    return Settings(**values)


@asynccontextmanager
async def running_proxy(settings: Settings, **app_options: Any) -> AsyncIterator[RunningProxy]:
    app = create_app(settings, **app_options)
    runner, bound = await start(app, "--listen", settings.listen)
    try:
        yield RunningProxy(f"http://{Listen(settings.listen.host, bound)}", bound, settings, app)
    finally:
        await runner.cleanup()


async def stopped() -> None:
    """Return on Ctrl-C or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
