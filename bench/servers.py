"""The benchmark's servers, each started on free loopback ports: the nginx upstream (with its
upload sink) and reference proxy, the plain aiohttp proxy (on asyncio's or uvloop's event loop),
the simulator and agentsync-proxy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from nginx_config import write_configs
from processes import Processes, clean_environ, free_ports, tool, wait_for_port

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


def start_plain_proxy(processes: Processes, upstream_port: int, loop: str = "asyncio") -> int:
    """bench/plain_proxy.py on `loop`: "asyncio" or "uvloop"."""
    [port] = free_ports(1)
    script = str(BENCH_DIR / "plain_proxy.py")
    argv = [sys.executable, script, str(port), url(upstream_port), loop]
    wait_for_port(port, processes.start(f"plain-proxy-{loop}", argv), f"the plain proxy on {loop}")
    return port


def start_simulator(processes: Processes, name: str) -> int:
    [port] = free_ports(1)
    argv = [agentsync_proxy_command(), "simulator", "--listen", f"127.0.0.1:{port}"]
    simulator = processes.start(name, argv, env=clean_environ())
    wait_for_port(port, simulator, "the simulator")
    return port


def launch_agentsync_proxy(
    processes: Processes, name: str, simulator_port: int, upstream_port: int
) -> tuple[subprocess.Popen[bytes], int]:
    """Start agentsync-proxy as in production (JSON access log on, to its log file) and return
    at once, without waiting for it."""
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
    process = processes.start(name, [agentsync_proxy_command(), "serve"], env=env)
    return process, port
