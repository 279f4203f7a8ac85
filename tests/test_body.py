"""The replay spool on its own: whole blocks written through the kernel's AIO or by worker
threads, read back in order; the file and buffers given back only once no write or read uses
them, whatever was cancelled; files kept for the next body, and freed when unused."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import mmap
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from proxy.body import Spool
from proxy.kernel_aio import KernelAio
from proxy.spool_files import SpoolFiles, bypass_page_cache
from tests.leaks import temporary_files, until

BLOCK = 64 * 1024

pytestmark = pytest.mark.uvloop_too


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


def kernel_aio_here() -> bool:
    """Whether spool files here are written through the kernel's AIO: it is offered, and the
    temporary directory's file system takes O_DIRECT."""
    aio = KernelAio.open(1)
    if aio is None:
        return False
    aio.close()
    with tempfile.TemporaryFile(buffering=0) as file:
        return bypass_page_cache(file.fileno())


@pytest.fixture(params=["kernel AIO", "threads"])
async def files(request: pytest.FixtureRequest) -> AsyncIterator[SpoolFiles]:
    """Spool files written each way; none kept, so that a closed spool's file is freed."""
    if request.param == "kernel AIO" and not kernel_aio_here():
        pytest.skip("no kernel AIO, or no O_DIRECT, here")
    spool_files = SpoolFiles(keep=0, kernel_aio=request.param == "kernel AIO")
    yield spool_files
    await spool_files.close()


@pytest.fixture
async def threads_only() -> AsyncIterator[SpoolFiles]:
    spool_files = SpoolFiles(keep=0, kernel_aio=False)
    yield spool_files
    await spool_files.close()


async def loop_turns(count: int = 5) -> None:
    """Let the loop run the callbacks queued by threads that have ended."""
    for _ in range(count):
        await asyncio.sleep(0)


