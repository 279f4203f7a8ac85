"""Writes through the kernel's own AIO, checked against the file's bytes."""

from __future__ import annotations

import errno
import mmap
import os
import tempfile
from collections.abc import AsyncIterator, Iterator

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


pytestmark = pytest.mark.uvloop_too


@pytest.fixture
async def aio() -> AsyncIterator[KernelAio]:
    opened = KernelAio.open(8)
    if opened is None:
        pytest.skip("no kernel AIO on this system")
    try:
        yield opened
    finally:
        opened.close()


def filled(byte: bytes) -> mmap.mmap:
    block = mmap.mmap(-1, BLOCK)
    block.write(byte * BLOCK)
    return block


def refuses_unaligned(fd: int) -> bool:
    """Whether O_DIRECT here refuses a write from an unaligned address (ext4 and XFS do; some
    file systems quietly go through the page cache instead)."""
    block = filled(b"p")
    try:
        os.pwrite(fd, memoryview(block)[1:], 0)
    except OSError as exc:
        return exc.errno == errno.EINVAL
    return False


def contents(fd: int) -> bytes:
    """The file's first four blocks, read into aligned memory as O_DIRECT wants."""
    buffer = mmap.mmap(-1, 4 * BLOCK)
    assert os.preadv(fd, [buffer], 0) == 4 * BLOCK
    return buffer[:]


async def test_writes_end_with_their_count_and_land_where_asked(
    direct_file: int, aio: KernelAio
) -> None:
    blocks = [filled(b"a"), filled(b"b")]
    first = aio.write(direct_file, address_of(blocks[0]), BLOCK, 2 * BLOCK)
    second = aio.write(direct_file, address_of(blocks[1]), BLOCK, 0)
    assert (await first, await second) == (BLOCK, BLOCK)
    assert contents(direct_file) == b"b" * BLOCK + bytes(BLOCK) + b"a" * BLOCK + bytes(BLOCK)


async def test_closing_waits_for_the_writes_in_flight_and_settles_them(
    direct_file: int, aio: KernelAio
) -> None:
    blocks = [filled(bytes([65 + n])) for n in range(4)]
    writes = [
        aio.write(direct_file, address_of(block), BLOCK, n * BLOCK)
        for n, block in enumerate(blocks)
    ]
    aio.close()  # at once, before the loop has seen any write end
    assert [write.result() for write in writes] == [BLOCK] * 4
    assert contents(direct_file) == b"".join(bytes([65 + n]) * BLOCK for n in range(4))


async def test_a_write_the_kernel_refuses_fails_with_its_reason(
    direct_file: int, aio: KernelAio
) -> None:
    if not refuses_unaligned(direct_file):
        pytest.skip("this file system takes unaligned O_DIRECT writes")
    block = filled(b"u")
    unaligned = aio.write(direct_file, address_of(block) + 1, BLOCK - 1, 0)  # O_DIRECT refuses it
    with pytest.raises(OSError) as refused:
        await unaligned
    assert refused.value.errno == errno.EINVAL
