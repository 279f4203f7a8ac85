"""The soak's child processes: the simulator, the soak upstream and agentsync-proxy, each on a
free loopback port with its output in a log file, all stopped when the block ends."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

SOAK_DIR = Path(__file__).resolve().parent
CLIENT_ID, CLIENT_SECRET = "soak-client", "soak-secret"


def url(port: int, path: str = "") -> str:
    return f"http://127.0.0.1:{port}{path}"


def agentsync_proxy_command() -> str:
    """The console script beside this interpreter (the project's venv), else on PATH."""
    beside = Path(sys.executable).parent / "agentsync-proxy"
    found = str(beside) if beside.exists() else shutil.which("agentsync-proxy")
    if found is None:
        raise RuntimeError("agentsync-proxy is not installed: run `make soak`, not the script")
    return found


def clean_environ(**settings: str) -> dict[str, str]:
    """This process's environment without AGENTSYNC_* settings or HTTP proxies, plus settings."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AGENTSYNC_") and not name.lower().endswith("_proxy")
    }
    return {**kept, **settings}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Children:
    """Every process the soak starts; all are stopped when the block ends, even on errors."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._running: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        """Start argv with env as its whole environment and its output in log_dir/NAME.log."""
        log = (self.log_dir / f"{name}.log").open("ab")
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,  # Ctrl-C reaches only the soak, which stops these
            )
        except BaseException:
            log.close()
            raise
        self._running.append((process, log))
        return process

    def stop_all(self) -> None:
        for process, log in reversed(self._running):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            log.close()
        self._running.clear()

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 30.0
) -> None:
    """Return as soon as the port accepts a connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}; see its log")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"{what} did not open port {port} within {timeout} s")
