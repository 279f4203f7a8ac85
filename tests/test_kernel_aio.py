"""Writes through the kernel's own AIO, checked against the file's bytes."""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Iterator

import pytest

from proxy.kernel_aio import KernelAio
from proxy.spool_files import address_of, bypass_page_cache

BLOCK = 64 * 1024


@pytest.fixture
def direct_file() -> Iterator[int]:
    with tempfile.TemporaryFile(buffering=0) as file:
        if not bypass_page_cache(file.fileno()):
            pytest.skip("no O_DIRECT on this file system")
        os.ftruncate(file.fileno(), 4 * BLOCK)  # writes that do not lengthen the file
        yield file.fileno()


def opened() -> KernelAio:
    aio = KernelAio.open(8)
    if aio is None:
        pytest.skip("no kernel AIO on this system")
    return aio


def filled(byte: bytes) -> mmap.mmap:
    block = mmap.mmap(-1, BLOCK)
    block.write(byte * BLOCK)
    return block


def contents(fd: int) -> bytes:
    """The file's first four blocks, read into aligned memory as O_DIRECT wants."""
    buffer = mmap.mmap(-1, 4 * BLOCK)
    assert os.preadv(fd, [buffer], 0) == 4 * BLOCK
    return buffer[:]


async def test_writes_end_with_their_count_and_land_where_asked(direct_file: int) -> None:
    aio = opened()
    blocks = [filled(b"a"), filled(b"b")]
    first = aio.write(direct_file, address_of(blocks[0]), BLOCK, 2 * BLOCK)
    second = aio.write(direct_file, address_of(blocks[1]), BLOCK, 0)
    assert (await first, await second) == (BLOCK, BLOCK)
    aio.close()
    assert contents(direct_file) == b"b" * BLOCK + bytes(BLOCK) + b"a" * BLOCK + bytes(BLOCK)


async def test_closing_waits_for_the_writes_in_flight_and_settles_them(direct_file: int) -> None:
    aio = opened()
    blocks = [filled(bytes([65 + n])) for n in range(4)]
    writes = [
        aio.write(direct_file, address_of(block), BLOCK, n * BLOCK)
        for n, block in enumerate(blocks)
    ]
    aio.close()  # at once, before the loop has seen any write end
    assert [write.result() for write in writes] == [BLOCK] * 4
    assert contents(direct_file) == b"".join(bytes([65 + n]) * BLOCK for n in range(4))


async def test_a_write_the_kernel_refuses_fails_with_its_reason(direct_file: int) -> None:
    aio = opened()
    block = filled(b"u")
    unaligned = aio.write(direct_file, address_of(block) + 1, BLOCK - 1, 0)  # O_DIRECT refuses it
    with pytest.raises(OSError) as refused:
        await unaligned
    aio.close()
    assert refused.value.errno == 22  # EINVAL
