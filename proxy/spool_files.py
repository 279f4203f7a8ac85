"""The unnamed temporary files that large request bodies are spooled to: kept for the next body
rather than freed at once, and written without threads where the system allows.

Freeing a large file is not free: ext4 takes 0.1 s a GiB, and where the file system is mounted
with `discard` the disk then trims the blocks, and the next body's writes wait behind the trim
(on the benchmark machine an upload that followed another ran 20% slower). So a file given back
is kept, up to KEEP of them, and the next body overwrites its blocks in place; a kept file left
unused for IDLE seconds is freed by a worker thread. A spool reads back only the blocks it wrote
itself, never what an earlier body left beyond them.

Writes go through the kernel's own asynchronous I/O (proxy.kernel_aio) where the file takes
O_DIRECT: with a worker thread per block, the hand-offs and the threads' waits for the GIL cost
the benchmark's uploads 9,500 context switches and 0.1 s of CPU a GiB. Elsewhere, and for any
write the kernel will not start, a worker thread writes the block."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import tempfile
from dataclasses import dataclass
from typing import IO, Any

from proxy.kernel_aio import KernelAio

KEEP = 4  # files kept for the next bodies
IDLE = 30.0  # seconds a kept file waits for a body before it is freed
GROWTH = 64 << 20  # the file is lengthened ahead of the writes by this much
DEPTH = 64  # writes in flight at once through the kernel at least; beyond what it takes, threads


@dataclass(eq=False)
class SpoolFile:
    """One unnamed temporary file, lent to one spool at a time."""

    file: IO[bytes]
    direct: bool  # written past the page cache (O_DIRECT)
    size: int = 0  # the file's length: writes below it do not lengthen the file
    idle_since: float = 0.0

    @property
    def fd(self) -> int:
        return self.file.fileno()


class SpoolFiles:
    """The spool files of one event loop (the application's), and the way they are written."""

    def __init__(self, *, keep: int = KEEP, idle: float = IDLE, kernel_aio: bool = True) -> None:
        self._keep = keep
        self._idle = idle
        self._kept: list[SpoolFile] = []  # the most recently given back last
        self._freeing: set[asyncio.Future[None]] = set()
        self._expiry: asyncio.TimerHandle | None = None
        self._aio: KernelAio | None = None
        self._try_aio = kernel_aio
        self._closed = False

    @property
    def kept(self) -> int:
        return len(self._kept)

    def take(self) -> SpoolFile:
        if self._kept:
            return self._kept.pop()
        file = tempfile.TemporaryFile(buffering=0)  # noqa: SIM115 - freed by give_back()
        return SpoolFile(file, direct=bypass_page_cache(file.fileno()))

    def give_back(self, spooled: SpoolFile) -> None:
        """The file is free for the next body: kept, or freed if enough are kept."""
        if self._closed or len(self._kept) >= self._keep:
            self._free(spooled)
            return
        loop = asyncio.get_running_loop()
        spooled.idle_since = loop.time()
        self._kept.append(spooled)
        if self._expiry is None:
            self._expiry = loop.call_later(self._idle, self._expire)

    def write(self, spooled: SpoolFile, block: mmap.mmap, offset: int) -> asyncio.Future[Any]:
        """Start writing the whole block at offset; the future ends when the block is free
        again. `block` is not to change nor close until then."""
        loop = asyncio.get_running_loop()
        end = offset + len(block)
        aio = self._kernel_aio() if spooled.direct else None
        if aio is not None:
            try:
                if end > spooled.size:  # a write that lengthens the file would wait for the disk
                    length = max(end, spooled.size + GROWTH)
                    os.ftruncate(spooled.fd, length)
                    spooled.size = length
                started = aio.write(spooled.fd, address_of(block), len(block), offset)
            except OSError:
                pass  # the kernel will not start it (too many in flight): a thread writes it
            else:
                written: asyncio.Future[None] = loop.create_future()
                started.add_done_callback(
                    lambda ended: self._ended(ended, written, spooled, block, offset)
                )
                return written
        spooled.size = max(spooled.size, end)
        return loop.run_in_executor(None, _write_block, spooled, block, offset)

    async def close(self) -> None:
        """Free the kept files and end the kernel's writes; a file given back later is freed
        at once."""
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        kept, self._kept = self._kept, []
        for spooled in kept:
            self._free(spooled)
        if self._aio is not None:
            self._aio.close()
            self._aio = None  # any later write goes to a thread
        self._try_aio = False
        if self._freeing:
            await asyncio.wait(set(self._freeing))

    def _ended(
        self,
        started: asyncio.Future[int],
        written: asyncio.Future[None],
        spooled: SpoolFile,
        block: mmap.mmap,
        offset: int,
    ) -> None:
        if started.cancelled():
            written.cancel()
            return
        error = started.exception()
        if isinstance(error, OSError) and error.errno == errno.EINVAL:
            # The file system took O_DIRECT but refuses its writes: a thread writes the block
            # through the page cache, and so are the next ones.
            spooled.direct = False
            try:
                again = asyncio.get_running_loop().run_in_executor(
                    None, _write_block, spooled, block, offset
                )
            except RuntimeError as exc:  # the loop's executor is shut down: the process ends
                _settle(written, exc)
                return
            again.add_done_callback(lambda ended: _settle_as(written, ended))
            return
        if error is None and started.result() != len(block):
            error = OSError(errno.ENOSPC, "the request body's temporary file could not be written")
        _settle(written, error)

    def _kernel_aio(self) -> KernelAio | None:
        if self._try_aio:
            self._try_aio = False
            self._aio = KernelAio.open(DEPTH)
        return self._aio

    def _expire(self) -> None:
        """Free the files kept unused for IDLE seconds; look again when the next one would be."""
        self._expiry = None
        now = asyncio.get_running_loop().time()
        for spooled in [kept for kept in self._kept if now - kept.idle_since >= self._idle]:
            self._kept.remove(spooled)
            self._free(spooled)
        if self._kept:
            wait = self._kept[0].idle_since + self._idle - now
            self._expiry = asyncio.get_running_loop().call_later(wait, self._expire)

    def _free(self, spooled: SpoolFile) -> None:
        """Close the file; its blocks are freed by a worker thread, the loop going on."""
        try:
            freeing = asyncio.get_running_loop().run_in_executor(None, spooled.file.close)
        except RuntimeError:  # the loop's executor is shut down: the process is ending
            spooled.file.close()
            return
        self._freeing.add(freeing)
        freeing.add_done_callback(self._freeing.discard)


def _settle_as(written: asyncio.Future[None], ended: asyncio.Future[Any]) -> None:
    if ended.cancelled():
        written.cancel()
    else:
        _settle(written, ended.exception())


def _settle(written: asyncio.Future[None], error: BaseException | None) -> None:
    if written.done():
        return
    if error is None:
        written.set_result(None)
    else:
        written.set_exception(error)


def address_of(block: mmap.mmap) -> int:
    """Where the block's memory starts, for the kernel to write from."""
    return ctypes.addressof(ctypes.c_char.from_buffer(block))


def bypass_page_cache(fd: int) -> bool:
    """Turn on O_DIRECT for the file; whether the file system took it."""
    with contextlib.suppress(OSError, AttributeError):  # not on this file system, or system
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
        return True
    return False


def _write_block(spooled: SpoolFile, block: mmap.mmap, offset: int) -> None:
    """In a worker thread."""
    fd = spooled.fd
    try:
        written = os.pwrite(fd, block, offset)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        # The file system took O_DIRECT but refuses its writes: write through the page cache.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        spooled.direct = False
        written = os.pwrite(fd, block, offset)
    if written != len(block):
        raise OSError(errno.ENOSPC, "the request body's temporary file could not be written")
