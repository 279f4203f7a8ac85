"""The replay spool on its own: whole blocks written by worker threads, read back in order, and
the file and buffers released only once no thread uses them, whatever was cancelled."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from proxy.body import Spool
from tests.leaks import temporary_files

BLOCK = 64 * 1024


class GatedExecutor(ThreadPoolExecutor):
    """Runs each job only once `gate` is open; tells the loop when a job has started, and keeps
    what each job raised."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(max_workers=4)
        self.gate = threading.Event()
        self.started = asyncio.Event()
        self.errors: list[BaseException] = []
        self._loop = loop

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def gated() -> Any:
            self._loop.call_soon_threadsafe(self.started.set)
            self.gate.wait()
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                self.errors.append(exc)
                raise

        return super().submit(gated)


@pytest.fixture
async def gated() -> AsyncIterator[GatedExecutor]:
    loop = asyncio.get_running_loop()
    executor = GatedExecutor(loop)
    loop.set_default_executor(executor)
    yield executor
    executor.gate.set()
    executor.shutdown(wait=True)


async def loop_turns(count: int = 5) -> None:
    """Let the loop run the callbacks queued by threads that have ended."""
    for _ in range(count):
        await asyncio.sleep(0)


async def content(spool: Spool) -> bytes:
    return b"".join([chunk async for chunk in spool.read()])


@pytest.mark.parametrize(
    "size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK, 9 * BLOCK + 7, 3 << 20]
)
async def test_what_was_appended_is_read_back_whole_and_the_file_removed(size: int) -> None:
    before = temporary_files()
    body = os.urandom(size)
    spool = Spool(BLOCK)
    for start in range(0, size, 100_003):  # chunks that straddle the blocks
        await spool.append(body[start : start + 100_003])
    first, second = await content(spool), await content(spool)
    await spool.close()
    assert hashlib.sha256(first).digest() == hashlib.sha256(body).digest()
    assert second == first
    assert temporary_files() == before


async def test_closing_waits_for_a_write_that_a_cancelled_request_left_running(
    gated: GatedExecutor,
) -> None:
    before = temporary_files()
    spool = Spool(BLOCK)
    appending = asyncio.create_task(spool.append(b"x" * (8 * BLOCK)))  # more than its buffers
    await gated.started.wait()  # a write has started in its thread
    appending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await appending
    closing = asyncio.create_task(spool.close())
    await asyncio.sleep(0)  # close() is under way while the write still holds the file
    gated.gate.set()
    await closing
    gated.shutdown(wait=True)  # whatever the threads still had to do is done
    assert gated.errors == []  # every write found its file and buffer open
    assert temporary_files() == before


async def test_closing_waits_for_a_read_that_a_cancelled_replay_left_running(
    gated: GatedExecutor,
) -> None:
    before = temporary_files()
    spool = Spool(BLOCK)
    gated.gate.set()
    await spool.append(b"r" * (3 * BLOCK))
    await content(spool)
    gated.gate.clear()
    gated.started.clear()
    reading = asyncio.create_task(content(spool))
    await gated.started.wait()  # a read has started in its thread
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    closing = asyncio.create_task(spool.close())
    await asyncio.sleep(0)
    gated.gate.set()
    await closing
    gated.shutdown(wait=True)  # whatever the threads still had to do is done
    assert gated.errors == []
    assert temporary_files() == before


async def test_a_spool_whose_close_is_cancelled_is_still_removed_when_its_writes_end(
    gated: GatedExecutor,
) -> None:
    before = temporary_files()
    spool = Spool(BLOCK)
    await spool.append(b"c" * (BLOCK + 1))  # a write handed to a thread
    await gated.started.wait()
    closing = asyncio.create_task(spool.close())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    gated.gate.set()
    gated.shutdown(wait=True)  # every job has ended, and its done callback is queued
    await loop_turns()
    assert gated.errors == []
    assert temporary_files() == before
