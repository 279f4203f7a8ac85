"""The real `agentsync-proxy` command in a subprocess, for tests of the command line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from proxy.servers import RunningSimulator


@dataclass
class Completed:
    status: int
    stdout: str
    stderr: str


async def run_cli(*args: str, env: Mapping[str, str] | None = None) -> Completed:
    """Run a command to its end with exactly `env` (and PATH)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        env={"PATH": os.environ["PATH"], **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:  # a command that should have ended serves on instead
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Completed(process.returncode, out.decode(), err.decode())


def simulator_env(simulator: RunningSimulator, **extra: str) -> dict[str, str]:
    """Settings that point the proxy at the simulator for both tokens and API."""
    return {
        "AGENTSYNC_CLIENT_ID": simulator.config.client_id,
        "AGENTSYNC_CLIENT_SECRET": simulator.config.client_secret,
        "AGENTSYNC_TOKEN_URL": simulator.token_url,
        "AGENTSYNC_API_BASE_URL": simulator.url,
        **extra,
    }


@dataclass
class Served:
    process: asyncio.subprocess.Process
    url: str
    port: int


async def start_serve(
    env: Mapping[str, str], listen: str, *, stdout: int, stderr: int
) -> asyncio.subprocess.Process:
    """`agentsync-proxy serve` on `listen` with JSON logs, started and not waited for."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        env={
            "PATH": os.environ["PATH"],
            "AGENTSYNC_PROXY_LISTEN": listen,
            "AGENTSYNC_PROXY_LOG_FORMAT": "json",
            **env,
        },
        stdout=stdout,
        stderr=stderr,
    )


@asynccontextmanager
async def serve(
    env: Mapping[str, str], port: int, *, capture: bool = True
) -> AsyncIterator[Served]:
    """`agentsync-proxy serve` on 127.0.0.1:port with JSON logs, once it is ready (holds a
    token). With `capture`, its output is kept for `process.communicate()`."""
    output = asyncio.subprocess.PIPE if capture else asyncio.subprocess.DEVNULL
    process = await start_serve(env, f"127.0.0.1:{port}", stdout=output, stderr=output)
    served = Served(process, f"http://127.0.0.1:{port}", port)
    try:
        await until_ready(served.url)
        yield served
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def until_ready(url: str) -> None:
    """Nothing announces readiness to another process: poll /-/ready."""
    async with asyncio.timeout(20), aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with session.get(url + "/-/ready") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.02)


@asynccontextmanager
async def demo_process() -> AsyncIterator[str]:
    """`agentsync-proxy demo` on free ports; yields what it printed, once it has printed all
    its instructions."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "proxy", "demo", "--listen", "127.0.0.1:0", "--simulator-listen", "127.0.0.1:0"),
        env={"PATH": os.environ["PATH"], "PYTHONPATH": os.getcwd()},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        printed = ""
        async with asyncio.timeout(20):
            while "Ctrl-C stops both." not in printed:
                line = await process.stdout.readline()
                assert line, "the demo ended before it served"
                printed += line.decode()
        yield printed
    finally:
        process.kill()
        await process.wait()
