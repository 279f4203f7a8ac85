"""A real redis-server of the tests' own on a loopback port: started, stopped and started again on
the same port (for outage tests), and killed at the end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest


@dataclass
class RedisServer:
    """redis-server on 127.0.0.1:`port` (plain), with `options` added to its command line (a
    password, a TLS port). Nothing is saved: a restart starts empty, as after losing Redis."""

    port: int
    options: Sequence[str] = ()
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    def url(self, password: str | None = None) -> str:
        login = f":{password}@" if password is not None else ""
        return f"redis://{login}127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            *self.options,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await self._answering()

    async def kill(self) -> None:
        """Gone at once, as a crashed Redis: no goodbye to its clients."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()
        self.process = None

    async def _answering(self) -> None:
        """Until PING gets an answer (PONG, or NOAUTH when a password is required)."""
        async with asyncio.timeout(10):
            while True:
                assert self.process is not None and self.process.returncode is None
                with contextlib.suppress(OSError):
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    try:
                        writer.write(b"PING\r\n")
                        if (await reader.readline())[:1] in (b"+", b"-"):
                            return
                    finally:
                        writer.close()
                        with contextlib.suppress(OSError):
                            await writer.wait_closed()
                await asyncio.sleep(0.02)


@asynccontextmanager
async def running_redis(port: int, *options: str) -> AsyncIterator[RedisServer]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):  # .ci/run installs it: missing there is a failure
            pytest.fail("redis-server is not installed: apt-get install redis-server")
        pytest.skip("redis-server is not installed: apt-get install redis-server")
    server = RedisServer(port, options)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()
