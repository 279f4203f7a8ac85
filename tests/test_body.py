"""The captured request body on its own, fed by a real server's request stream: kept in memory
or in a temporary file, read back whole as often as asked, never a byte lost to a cancelled
reader, and the file freed when the body is closed."""

from __future__ import annotations

import asyncio
import io
import os
import resource
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.body import CapturedBody
from proxy.errors import BodyNotKept
from tests.leaks import temporary_files

pytestmark = pytest.mark.uvloop_too
Check = Callable[[CapturedBody], Awaitable[None]]


async def collect(payload: bytes | AsyncIterator[bytes]) -> bytes:
    if isinstance(payload, bytes):
        return payload
    return b"".join([chunk async for chunk in payload])


async def posted(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    body: bytes,
    check: Check,
    threshold: int = 64 * 1024,
    max_size: int = 1 << 30,
) -> None:
    """POST `body` to a server whose handler captures it and runs `check` on it."""
    failures: list[BaseException] = []

    async def handler(request: web.Request) -> web.Response:
        captured = CapturedBody(
            request.content, max_size=max_size, threshold=threshold, timeout=10.0
        )
        try:
            await check(captured)
        except BaseException as exc:
            failures.append(exc)
        finally:
            await captured.close()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", handler)
    server = await aiohttp_server(app)
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.make_url("/"), data=io.BytesIO(body)) as response,
    ):
        assert response.status == 200
    if failures:
        raise failures[0]


@pytest.mark.parametrize("size", [0, 1, 64 * 1024, 64 * 1024 + 1, 3 << 20])
async def test_body_is_read_back_whole_twice_and_its_file_freed(
    aiohttp_server: Callable[..., Awaitable[TestServer]], size: int
) -> None:
    body = os.urandom(size)
    before = temporary_files()

    async def check(captured: CapturedBody) -> None:
        assert await collect(captured.payload()) == body
        assert captured.complete and captured.size == size
        assert len(temporary_files()) == len(before) + (size > 64 * 1024)
        assert await collect(captured.payload()) == body  # the replay

    await posted(aiohttp_server, body, check)
    assert temporary_files() == before


async def test_two_payloads_at_once_each_get_every_byte(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    body = os.urandom(2 << 20)

    async def check(captured: CapturedBody) -> None:
        first = captured.payload()
        assert not isinstance(first, bytes)
        head = await anext(first)  # the first send has begun when the replay starts
        both = await asyncio.gather(collect(first), collect(captured.payload()))
        assert (head + both[0], both[1]) == (body, body)

    await posted(aiohttp_server, body, check, threshold=16 * 1024)


async def test_a_reader_cancelled_mid_body_loses_no_byte(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    body = os.urandom(4 << 20)

    async def check(captured: CapturedBody) -> None:
        reading = asyncio.ensure_future(collect(captured.payload()))
        while captured.size < 1 << 20:  # the abandoned first send read part of the body
            await asyncio.sleep(0)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert await collect(captured.payload()) == body

    await posted(aiohttp_server, body, check, threshold=16 * 1024)


async def test_closing_during_a_write_frees_the_file_once_the_write_ends(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    body = os.urandom(1 << 20)
    before = temporary_files()

    async def check(captured: CapturedBody) -> None:
        reading = asyncio.ensure_future(captured.read_all())
        while captured.size < 256 * 1024:
            await asyncio.sleep(0)
        reading.cancel()  # the request ends while a chunk may be on its way to the file
        with pytest.raises(asyncio.CancelledError):
            await reading

    await posted(aiohttp_server, body, check, threshold=16 * 1024)
    assert temporary_files() == before


async def test_a_body_over_the_maximum_is_refused_and_remembered(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    async def check(captured: CapturedBody) -> None:
        with pytest.raises(Exception, match="larger than the proxy's maximum") as error:
            await collect(captured.payload())
        assert captured.failure is error.value

    await posted(aiohttp_server, b"x" * 5000, check, threshold=100, max_size=1000)


async def test_a_replay_begun_while_the_last_chunk_is_on_its_way_to_the_file_gets_every_byte(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    body = os.urandom(100 * 1024)

    async def check(captured: CapturedBody) -> None:
        first = captured.payload()
        assert not isinstance(first, bytes)
        sent = b""
        while not captured.complete:  # the first send has every byte and has seen the end
            sent += await anext(first)
        # Its upstream may answer 401 now, while the last chunk is still being written.
        assert await collect(captured.payload()) == body
        assert sent + await collect(first) == body

    # Only the last byte goes over the threshold: the chunk that holds it starts the file.
    await posted(aiohttp_server, body, check, threshold=len(body) - 1)


async def test_a_body_the_disk_takes_only_in_part_is_sent_once_and_refused_for_a_replay(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    body = os.urandom(256 * 1024)

    async def check(captured: CapturedBody) -> None:
        # Files may not grow past the body's last byte: the write that holds it is taken only in
        # part (as on a disk nearly full), and a further write fails.
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(body) - 1, hard))
        try:
            assert await collect(captured.payload()) == body  # sent as it was read
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, ignored)
        assert isinstance(captured.failure, BodyNotKept)
        assert "File too large" in captured.failure.description
        with pytest.raises(BodyNotKept) as error:  # a replay is refused, rather than sent short
            await collect(captured.payload())
        assert error.value is captured.failure

    await posted(aiohttp_server, body, check, threshold=16 * 1024)
