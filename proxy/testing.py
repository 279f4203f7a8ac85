"""pytest fixtures for test suites that talk to AgentSync through the proxy, with no account:
`pytest_plugins = ["proxy.testing"]` in a conftest.py, with pytest-aiohttp or pytest-asyncio."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from proxy.servers import (
    RunningProxy,
    RunningSimulator,
    running_proxy,
    running_simulator,
    settings_for,
)
from proxy.simulator import SimulatorConfig

__all__ = [
    "RunningProxy",
    "RunningSimulator",
    "agentsync_proxy",
    "agentsync_simulator",
    "running_proxy",
    "running_simulator",
    "settings_for",
]


@pytest.fixture
def agentsync_simulator_config() -> SimulatorConfig:
    """Override to grant other scopes or a shorter token lifetime."""
    return SimulatorConfig()


@pytest.fixture
async def agentsync_simulator(
    agentsync_simulator_config: SimulatorConfig,
) -> AsyncIterator[RunningSimulator]:
    """The AgentSync simulator on a free loopback port: `.url`, `.token_url`, `.state`."""
    async with running_simulator(agentsync_simulator_config) as simulator:
        yield simulator


@pytest.fixture
async def agentsync_proxy(agentsync_simulator: RunningSimulator) -> AsyncIterator[RunningProxy]:
    """The proxy in front of the simulator on a free loopback port: send plain HTTP to `.url`."""
    async with running_proxy(settings_for(agentsync_simulator)) as proxy:
        yield proxy
