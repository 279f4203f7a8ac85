"""The benchmark's servers, each started on free loopback ports: the nginx upstream (with its
upload sink) and reference proxies, the plain aiohttp proxy (on asyncio's or uvloop's event
loop), the simulator, redis-server and agentsync-proxy."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from nginx_config import STATIC_TOKEN, write_api_proxy_config, write_configs
from processes import Processes, clean_environ, free_ports, http_get, tool, wait_for_port

BENCH_DIR = Path(__file__).resolve().parent
SIMULATOR_CLIENT = ("demo-client", "demo-secret")


def url(port: int, path: str = "") -> str:
    return f"http://127.0.0.1:{port}{path}"


def agentsync_proxy_command() -> str:
    """The console script beside this interpreter (the project's venv), else on PATH."""
    beside = Path(sys.executable).parent / "agentsync-proxy"
    found = str(beside) if beside.exists() else shutil.which("agentsync-proxy")
    if found is None:
        raise RuntimeError("agentsync-proxy is not installed: run `make bench` or `make soak`")
    return found


@dataclass(frozen=True)
class Upstream:
    port: int
    nginx_proxy_port: int
    upload_file: Path  # the sparse 1 GiB download, reused as the upload's source


def _nginx(processes: Processes, name: str, root: Path, config: Path) -> subprocess.Popen[bytes]:
    argv = [tool("nginx"), "-p", str(root), "-e", str(root / f"{name}-error.log")]
    return processes.start(name, [*argv, "-c", str(config), "-g", "daemon off;"])


def start_upstream(processes: Processes, root: Path) -> Upstream:
    upstream_port, sink_port, proxy_port = free_ports(3)
    upstream_config, proxy_config = write_configs(root, upstream_port, sink_port, proxy_port)
    sink = processes.start(
        "upload-sink", [sys.executable, str(BENCH_DIR / "upload_sink.py"), str(sink_port)]
    )
    wait_for_port(sink_port, sink, "the upload sink")
    upstream = _nginx(processes, "nginx-upstream", root, upstream_config)
    wait_for_port(upstream_port, upstream, "the nginx upstream")
    reference = _nginx(processes, "nginx-proxy", root, proxy_config)
    wait_for_port(proxy_port, reference, "the nginx proxy")
    return Upstream(upstream_port, proxy_port, root / "download.bin")


def start_api_nginx_proxy(processes: Processes, root: Path, simulator_port: int, token: str) -> int:
    """nginx as a proxy in front of the simulator's API, sending `token` with every request."""
    [port] = free_ports(1)
    config = write_api_proxy_config(root, port, simulator_port, token)
    wait_for_port(port, _nginx(processes, "nginx-api-proxy", root, config), "the nginx API proxy")
    return port


def start_plain_proxy(
    processes: Processes,
    upstream_port: int,
    loop: str = "asyncio",
    token: str = STATIC_TOKEN,
    name: str | None = None,
) -> int:
    """bench/plain_proxy.py on `loop` ("asyncio" or "uvloop"), sending `token` upstream (given
    in its environment: a command line is visible to every user)."""
    [port] = free_ports(1)
    script = str(BENCH_DIR / "plain_proxy.py")
    argv = [sys.executable, script, str(port), url(upstream_port), loop]
    name = name or f"plain-proxy-{loop}"
    process = processes.start(name, argv, env=clean_environ(PLAIN_PROXY_TOKEN=token))
    wait_for_port(port, process, f"the plain proxy {name}")
    return port


def start_simulator(
    processes: Processes, name: str, api_requests_per_minute: int | None = None
) -> int:
    """The simulator, with its own API rate limit when one is given."""
    [port] = free_ports(1)
    argv = [agentsync_proxy_command(), "simulator", "--listen", f"127.0.0.1:{port}"]
    if api_requests_per_minute is not None:
        argv += ["--api-requests-per-minute", str(api_requests_per_minute)]
    simulator = processes.start(name, argv, env=clean_environ())
    wait_for_port(port, simulator, "the simulator")
    return port


def simulator_token(simulator_port: int) -> str:
    """A token from the simulator's token endpoint for its demo client, as a client would get
    one; it is never printed."""
    client_id, client_secret = SIMULATOR_CLIENT
    form = urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
        }
    )
    connection = http.client.HTTPConnection("127.0.0.1", simulator_port, timeout=10)
    try:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        connection.request("POST", "/oauth2/token", body=form, headers=headers)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"the simulator's token endpoint answered {response.status}")
    return str(json.loads(body)["access_token"])


def simulator_stats(simulator_port: int) -> dict[str, Any]:
    """The simulator's /_simulator/stats: token requests, API answers by status."""
    status, body = http_get(simulator_port, "/_simulator/stats")
    if status != 200:
        raise RuntimeError(f"the simulator's stats answered {status}")
    stats: dict[str, Any] = json.loads(body)
    return stats


def token_requests(simulator_port: int) -> int:
    return int(simulator_stats(simulator_port)["token_requests"])


def start_redis(processes: Processes, name: str = "redis") -> str:
    """A redis-server of the run's own on a free port, nothing saved; returns its URL."""
    [port] = free_ports(1)
    argv = [tool("redis-server"), "--bind", "127.0.0.1", "--port", str(port)]
    argv += ["--save", "", "--appendonly", "no"]
    wait_for_port(port, processes.start(name, argv), "redis-server")
    return f"redis://127.0.0.1:{port}/0"


def launch_agentsync_proxy(
    processes: Processes,
    name: str,
    simulator_port: int,
    upstream_port: int,
    options: Sequence[str] = (),
) -> tuple[subprocess.Popen[bytes], int]:
    """Start agentsync-proxy as in production (JSON access log on, to its log file), with
    `options` added to `agentsync-proxy serve`, and return at once, without waiting for it."""
    [port] = free_ports(1)
    client_id, client_secret = SIMULATOR_CLIENT
    env = clean_environ(
        AGENTSYNC_CLIENT_ID=client_id,
        AGENTSYNC_CLIENT_SECRET=client_secret,
        AGENTSYNC_TOKEN_URL=url(simulator_port, "/oauth2/token"),
        AGENTSYNC_API_BASE_URL=url(upstream_port),
        AGENTSYNC_PROXY_LISTEN=f"127.0.0.1:{port}",
        AGENTSYNC_PROXY_LOG_FORMAT="json",
    )
    argv = [agentsync_proxy_command(), "serve", *options]
    process = processes.start(name, argv, env=env)
    return process, port
