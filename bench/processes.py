"""The benchmark's subprocesses: the tools it needs, starting and stopping servers, waiting for
their ports, and reading their memory from /proc."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

# command -> Debian package
TOOLS = {"nginx": "nginx", "wrk": "wrk", "curl": "curl", "redis-server": "redis-server"}
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])


def tool(name: str) -> str:
    found = shutil.which(name, path=SEARCH_PATH)
    if found is None:
        raise RuntimeError(f"{name} is not installed")
    return found


def ensure_tools() -> None:
    """Install nginx, wrk, curl and redis-server from Debian's packages when any is missing."""
    missing = [
        package for name, package in TOOLS.items() if shutil.which(name, path=SEARCH_PATH) is None
    ]
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *missing]
    print(f"installing {' '.join(missing)} with apt-get", flush=True)
    if subprocess.run(install, env=env, check=False).returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(install, env=env, check=True)


def clean_environ(**settings: str) -> dict[str, str]:
    """This process's environment without AGENTSYNC_* settings or HTTP proxies, plus settings."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AGENTSYNC_") and not name.lower().endswith("_proxy")
    }
    return {**kept, **settings}


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: all are held open until all are chosen."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Processes:
    """Every server the run starts; all are stopped when the block ends, even on errors."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._running: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start argv with its output in log_dir/NAME.log; env, when given, is the whole
        environment."""
        log = (self.log_dir / f"{name}.log").open("ab")
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                start_new_session=True,  # Ctrl-C reaches only the benchmark, which stops these
            )
        except BaseException:
            log.close()
            raise
        self._running.append((process, log))
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for entry in [e for e in self._running if e[0] is process]:
            entry[1].close()
            self._running.remove(entry)

    def stop_all(self) -> None:
        for process, _ in reversed(list(self._running)):
            self.stop(process)

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()


def _check_alive(process: subprocess.Popen[bytes], what: str) -> None:
    if process.poll() is not None:
        raise RuntimeError(f"{what} exited with status {process.returncode}; see its log")


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 30.0
) -> None:
    """Return as soon as the port accepts a connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(process, what)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.001)
    raise RuntimeError(f"{what} did not open port {port} within {timeout} s")


def http_get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_for_ok(
    port: int, path: str, process: subprocess.Popen[bytes], what: str, timeout: float = 30.0
) -> None:
    """Return as soon as GET path answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(process, what)
        try:
            if http_get(port, path)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError(f"{what} did not answer 200 on {path} within {timeout} s")


def status_kib(pid: int, field: str) -> int:
    """A `VmRSS`-style line of /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


class PeakRss:
    """The peak resident memory of a process during a block: its kernel high-water mark, reset
    at the start (clear_refs 5), and a 10 ms poll of VmRSS should the reset be refused."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._hwm_reset = False
        self._done = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._done.wait(0.01):
            self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmRSS"))

    def __enter__(self) -> PeakRss:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self.peak_kib = status_kib(self.pid, "VmRSS")
        self._poller.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._done.set()
        self._poller.join()
        if self._hwm_reset:
            self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmHWM"))


def show_logs(root: Path) -> None:
    """The last lines of every server's log, to explain a failed run."""
    for log in sorted(root.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(f"--- {log.name}", *tail, sep="\n", file=sys.stderr)
