"""A request body read once from the client and kept for a replay: in memory up to a threshold,
in an unnamed temporary file above it (removed by the system as soon as it is closed)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from typing import BinaryIO

from aiohttp import StreamReader

from proxy.errors import RequestTooLarge

CHUNK = 256 * 1024
# A body kept in memory above 1 MiB is sent part by part, never joined into one more copy.
LARGEST_BYTES_PAYLOAD = 1 << 20


class CapturedBody:
    def __init__(self) -> None:
        self.size = 0
        self._parts: list[bytes] = []
        self._file: BinaryIO | None = None

    @classmethod
    async def capture(cls, stream: StreamReader, *, max_size: int, threshold: int) -> CapturedBody:
        body = cls()
        try:
            async for chunk in stream.iter_chunked(CHUNK):
                body._append(chunk, max_size, threshold)
        except BaseException:
            body.close()
            raise
        return body

    def _append(self, chunk: bytes, max_size: int, threshold: int) -> None:
        self.size += len(chunk)
        if self.size > max_size:
            raise RequestTooLarge(too_large_description(max_size))
        if self._file is None and self.size > threshold:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the body
            for part in self._parts:
                self._file.write(part)
            self._parts = []
        if self._file is not None:
            self._file.write(chunk)
        else:
            self._parts.append(chunk)

    @property
    def spooled(self) -> bool:
        return self._file is not None

    def payload(self) -> bytes | AsyncIterator[bytes]:
        """The body to send; may be called again for a replay."""
        if self._file is None:
            if self.size > LARGEST_BYTES_PAYLOAD:
                return self._iterate_parts()
            return b"".join(self._parts) if len(self._parts) != 1 else self._parts[0]
        self._file.flush()
        return self._read_file(self._file.fileno())

    async def _iterate_parts(self) -> AsyncIterator[bytes]:
        for part in self._parts:
            yield part

    async def _read_file(self, fd: int) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        offset = 0
        while offset < self.size:
            chunk = await loop.run_in_executor(None, os.pread, fd, CHUNK, offset)
            if not chunk:
                break
            offset += len(chunk)
            yield chunk

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._parts = []


def too_large_description(max_size: int) -> str:
    return (
        f"the request body is larger than the proxy's maximum of {max_size} bytes;"
        " send less or raise --max-body-size"
    )
