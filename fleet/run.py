"""`make fleet`: three proxies sharing one token through Redis, on loopback.

Usage: .venv/bin/python fleet/run.py [--replicas 3] [--burst 30] [--exit]

Starts a redis-server of its own (nothing saved), the AgentSync simulator and the replicas
(`agentsync-proxy serve` with the simulator's demo client, all on the one Redis), prints curl
lines for each replica, fires a burst through all of them and prints the simulator's
/_simulator/stats: one token request for the whole fleet. Then it serves until Ctrl-C (or
stops at once with --exit), and stops everything it started."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

PATH = "/contracting/v1/customers/carriers?page=0&size=3"
CLIENT_ID, CLIENT_SECRET = "demo-client", "demo-secret"  # the simulator's demo client
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Children:
    """The processes started here, stopped in reverse order (SIGTERM, then SIGKILL)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, asyncio.subprocess.Process]] = []

    async def start(self, name: str, *command: str, env: dict[str, str] | None = None) -> None:
        with (self.logs / f"{name}.log").open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *command,
                env={**os.environ, **(env or {})},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches this script, which stops them in order
            )
        self.started.append((name, process))

    async def stop(self) -> None:
        for _, process in reversed(self.started):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 15)
                except TimeoutError:
                    process.kill()
                    await process.wait()

    def exited(self) -> str | None:
        for name, process in self.started:
            if process.returncode is not None:
                return f"{name} exited with status {process.returncode}; see {self.logs}/{name}.log"
        return None


async def until_answering(session: aiohttp.ClientSession, url: str, children: Children) -> None:
    async with asyncio.timeout(START_TIMEOUT):
        while True:
            problem = children.exited()
            if problem is not None:
                raise SystemExit(f"make fleet: {problem}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)


async def until_redis_answers(port: int, children: Children) -> None:
    async with asyncio.timeout(START_TIMEOUT):
        while True:
            problem = children.exited()
            if problem is not None:
                raise SystemExit(f"make fleet: {problem}")
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"PING\r\n")
                answer = await reader.readline()
                writer.close()
                if answer.startswith(b"+PONG"):
                    return
            await asyncio.sleep(0.05)


@asynccontextmanager
async def fleet(replicas: int, logs: Path) -> AsyncIterator[tuple[str, str, list[str]]]:
    """Redis, the simulator and the replicas, running: (Redis URL, simulator URL, proxy URLs)."""
    children = Children(logs)
    redis_port, simulator_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    simulator = f"http://127.0.0.1:{simulator_port}"
    proxies = [f"http://127.0.0.1:{free_port()}" for _ in range(replicas)]
    agentsync_proxy = (sys.executable, "-m", "proxy")
    try:
        await children.start(
            "redis",
            "redis-server",
            *("--bind", "127.0.0.1", "--port", str(redis_port)),
            *("--save", "", "--appendonly", "no"),
        )
        await until_redis_answers(redis_port, children)
        await children.start(
            "simulator",
            *(*agentsync_proxy, "simulator", "--listen", simulator.removeprefix("http://")),
            *("--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET, "--log-format", "json"),
        )
        for index, proxy in enumerate(proxies, 1):
            await children.start(
                f"proxy-{index}",
                *(*agentsync_proxy, "serve", "--listen", proxy.removeprefix("http://")),
                *("--client-id", CLIENT_ID, "--token-url", simulator + "/oauth2/token"),
                *("--api-base-url", simulator, "--redis-url", redis_url, "--log-format", "json"),
                env={"AGENTSYNC_CLIENT_SECRET": CLIENT_SECRET},
            )
        async with aiohttp.ClientSession() as session:
            await until_answering(session, simulator + "/_simulator/stats", children)
            for proxy in proxies:
                await until_answering(session, proxy + "/-/ready", children)
        yield redis_url, simulator, proxies
    finally:
        await children.stop()


async def burst(proxies: Sequence[str], count: int) -> dict[int, int]:
    """`count` concurrent GETs spread over the proxies: how many got each status."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def get(index: int) -> int:
            async with session.get(proxies[index % len(proxies)] + PATH) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(get(index) for index in range(count)))
    return {status: statuses.count(status) for status in sorted(set(statuses))}


async def stats(simulator: str) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(simulator + "/_simulator/stats") as response,
    ):
        answer: dict[str, object] = await response.json()
        return answer


def instructions(redis_url: str, simulator: str, proxies: Sequence[str], logs: Path) -> str:
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    lines = [
        f"make fleet: Redis on {redis_url}, the AgentSync simulator on {simulator},",
        f"{len(proxies)} proxies sharing one token through Redis. Paste these lines elsewhere:",
        "",
    ]
    lines += [f"  curl -s '{proxy}{PATH}'" for proxy in proxies]
    lines += [
        "",
        "  # revoke every token: the next calls get 401 upstream, and the fleet renews once",
        f"  curl -s -X POST '{simulator}/_simulator/revoke'",
        f"  curl -s '{simulator}/_simulator/stats'",
        "",
        "  # what the fleet keeps in Redis: the token sealed (AES-GCM), the replicas, a counter",
        f"  redis-cli -p {port} --scan",
        "",
        f"Logs: {logs}",
    ]
    return "\n".join(lines)


async def run(replicas: int, count: int, exit_at_once: bool) -> int:
    logs = Path(tempfile.mkdtemp(prefix="agentsync-fleet-"))
    async with fleet(replicas, logs) as (redis_url, simulator, proxies):
        print(instructions(redis_url, simulator, proxies, logs), flush=True)
        answered = await burst(proxies, count)
        counts = await stats(simulator)
        print(f"\nA burst of {count} requests through the {replicas} proxies: {answered}")
        print(f"The simulator's /_simulator/stats: {json.dumps(counts)}")
        print(f"token requests for the whole fleet: {counts['token_requests']}", flush=True)
        if not exit_at_once:
            print("\nCtrl-C stops everything.", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            await stop.wait()
    print("fleet stopped", file=sys.stderr)
    return 0 if set(answered) == {200} and counts["token_requests"] == 1 else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3, metavar="N")
    parser.add_argument("--burst", type=int, default=30, metavar="N")
    parser.add_argument("--exit", action="store_true", help="stop after the burst")
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None:
        print("make fleet needs redis-server: apt-get install redis-server", file=sys.stderr)
        return 1
    return asyncio.run(run(max(1, args.replicas), max(1, args.burst), args.exit))


if __name__ == "__main__":
    sys.exit(main())
