"""The three servers of the soak, started in order (simulator, soak upstream, agentsync-proxy
in front of both), and the questions the soak asks them over HTTP."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from children import (
    CLIENT_ID,
    CLIENT_SECRET,
    SOAK_DIR,
    Processes,
    agentsync_proxy_command,
    clean_environ,
    free_port,
    url,
    wait_for_port,
)

TOKEN_LIFETIME = 20  # the proxy renews in the background half-way, every 10 s
SPOOL_THRESHOLD = 64 * 1024
UPSTREAM_TIMEOUT = 5
TOKEN_TIMEOUT = 10
TOKEN_REQUESTS_PER_MINUTE = 100  # each 401 renews the token: the default 20 is too few here
METRICS = {
    "in_flight": "agentsync_proxy_requests_in_flight",
    "replays": "agentsync_proxy_replays_total",
    "tokens": "agentsync_proxy_token_requests_total",
    "errors": "agentsync_proxy_errors_total",
}


@dataclass(frozen=True)
class Servers:
    simulator: str
    upstream: str
    proxy: str
    proxy_pid: int
    temp_dir: Path  # the proxy's TMPDIR, where its spooled bodies go
    proxy_log: Path


def settings() -> str:
    return (
        f"`--spool-threshold {SPOOL_THRESHOLD}` `--upstream-timeout {UPSTREAM_TIMEOUT}`"
        f" `--token-timeout {TOKEN_TIMEOUT}` `--token-requests-per-minute"
        f" {TOKEN_REQUESTS_PER_MINUTE}`; simulator `--token-lifetime {TOKEN_LIFETIME}`"
    )


def start(children: Processes, root: Path) -> Servers:
    simulator_port, upstream_port, proxy_port = free_port(), free_port(), free_port()
    start_simulator(children, simulator_port)
    start_upstream(children, upstream_port, simulator_port)
    temp_dir = root / "proxy-tmp"
    temp_dir.mkdir()
    env = proxy_env(simulator_port, upstream_port, proxy_port, temp_dir)
    proxy = children.start("agentsync-proxy", [agentsync_proxy_command(), "serve"], env)
    wait_for_port(proxy_port, proxy, "agentsync-proxy")
    return Servers(
        simulator=url(simulator_port),
        upstream=url(upstream_port),
        proxy=url(proxy_port),
        proxy_pid=proxy.pid,
        temp_dir=temp_dir,
        proxy_log=root / "agentsync-proxy.log",
    )


def start_simulator(children: Processes, port: int) -> None:
    argv = [agentsync_proxy_command(), "simulator", "--listen", f"127.0.0.1:{port}"]
    argv += ["--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET]
    argv += ["--token-lifetime", str(TOKEN_LIFETIME), "--log-format", "json"]
    wait_for_port(port, children.start("simulator", argv, clean_environ()), "the simulator")


def start_upstream(children: Processes, port: int, simulator_port: int) -> None:
    argv = [sys.executable, str(SOAK_DIR / "echo_upstream.py"), str(port), url(simulator_port)]
    wait_for_port(port, children.start("upstream", argv, clean_environ()), "the soak upstream")


def proxy_env(simulator: int, upstream: int, port: int, temp_dir: Path) -> dict[str, str]:
    return clean_environ(
        AGENTSYNC_CLIENT_ID=CLIENT_ID,
        AGENTSYNC_CLIENT_SECRET=CLIENT_SECRET,
        AGENTSYNC_TOKEN_URL=url(simulator, "/oauth2/token"),
        AGENTSYNC_API_BASE_URL=url(upstream),
        AGENTSYNC_PROXY_LISTEN=f"127.0.0.1:{port}",
        AGENTSYNC_PROXY_LOG_FORMAT="json",
        AGENTSYNC_PROXY_SPOOL_THRESHOLD=str(SPOOL_THRESHOLD),
        AGENTSYNC_PROXY_UPSTREAM_TIMEOUT=str(UPSTREAM_TIMEOUT),
        AGENTSYNC_PROXY_TOKEN_TIMEOUT=str(TOKEN_TIMEOUT),
        AGENTSYNC_PROXY_TOKEN_REQUESTS_PER_MINUTE=str(TOKEN_REQUESTS_PER_MINUTE),
        TMPDIR=str(temp_dir),
    )


# ---- asking them ----


async def get_json(control: aiohttp.ClientSession, target: str) -> dict[str, object]:
    async with control.get(target) as answer:
        answer.raise_for_status()
        body = await answer.json()
    if not isinstance(body, dict):
        raise RuntimeError(f"{target} answered {body!r}")
    return body


def parse_metric(text: str, name: str) -> dict[str, float]:
    """One metric's samples by their label values, joined by "/" ("" for none), from Prometheus
    text."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        labels, _, value = line[len(name) :].rpartition(" ")
        samples["/".join(re.findall(r'="([^"]*)"', labels))] = float(value)
    return samples


async def proxy_metrics(control: aiohttp.ClientSession, proxy: str) -> dict[str, dict[str, float]]:
    async with control.get(proxy + "/-/metrics") as answer:
        text = await answer.text()
    return {key: parse_metric(text, name) for key, name in METRICS.items()}


async def wait_ready(control: aiohttp.ClientSession, proxy: str, patience: float = 30.0) -> int:
    """The status of `/-/ready` once 200, or at the end of `patience` seconds."""
    deadline = time.monotonic() + patience
    while True:
        async with control.get(proxy + "/-/ready") as answer:
            if answer.status == 200 or time.monotonic() > deadline:
                return answer.status
        await asyncio.sleep(0.05)


async def wait_idle(control: aiohttp.ClientSession, proxy: str, patience: float = 30.0) -> float:
    """Wait until no request is in flight in the proxy; return how many were at the end."""
    deadline = time.monotonic() + patience
    while True:
        in_flight = sum((await proxy_metrics(control, proxy))["in_flight"].values())
        if in_flight == 0 or time.monotonic() > deadline:
            return in_flight
        await asyncio.sleep(0.1)
