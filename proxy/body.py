"""A request body kept for a replay as it passes from the client to the upstream (read once, sent
while it arrives): in memory up to a threshold, above it in an unnamed temporary file."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import IO, Any, TypeVar

from aiohttp import StreamReader

from proxy.errors import BodyNotKept, ClientTimeout, RequestTooLarge

T = TypeVar("T")
CHUNK = 256 * 1024
LARGEST_BYTES_PAYLOAD = 1 << 20  # aiohttp sends larger bytes in one write that holds the loop


class CapturedBody:
    """The client's body, read once. `payload()` gives it whole, as often as needed: what was
    kept so far, then the rest from the client, kept as it is sent. Two payloads may be
    iterated at once (a replay can start while an abandoned first send still holds one): reads
    from the client take turns, and each payload sends every byte kept, in order."""

    def __init__(
        self, stream: StreamReader, *, max_size: int, threshold: int, timeout: float
    ) -> None:
        self.size = 0  # bytes kept: in memory, or written to the file
        self.received = 0  # bytes read from the client
        self.failure: BaseException | None = None  # why reading or keeping the body failed
        self._stream: StreamReader | None = stream
        self._max_size = max_size
        self._timeout = timeout
        self._threshold = threshold
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        # The last chunk on its way to the file, and the one before it, if any.
        self._writing: asyncio.Future[None] | None = None
        self._previous: asyncio.Future[None] | None = None
        self._jobs: set[asyncio.Future[Any]] = set()  # worker threads using the file
        self._turn = asyncio.Lock()
        self._closing = False

    @property
    def complete(self) -> bool:
        """Read to its end from the client."""
        return self._stream is None

    async def read_all(self) -> None:
        async with self._turn:
            while self._stream is not None:
                await self._read()
            await self._written(self._writing)
            if self.failure is not None:  # not kept whole: nothing to send it from
                raise self.failure

    def payload(self) -> bytes | AsyncIterator[bytes]:
        """The body to send; may be called again for a replay, also before the body's end."""
        if isinstance(self.failure, BodyNotKept):  # a replay, which needs what was not kept
            raise self.failure
        # Whole in memory only if no chunk ever left for the file: until the file holds the
        # bytes kept so far it is not there, yet the chunk that starts it is not in memory.
        if self._stream is None and self._writing is None and self.size <= LARGEST_BYTES_PAYLOAD:
            return bytes(self._memory)
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        sent = 0
        while True:
            if sent < self.size:
                chunk = await self._kept(sent)
            else:
                async with self._turn:
                    if sent < self.received or self._stream is None:
                        # The last chunks read are on their way to the file.
                        await self._written(self._writing)
                        if sent < self.size:
                            continue
                        if sent < self.received and self.failure is not None:
                            raise self.failure  # bytes this send needs were never kept
                        return
                    # Sent as it was read, while a worker thread writes it to the file.
                    chunk = await self._read()
            sent += len(chunk)
            yield chunk

    async def _kept(self, offset: int) -> bytes:
        if self._file is None:
            return bytes(self._memory[offset : offset + CHUNK])
        size = min(CHUNK, self.size - offset)  # not into a chunk still being written
        return await self._in_thread(os.pread, self._file.fileno(), size, offset)

    async def _written(self, writing: asyncio.Future[None] | None) -> None:
        """Wait for the write of `writing` (and those before it), if any. From a write the disk
        refuses on, the body is not kept: it still goes upstream as it is read, but a send that
        needs it kept (a replay) fails with `failure`."""
        if writing is not None:
            try:
                await asyncio.shield(writing)
            except OSError as exc:  # a full disk, a file size limit, no usable TMPDIR
                if self.failure is None:
                    self.failure = BodyNotKept(
                        "the proxy could not keep the request body for a replay"
                        f" ({exc.strerror or exc}); check the space and permissions where its"
                        " TMPDIR points"
                    )
            except Exception as exc:
                self.failure = exc
                raise

    async def _read(self) -> bytes:
        """The client's next bytes (b"" at the end): in memory, or on their way to the file."""
        assert self._stream is not None
        # The chunk read before the last one is on the disk before the next is read: the last
        # one is written while the next is read and sent, and no more than two wait in memory.
        await self._written(self._previous)
        try:
            async with asyncio.timeout(self._timeout):
                chunk = await self._stream.read(CHUNK)
            if self.received + len(chunk) > self._max_size:
                raise RequestTooLarge(too_large_description(self._max_size))
        except TimeoutError:
            self.failure = ClientTimeout(
                f"the client sent no byte of its request body for {self._timeout:g} s"
                " (--client-timeout); send the body without pauses, or raise the timeout"
            )
            raise self.failure from None
        except Exception as exc:  # too large, or a client gone: told once
            self.failure = exc
            raise
        self.received += len(chunk)
        if not chunk:
            self._stream = None
        elif self._file is None and self.received <= self._threshold:
            self._memory += chunk
            self.size += len(chunk)
        else:  # at once, with no await between: a cancelled reader loses no byte
            self._previous = self._writing
            self._writing = asyncio.ensure_future(self._spool(chunk, self._previous))
            # A failed write is told to whoever waits for it; one that nobody waited for (the
            # request over) is no error.
            self._writing.add_done_callback(_retrieved)
        return chunk

    async def _spool(self, chunk: bytes, previous: asyncio.Future[None] | None) -> None:
        """Write the chunk to the file from a worker thread, after the chunks before it; only
        then does it count as kept."""
        if previous is not None:
            await asyncio.shield(previous)
        if self._closing:
            return
        if self._file is None:
            file = tempfile.TemporaryFile(buffering=0)  # noqa: SIM115 - closed by close()
            try:
                await self._in_thread(_write_all, file, bytes(self._memory))
            except BaseException:
                file.close()
                raise
            # Only now: until the file holds them, the bytes kept so far are read from memory.
            self._file, self._memory = file, bytearray()
            self._close_if_unused()
            if self._file is None:  # closed while it was being made
                return
        await self._in_thread(_write_all, self._file, chunk)
        self.size += len(chunk)

    def _in_thread(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        job = asyncio.get_running_loop().run_in_executor(None, function, *args)
        self._jobs.add(job)
        job.add_done_callback(self._job_ended)
        return job

    def _job_ended(self, job: asyncio.Future[Any]) -> None:
        self._jobs.discard(job)
        self._close_if_unused()

    async def close(self) -> None:
        """Free the memory and the file (its bytes gone from disk) once no thread uses it."""
        self._memory = bytearray()
        self._closing = True
        if self._jobs:
            await asyncio.wait(set(self._jobs))  # if cancelled, the last job closes the file
        self._close_if_unused()

    def _close_if_unused(self) -> None:
        if self._closing and not self._jobs and self._file is not None:
            file, self._file = self._file, None
            file.close()


def _write_all(file: IO[bytes], data: bytes) -> None:
    """Write every byte: an unbuffered file may take part of a write (a disk nearly full), and
    the next write then fails with the reason."""
    view = memoryview(data)
    while view:
        view = view[file.write(view) :]


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def too_large_description(max_size: int) -> str:
    return (
        f"the request body is larger than the proxy's maximum of {max_size} bytes;"
        " send less or raise --max-body-size"
    )
