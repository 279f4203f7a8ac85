"""A byte-level HTTP/1.1 upstream and client for tests: records exactly what arrives on the wire
and answers with exactly the bytes a test scripts."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Received:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body_sha256: str
    body_size: int
    body: bytes = field(repr=False)

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def names(self) -> list[str]:
        return [k.lower() for k, _ in self.headers]


Writer = asyncio.StreamWriter
Responder = Callable[[Received, Writer], Awaitable[None]]


def response_bytes(
    status: int = 200,
    body: bytes = b'{"ok": true}',
    headers: list[tuple[str, str]] | None = None,
    reason: str = "OK",
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    all_headers = list(headers or [("Content-Type", "application/json")])
    if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in all_headers):
        all_headers.append(("Content-Length", str(len(body))))
    lines += [f"{k}: {v}" for k, v in all_headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def reply(
    status: int = 200, body: bytes = b'{"ok": true}', headers: list[tuple[str, str]] | None = None
) -> Responder:
    data = response_bytes(status, body, headers)

    async def respond(_: Received, writer: Writer) -> None:
        writer.write(data)
        await writer.drain()

    return respond


async def read_head(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return lines[0], headers


async def read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    lookup = {k.lower(): v for k, v in headers}
    if lookup.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    return await reader.readexactly(int(lookup.get("content-length", "0")))


class LoopbackServer:
    """A TCP server on 127.0.0.1 that serves one HTTP/1.1 exchange after another on each
    connection until the peer goes away; `close` also cuts the open connections."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[Writer] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.transport.abort()
            for task in self._tasks:  # an exchange that never ends on its own (a hanging answer)
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                request_line, headers = await read_head(reader)
                if not await self.exchange(request_line, headers, reader, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()

    async def exchange(
        self,
        request_line: str,
        headers: list[tuple[str, str]],
        reader: asyncio.StreamReader,
        writer: Writer,
    ) -> bool:
        """Answer one request; False ends the connection."""
        raise NotImplementedError


class AnswersAtOnce(LoopbackServer):
    """Answers each request as soon as its head is in, without waiting for its body: with
    `answer`'s bytes, by closing the connection (b""), or, with None, not at all until the peer
    hangs up."""

    def __init__(self, answer: bytes | None) -> None:
        super().__init__()
        self.answer = answer
        self.head_arrived = asyncio.Event()

    async def exchange(
        self,
        request_line: str,
        headers: list[tuple[str, str]],
        reader: asyncio.StreamReader,
        writer: Writer,
    ) -> bool:
        self.head_arrived.set()
        if self.answer == b"":
            return False  # closes the connection without a word
        if self.answer is not None:
            writer.write(self.answer)
            await writer.drain()
        await reader.read()  # until the proxy lets the connection go
        return False


class RawUpstream(LoopbackServer):
    """Records each request; `responder` decides the answer (default: 200 JSON)."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Received] = []
        self.responder: Responder = reply()
        self.head_arrived = asyncio.Event()  # a request's head, before its body is read
        self.arrived = asyncio.Event()

    async def exchange(
        self,
        request_line: str,
        headers: list[tuple[str, str]],
        reader: asyncio.StreamReader,
        writer: Writer,
    ) -> bool:
        self.head_arrived.set()
        body = await read_body(reader, headers)
        method, target, version = request_line.split(" ", 2)
        digest = hashlib.sha256(body).hexdigest()
        received = Received(method, target, version, headers, digest, len(body), body)
        self.received.append(received)
        self.arrived.set()
        await self.responder(received, writer)
        return True


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


async def raw_request(port: int, data: bytes, *, head: bool = False) -> RawResponse:
    """Send exact bytes to 127.0.0.1:port and read one response (the connection then closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        status_line, headers = await read_head(reader)
        status = int(status_line.split(" ")[1])
        no_body = head or status in (204, 304) or 100 <= status < 200
        body = b"" if no_body else await _read_response_body(reader, headers)
        return RawResponse(status, headers, body)
    finally:
        writer.close()


async def _read_response_body(
    reader: asyncio.StreamReader, headers: list[tuple[str, str]]
) -> bytes:
    names = {k.lower() for k, _ in headers}
    if "content-length" in names or "transfer-encoding" in names:
        return await read_body(reader, headers)
    return await reader.read()
