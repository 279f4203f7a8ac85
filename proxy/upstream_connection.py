"""One HTTP/1.1 connection to the upstream, one exchange at a time: the request written as
given, the answer parsed by httptools (llhttp), its body streamed with flow control both ways, and
a check, run by the pool, for an upstream gone quiet. The pool is proxy.upstream_client's.

    ClientError          what went wrong                                   the proxy answers
    ├── UpstreamClosed   no connection (refused, DNS, TLS, egress proxy),  502
    │                    or closed before any byte of the answer
    ├── BadResponse      the answer is not HTTP/1.1                        502
    ├── ResponseTimeout  no connection, or no answer, within the timeout   504
    └── BodyBrokeOff     the body stopped before its end                   abort (small: 502)
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol, cast

import httptools
from multidict import CIMultiDict

HIGH_WATER, LOW_WATER = 256 * 1024, 64 * 1024  # buffered body bytes: stop, resume reading
ONE_WRITE = 64 * 1024  # a body up to this size leaves in the same write as the head
MAX_HEADERS, MAX_FIELD = 128, 8190
Body = bytes | AsyncIterator[bytes]
_NO_HEADERS: CIMultiDict[str] = CIMultiDict()


class Pool(Protocol):
    """What a connection needs of its pool (proxy.upstream_client.UpstreamClient)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def timeout(self) -> float: ...  # no answer, or no byte of it, for this long

    @property
    def connections(self) -> set[Connection]: ...  # the open ones

    def park(self, connection: Connection) -> None: ...  # idle again, for another exchange


class ClientError(Exception):
    """An exchange with the upstream failed."""


class UpstreamClosed(ClientError):
    retryable = False  # set when nothing of the answer arrived: a reused connection had closed


class BadResponse(ClientError):
    """The answer is not valid HTTP/1.1."""


class ResponseTimeout(ClientError, TimeoutError):
    """No connection, or no byte of the answer, within the timeout."""


class BodyBrokeOff(ClientError):
    """The answer's body stopped before its end."""


