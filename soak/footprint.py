"""What a process holds, read from /proc: open file descriptors (sockets and temporary files
among them) and resident memory; and a sampler that keeps the peaks during the soak."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Footprint:
    fds: int
    sockets: int
    temp_files: int  # fds on files in the proxy's TMPDIR, or on deleted files
    rss_kib: int

    def peak(self, other: Footprint) -> Footprint:
        return Footprint(
            max(self.fds, other.fds),
            max(self.sockets, other.sockets),
            max(self.temp_files, other.temp_files),
            max(self.rss_kib, other.rss_kib),
        )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS")


def fd_targets(pid: int) -> list[str]:
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed between listing and reading
            continue
    return targets


def is_temporary(target: str, temp_dir: Path) -> bool:
    return target.startswith(f"{temp_dir}/") or target.endswith("(deleted)")


def read(pid: int, temp_dir: Path) -> Footprint:
    targets = fd_targets(pid)
    return Footprint(
        fds=len(targets),
        sockets=sum(1 for target in targets if target.startswith("socket:")),
        temp_files=sum(1 for target in targets if is_temporary(target, temp_dir)),
        rss_kib=rss_kib(pid),
    )


class Sampler:
    """Reads a footprint every `interval` seconds while running; keeps the peak, and the RSS
    every `every` seconds (a leak shows as a steady climb)."""

    def __init__(self, pid: int, temp_dir: Path, interval: float = 0.1, every: float = 10.0):
        self.pid = pid
        self.temp_dir = temp_dir
        self.interval = interval
        self.every = every
        self.peak = read(pid, temp_dir)
        self.rss_timeline: list[int] = []  # KiB at 0 s, `every` s, 2 * `every` s, ...

    async def run(self) -> None:
        started = time.monotonic()
        while True:
            now = read(self.pid, self.temp_dir)
            self.peak = self.peak.peak(now)
            if time.monotonic() - started >= self.every * len(self.rss_timeline):
                self.rss_timeline.append(now.rss_kib)
            await asyncio.sleep(self.interval)