async def cancelled_then_closed(
    task: asyncio.Task[Any], spool: Spool, gated: GatedExecutor
) -> None:
    """Cancel the request's `task` while its job waits at the gate, close the spool with the
    job still running, then let the job and every thread end."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    closing = asyncio.create_task(spool.close())
    await asyncio.sleep(0)  # close() is under way while the job still holds the file
    gated.gate.set()
    await closing
    gated.shutdown(wait=True)  # whatever the threads still had to do is done


async def content(spool: Spool) -> bytes:
    return b"".join([chunk async for chunk in spool.read()])


@pytest.mark.parametrize(
    "size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK, 9 * BLOCK + 7, 3 << 20]
)
async def test_what_was_appended_is_read_back_whole_and_the_file_removed(
    size: int, files: SpoolFiles
) -> None:
    before = temporary_files()
    body = os.urandom(size)
    spool = Spool(BLOCK, files)
    for start in range(0, size, 100_003):  # chunks that straddle the blocks
        await spool.append(body[start : start + 100_003])
    first, second = await content(spool), await content(spool)
    await spool.close()
    await files.close()  # waits for the thread that frees the file
    assert temporary_files() == before
    assert hashlib.sha256(first).digest() == hashlib.sha256(body).digest()
    assert second == first


async def test_closing_waits_for_a_write_that_a_cancelled_request_left_running(
    gated: GatedExecutor, threads_only: SpoolFiles
) -> None:
    before = temporary_files()
    spool = Spool(BLOCK, threads_only)
    appending = asyncio.create_task(spool.append(b"x" * (8 * BLOCK)))  # more than its buffers
    await gated.started.wait()  # a write has started in its thread
    await cancelled_then_closed(appending, spool, gated)
    assert gated.errors == []  # every write found its file and buffer open
    assert temporary_files() == before


async def test_closing_waits_for_a_read_that_a_cancelled_replay_left_running(
    gated: GatedExecutor, threads_only: SpoolFiles
) -> None:
    before = temporary_files()
    spool = Spool(BLOCK, threads_only)
    gated.gate.set()
    await spool.append(b"r" * (3 * BLOCK))
    await content(spool)
    gated.gate.clear()
    gated.started.clear()
    reading = asyncio.create_task(content(spool))
    await gated.started.wait()  # a read has started in its thread
    await cancelled_then_closed(reading, spool, gated)
    assert gated.errors == []
    assert temporary_files() == before


async def test_a_spool_whose_close_is_cancelled_is_still_removed_when_its_writes_end(
    gated: GatedExecutor, threads_only: SpoolFiles
) -> None:
    before = temporary_files()
    spool = Spool(BLOCK, threads_only)
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


async def spooled(files: SpoolFiles, body: bytes) -> bytes:
    """The body through a spool of its own, read back; the spool closed."""
    spool = Spool(BLOCK, files)
    try:
        for start in range(0, len(body), 100_003):
            await spool.append(body[start : start + 100_003])
        return await content(spool)
    finally:
        await spool.close()


@pytest.mark.parametrize("kernel_aio", [True, False], ids=["kernel AIO", "threads"])
async def test_a_kept_file_is_reused_and_only_the_new_body_is_read_from_it(
    kernel_aio: bool,
) -> None:
    before = temporary_files()
    files = SpoolFiles(keep=1, kernel_aio=kernel_aio)
    large, small = os.urandom(9 * BLOCK + 5), os.urandom(2 * BLOCK + 3)
    assert await spooled(files, large) == large
    kept = temporary_files()
    assert len(kept) == len(before) + 1 and files.kept == 1
    assert await spooled(files, small) == small  # the same file: the large body's rest unread
    assert temporary_files() == kept
    await files.close()
    assert temporary_files() == before


async def test_no_more_files_are_kept_than_asked_and_the_rest_are_freed() -> None:
    before = temporary_files()
    files = SpoolFiles(keep=2)
    spools = [Spool(BLOCK, files) for _ in range(4)]  # four bodies at once: four files
    for spool in spools:
        await spool.append(b"k" * (BLOCK + 1))
    assert len(temporary_files()) == len(before) + 4
    for spool in spools:
        await spool.close()
    await until(lambda: len(temporary_files()) == len(before) + 2)  # two freed by threads
    assert files.kept == 2
    await files.close()
    assert temporary_files() == before


async def test_a_kept_file_left_unused_is_freed() -> None:
    before = temporary_files()
    files = SpoolFiles(keep=4, idle=0.05)
    await spooled(files, b"i" * (3 * BLOCK))
    assert files.kept == 1
    await until(lambda: files.kept == 0 and temporary_files() == before)
    await files.close()


async def test_a_file_given_back_after_the_files_closed_is_freed_at_once() -> None:
    before = temporary_files()
    files = SpoolFiles(keep=4)
    spool = Spool(BLOCK, files)
    await spool.append(b"l" * (2 * BLOCK))
    await files.close()
    await spool.close()
    await files.close()  # waits for the thread that freed it
    assert files.kept == 0
    assert temporary_files() == before


async def test_blocks_are_written_without_a_thread_where_the_kernel_offers_aio(
    gated: GatedExecutor,
) -> None:
    if not kernel_aio_here():
        pytest.skip("no kernel AIO, or no O_DIRECT, here")
    files = SpoolFiles(keep=0)
    spool = Spool(BLOCK, files)
    body = os.urandom(12 * BLOCK + 1)  # four times the spool's buffers
    async with asyncio.timeout(10):  # a write left to a thread would wait at the gate
        await spool.append(body)  # with every worker thread held at the gate
    assert not gated.started.is_set()
    gated.gate.set()  # reading back is left to threads
    assert await content(spool) == body
    await spool.close()
    await files.close()


async def test_a_write_refused_past_the_page_cache_goes_through_it() -> None:
    """A file system may take O_DIRECT and refuse its writes (EINVAL): here an offset it cannot
    take. The block is written all the same, and the file's next writes skip O_DIRECT."""
    files = SpoolFiles(keep=0)
    spooled = files.take()
    if not spooled.direct or not refuses_unaligned(spooled.fd):
        files.give_back(spooled)
        await files.close()
        pytest.skip("no O_DIRECT here, or it takes unaligned writes")
    block = mmap.mmap(-1, BLOCK)
    block.write(b"d" * BLOCK)
    await files.write(spooled, block, 1)
    assert not spooled.direct
    assert os.pread(spooled.fd, BLOCK + 1, 0) == b"\0" + b"d" * BLOCK
    files.give_back(spooled)
    await files.close()


def refuses_unaligned(fd: int) -> bool:
    """Whether O_DIRECT refuses a write at an unaligned offset here, as ext4 and XFS do (some
    file systems quietly go through the page cache instead)."""
    block = mmap.mmap(-1, BLOCK)
    try:
        os.pwrite(fd, block, 1)
    except OSError as exc:
        return exc.errno == errno.EINVAL
    return False


async def test_a_request_cancelled_while_the_kernel_writes_gives_the_file_back_after() -> None:
    if not kernel_aio_here():
        pytest.skip("no kernel AIO, or no O_DIRECT, here")
    before = temporary_files()
    files = SpoolFiles(keep=0)
    spool = Spool(BLOCK, files)
    appending = asyncio.create_task(spool.append(os.urandom(40 * BLOCK)))
    await asyncio.sleep(0)  # under way: its first blocks are with the kernel
    appending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await appending
    await spool.close()  # waits for the kernel's writes, then gives the file back
    await files.close()
    assert temporary_files() == before