class Response:
    """One answer: status, reason, headers, and its body by readany() / read(). release() (or
    leaving `async with`) lets it go: the connection is pooled if the body had ended, else closed.
    """

    def __init__(self, connection: Connection) -> None:
        self.status, self.reason = 0, ""
        self.headers: CIMultiDict[str] = _NO_HEADERS  # until the answer's arrive
        self._connection = connection
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._complete, self._released = False, False
        self._error: BodyBrokeOff | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    async def readany(self) -> bytes:
        """The next bytes of the body, b"" at its end; BodyBrokeOff if it stopped before."""
        while not self._chunks:
            if self._error is not None:
                raise BodyBrokeOff(*self._error.args)
            if self._complete:
                return b""
            self._waiter = self._connection.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._size <= LOW_WATER:
            self._connection.resume_reading()
        return chunk

    async def read(self) -> bytes:
        """The rest of the body."""
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._connection.release(self)

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release()

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER:
            self._connection.pause_reading()
        self._wake()

    def finish(self, error: BodyBrokeOff | None = None) -> None:
        self._complete, self._error = error is None, error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Connection(asyncio.Protocol):
    """One keep-alive connection, one exchange at a time; its parser calls the on_* methods."""

    _transport: asyncio.Transport

    def __init__(self, pool: Pool) -> None:
        self.loop, self._pool = pool.loop, pool
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._response: Response | None = None  # the answer being received
        self._answer: asyncio.Future[Response] | None = None  # ... until its headers are in
        self._head_only = self._received = self._reusable = self._until_eof = False
        self._informational = self._reading_paused = self._writing_paused = False
        self._awaiting_body = False
        self.reused = False  # taken from the pool for a second or later exchange
        self._reason = b""
        self._headers: list[tuple[str, str]] = []
        self._last_progress = 0.0
        self._drained: asyncio.Future[None] | None = None

    @property
    def usable(self) -> bool:
        return not self.lost.done() and not self._transport.is_closing()

    async def exchange(self, head: bytes, body: Body | None, head_only: bool) -> Response:
        if not self.usable:
            raise _retryable(UpstreamClosed("the pooled connection had closed"))
        if self._head_only:  # llhttp cannot be told an answer to HEAD has no body: start afresh
            self._parser = httptools.HttpResponseParser(self)
        self._response = Response(self)
        self._answer = answer = cast("asyncio.Future[Response]", self.loop.create_future())
        self._head_only, self._received, self._reusable = head_only, False, True
        self._until_eof = False
        self._last_progress = self.loop.time()
        try:
            if body is None:
                self._transport.write(head)
            elif isinstance(body, bytes) and len(body) <= ONE_WRITE:
                self._transport.write(head + body)
            elif isinstance(body, bytes):
                self._transport.write(head)
                self._transport.write(body)
            else:
                self._transport.write(head)
                await self._send_body(body, answer)
            return await answer
        except BaseException:
            if answer.done() and not answer.cancelled():
                answer.exception()  # seen: the exchange failed on its other side first
            answer.cancel()  # nobody waits for it any more
            self.abort()
            raise

    async def _send_body(
        self, chunks: AsyncIterator[bytes], answer: asyncio.Future[Response]
    ) -> None:
        """Write the body while it arrives, until it ends or the upstream answers. An answer that
        comes while the client is still sending goes back at once: the client may be waiting for
        it. Only a 401, or a reused connection found closed (retried on a fresh one), waits for
        the client's next chunk, so that the body is kept whole for the second try."""
        writing = self.loop.create_task(self._write_chunks(chunks, answer))
        try:
            await asyncio.wait((writing, answer), return_when=asyncio.FIRST_COMPLETED)
            if not writing.done() and not self._sent_again(answer):
                self._reusable = False
                writing.cancel()  # the rest of the body would go to nobody
            await asyncio.wait((writing,))  # a cancelled exchange is not the writing's to catch
            if not writing.cancelled():
                writing.result()  # the client's failure, if it failed
        finally:
            if not writing.done():
                writing.cancel()
                await asyncio.wait((writing,))
            if not writing.cancelled():
                writing.exception()  # seen, whichever way this ended

    def _sent_again(self, answer: asyncio.Future[Response]) -> bool:
        """Whether the request will be sent once more, with the client's whole body: a replay
        after a 401, or a retry on a fresh connection after this reused one was found closed."""
        if answer.cancelled():
            return False
        error = answer.exception()
        if error is None:
            return answer.result().status == 401
        return self.reused and isinstance(error, UpstreamClosed) and error.retryable

    async def _write_chunks(
        self, chunks: AsyncIterator[bytes], answer: asyncio.Future[Response]
    ) -> None:
        # While the next chunk is awaited from the client, the upstream is not the slow one.
        self._awaiting_body = True
        try:
            async for chunk in chunks:
                self._awaiting_body, self._last_progress = False, self.loop.time()
                if answer.done():  # answered, or failed, before the whole body was sent
                    self._reusable = False
                    return
                self._transport.write(chunk)
                if self._writing_paused:
                    self._drained = self.loop.create_future()
                    await self._drained
                self._awaiting_body = True
        finally:
            self._awaiting_body, self._last_progress = False, self.loop.time()
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()

    def release(self, response: Response) -> None:
        if self._response is response or not self._reusable or not self.usable:
            self.abort()  # the body was not received to its end, or the server will close
        else:
            self.resume_reading()
            self._pool.park(self)

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._pool.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._response is None:  # bytes nobody asked for: the connection cannot be trusted
            self.abort()
            return
        self._received, self._last_progress = True, self.loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # 101: nothing that could follow is ours to read
            self._complete(keep_alive=False)
        except httptools.HttpParserError as exc:
            own = exc.__context__  # an on_* method's own error, if one raised
            self._break(own if isinstance(own, ClientError) else BadResponse(str(exc)))

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool.connections.discard(self)
        self.lost.set_result(None)
        if self._answer is not None and not self._answer.done():
            closed = UpstreamClosed("the API closed the connection before answering")
            closed.__cause__ = exc
            self._break(closed if self._received else _retryable(closed))
        elif self._response is not None and self._until_eof and exc is None:
            self._complete(keep_alive=False)  # an answer without length ends here
        elif self._response is not None:
            self._break(BodyBrokeOff("the API closed the connection before the end of the body"))
        self._wake_writer()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused, self._last_progress = False, self.loop.time()
        self._wake_writer()

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        self._reason, self._headers = b"", []

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._headers) >= MAX_HEADERS or len(name) + len(value) > MAX_FIELD:
            raise BadResponse("the answer has too many or too large headers")
        value = value.rstrip(b" \t")  # llhttp strips the whitespace before a value, not after
        self._headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        self._informational = 100 <= status < 200 and status != 101
        response, answer = self._response, self._answer
        if self._informational or response is None or answer is None or answer.done():
            return  # 1xx such as 103 Early Hints come before the answer: skipped
        response.status, response.reason = status, self._reason.decode("utf-8", "surrogateescape")
        response.headers = headers = CIMultiDict(self._headers)
        self._reusable = self._reusable and self._parser.should_keep_alive()
        coding = headers.get("Transfer-Encoding", "").lower()
        self._until_eof = "Content-Length" not in headers and not coding.endswith("chunked")
        self._wake_writer()
        answer.set_result(response)
        if self._head_only:
            self._complete(keep_alive=True)

    def on_body(self, body: bytes) -> None:
        if self._response is None:  # more than the answer to a HEAD
            self._reusable = False
        else:
            self._response.feed(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
        elif self._response is not None:
            self._complete(keep_alive=True)

    # ---- the end of an exchange ----

    def _complete(self, *, keep_alive: bool) -> None:
        response, self._response = self._response, None
        self._reusable = self._reusable and keep_alive
        if response is not None:
            response.finish()

    def _break(self, error: ClientError) -> None:
        """End the exchange in progress with `error` and drop the connection."""
        response, self._response = self._response, None
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)
        elif response is not None:
            response.finish(error if isinstance(error, BodyBrokeOff) else BodyBrokeOff(str(error)))
        self._wake_writer()
        self.abort()

    def check_progress(self, now: float) -> None:
        """Called by the pool every so often: fail an exchange gone quiet for the timeout."""
        timeout = self._pool.timeout
        if (
            self._response is None
            or self._reading_paused
            or self._awaiting_body
            or now - self._last_progress < timeout
        ):
            return  # idle, or our own client is the slow one, or not yet
        if self._answer is not None and not self._answer.done():
            self._break(ResponseTimeout(f"no answer within {timeout:g} s"))
        else:
            self._break(BodyBrokeOff(f"no byte of the body for {timeout:g} s"))

    def _wake_writer(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_reading(self) -> None:
        if not self._reading_paused and self.usable:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.usable:
            self._reading_paused, self._last_progress = False, self.loop.time()
            self._transport.resume_reading()

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        transport = await self.loop.start_tls(
            self._transport, self, context, server_hostname=server_hostname
        )
        if transport is None:
            raise UpstreamClosed("the tunnel closed during the TLS handshake")
        self._transport = transport

    def close(self) -> None:
        self._reusable = False
        self._transport.close()

    def abort(self) -> None:
        self._reusable = False
        self._transport.abort()


def _retryable(error: UpstreamClosed) -> UpstreamClosed:
    error.retryable = True
    return error
