"""The soak's child processes, started, logged and stopped as the benchmark's are: the
simulator, the soak upstream and agentsync-proxy, each on a free loopback port with its output
in a log file, all stopped when the block ends."""

from __future__ import annotations

import sys
from pathlib import Path

SOAK_DIR = Path(__file__).resolve().parent
sys.path.append(str(SOAK_DIR.parent / "bench"))

from processes import (  # noqa: E402 - found through the path set above
    Processes,
    clean_environ,
    free_ports,
    show_logs,
    wait_for_port,
)
from servers import agentsync_proxy_command, url  # noqa: E402

CLIENT_ID, CLIENT_SECRET = "soak-client", "soak-secret"

__all__ = [
    "CLIENT_ID",
    "CLIENT_SECRET",
    "SOAK_DIR",
    "Processes",
    "agentsync_proxy_command",
    "clean_environ",
    "free_port",
    "show_logs",
    "url",
    "wait_for_port",
]


def free_port() -> int:
    [port] = free_ports(1)
    return port
