"""What a test checks to prove nothing was leaked: the process's open temporary files and
sockets, and the event loop's tasks."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


def temporary_files() -> list[str]:
    """Open file descriptors of this process on temporary or deleted files."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed between listing and reading
            continue
        if target.startswith("/tmp/") or "(deleted)" in target:
            found.append(f"{fd}:{target}")
    return sorted(found)


def open_sockets() -> int:
    """How many sockets this process holds open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # closed between listing and reading
            continue
    return count


async def tasks_left(before: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    """Tasks started since `before` and still not done, once the loop has run what was queued
    (closing transports, callbacks of ended threads)."""
    for _ in range(10):
        await asyncio.sleep(0)
    return asyncio.all_tasks() - before - {asyncio.current_task()}


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a condition that no event announces (a gauge of another component, a file
    freed by a timer)."""
    async with asyncio.timeout(30):
        while not condition():
            await asyncio.sleep(0.005)
