from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
import uvloop

from proxy.servers import RunningProxy, RunningSimulator, running_proxy, settings_for
from tests.leaks import open_sockets, tasks_left, temporary_files
from tests.rawhttp import RawUpstream

pytest_plugins = ["proxy.testing"]

# Token retries back off from 10 ms in tests, so that retry tests take no real time.
FAST_RETRIES = {"backoff_initial": 0.01}

ProxyFactory = Callable[..., Awaitable[RunningProxy]]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "uvloop_too: run on uvloop's event loop as well")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, LoopFactory]:
    """asyncio's event loop for every test; uvloop's as well for tests marked uvloop_too."""
    if item.get_closest_marker("uvloop_too") is None:
        return {"asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture
async def nothing_leaked() -> AsyncIterator[None]:
    """For a test that starts it before its servers: once the proxy and the servers of the
    test have closed, no task still running, no socket and no temporary file still open."""
    tasks, sockets, files = asyncio.all_tasks(), open_sockets(), temporary_files()
    yield
    assert await tasks_left(tasks) == set()
    assert open_sockets() <= sockets
    assert temporary_files() == files


@pytest.fixture
async def upstream() -> AsyncIterator[RawUpstream]:
    server = RawUpstream()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def make_proxy(
    agentsync_simulator: RunningSimulator, upstream: RawUpstream
) -> AsyncIterator[ProxyFactory]:
    """A proxy whose token comes from the simulator and whose API is the raw upstream."""
    async with AsyncExitStack() as stack:

        async def start(
            app_options: dict[str, Any] | None = None, **overrides: Any
        ) -> RunningProxy:
            overrides.setdefault("api_base_url", upstream.url)
            settings = settings_for(agentsync_simulator, **overrides)
            options = {"token_source_options": FAST_RETRIES, **(app_options or {})}
            return await stack.enter_async_context(running_proxy(settings, **options))

        yield start
