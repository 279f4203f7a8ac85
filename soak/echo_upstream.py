"""The soak's upstream API, run as its own process behind agentsync-proxy.

Usage: echo_upstream.py PORT SIMULATOR_URL

Every request under /soak/ goes through the same steps:

1. `X-Soak-401: early` on the first sight of its `X-Request-Id`: 401 at once, body unread.
2. The body is read and hashed (SHA-256); the hash is recorded under the request id, so that
   a replay can be compared with the first attempt.
3. `X-Soak-401: once` on the first sight of its request id: 401 after the body was read.
4. The bearer token is checked against the simulator that issued it: the upstream calls the
   simulator's API (`GET /v2/entities`) with the same `Authorization` and treats a 401 there as
   its own. A valid answer is cached for a second per token, a refusal for good (a revoked or
   expired token never comes back). So `POST /_simulator/revoke` makes this upstream refuse
   the proxy's token for real, and the proxy must renew it and replay.
5. The route answers: `echo` (the body's hash and size, and which attempt this was),
   `download` (a few MiB streamed in chunks with small pauses, its hash in `X-Soak-Sha256`),
   `reset` (part of an answer, then the connection is reset or closed mid-body),
   `unavailable` (503 with the upstream's own body), `stall` (no answer for a while).

`GET /_soak/ledger` reports what the ledger of body hashes shows: requests seen, requests seen
twice (replays), replays whose body differed from the first attempt, requests seen more often.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

CHUNK = 64 * 1024
DOWNLOAD_PAUSE = 0.002  # between chunks of a streamed answer
RESET_PAUSE = 0.05  # between the part of an answer that is sent and the reset
VALID_FOR = 1.0  # seconds a token the simulator accepted is taken as valid without asking
KEEPALIVE_TIMEOUT = 5.0  # idle keep-alive connections are closed after this long
PATTERN = random.Random(20240611).randbytes(16 << 20)  # noqa: S311 - test data, not security
UNREAD = "unread"  # the ledger's entry for a body answered 401 before it was read
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

Route = Callable[[web.Request, "Received"], Awaitable[web.StreamResponse]]


class Received:
    """A request body as the upstream saw it, and which attempt of its request id this was."""

    def __init__(self, sha256: str, size: int, attempt: int) -> None:
        self.sha256 = sha256
        self.size = size
        self.attempt = attempt


class Ledger:
    """Every body hash seen, by request id."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[str]] = {}

    def record(self, request_id: str, sha256: str) -> int:
        """Record one attempt; return its number (1 for the first)."""
        seen = self.bodies.setdefault(request_id, [])
        seen.append(sha256)
        return len(seen)

    def first_sight(self, request_id: str) -> bool:
        return request_id not in self.bodies

    def report(self) -> dict[str, object]:
        replays = {rid: seen for rid, seen in self.bodies.items() if len(seen) == 2}
        compared = {rid: seen for rid, seen in replays.items() if UNREAD not in seen}
        return {
            "requests": len(self.bodies),
            "replays": len(replays),
            "replays_compared": len(compared),
            "replays_with_body": sum(1 for seen in compared.values() if seen[0] != EMPTY_SHA256),
            "mismatches": sorted(rid for rid, seen in compared.items() if seen[0] != seen[1]),
            "replayed_ids": sorted(replays),
            "seen_more_than_twice": sorted(
                rid for rid, seen in self.bodies.items() if len(seen) > 2
            ),
        }


class TokenChecker:
    """Is a bearer token one the simulator issued and still honours? One question at a time
    per token; a yes is kept for VALID_FOR seconds, a no for good."""

    def __init__(self, session: aiohttp.ClientSession, simulator_url: str) -> None:
        self.session = session
        self.url = simulator_url.rstrip("/") + "/v2/entities"
        self._checks: dict[str, tuple[float, asyncio.Task[bool]]] = {}

    async def valid(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Bearer "):
            return False
        now = time.monotonic()
        entry = self._checks.get(authorization)
        if entry is None or self._stale(entry, now):
            entry = (now, asyncio.get_running_loop().create_task(self._ask(authorization)))
            self._checks[authorization] = entry
        return await asyncio.shield(entry[1])

    @staticmethod
    def _stale(entry: tuple[float, asyncio.Task[bool]], now: float) -> bool:
        asked_at, task = entry
        if not task.done():
            return False
        return (
            task.cancelled()
            or task.exception() is not None
            or (task.result() and now - asked_at > VALID_FOR)
        )

    async def _ask(self, authorization: str) -> bool:
        async with self.session.get(self.url, headers={"Authorization": authorization}) as answer:
            await answer.read()
            if answer.status in (200, 401):
                return answer.status == 200
            raise RuntimeError(f"the simulator answered {answer.status} to a token check")


LEDGER = web.AppKey("ledger", Ledger)
CHECKER = web.AppKey("checker", TokenChecker)


def unauthorized() -> web.Response:
    return web.json_response(
        {"error": "invalid_token", "source": "soak-upstream"},
        status=401,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


async def hash_body(request: web.Request) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _int(request: web.Request, name: str, default: int) -> int:
    return int(request.query.get(name, default))


async def echo(request: web.Request, received: Received) -> web.StreamResponse:
    return web.json_response(
        {"sha256": received.sha256, "size": received.size, "attempt": received.attempt}
    )


def _pattern(request: web.Request) -> bytes:
    offset, size = _int(request, "offset", 0), _int(request, "size", 0)
    return PATTERN[offset : offset + size]


async def _streamed(
    request: web.Request, body: bytes, headers: dict[str, str]
) -> web.StreamResponse:
    response = web.StreamResponse(headers=headers)
    if request.query.get("length", "1") == "1":
        response.content_length = len(body)
    await response.prepare(request)
    return response


async def download(request: web.Request, received: Received) -> web.StreamResponse:
    body = _pattern(request)
    headers = {"X-Soak-Sha256": hashlib.sha256(body).hexdigest(), "Content-Type": "text/plain"}
    response = await _streamed(request, body, headers)
    try:
        for start in range(0, len(body), CHUNK):
            await response.write(body[start : start + CHUNK])
            await asyncio.sleep(DOWNLOAD_PAUSE)
        await response.write_eof()
    except ConnectionError:  # the proxy let go: its client gave up on the download
        pass
    return response


async def reset(request: web.Request, received: Received) -> web.StreamResponse:
    """Send `cut` bytes of a longer answer, then reset (`how=rst`) or close the connection."""
    body = _pattern(request)
    response = await _streamed(request, body, {"Content-Type": "text/plain"})
    await response.write(body[: _int(request, "cut", len(body) // 2)])
    await asyncio.sleep(RESET_PAUSE)
    transport = request.transport
    if transport is not None:
        if request.query.get("how") == "rst":
            transport.abort()
        else:
            transport.close()
    raise asyncio.CancelledError  # nothing more can be sent; aiohttp drops the connection


async def unavailable(request: web.Request, received: Received) -> web.StreamResponse:
    return web.json_response({"soak": "unavailable"}, status=503, headers={"Retry-After": "1"})


async def stall(request: web.Request, received: Received) -> web.StreamResponse:
    await asyncio.sleep(float(request.query.get("seconds", "1")))
    return web.json_response({"stalled": True})


ROUTES: dict[str, Route] = {
    "echo": echo,
    "download": download,
    "reset": reset,
    "unavailable": unavailable,
    "stall": stall,
}


async def soak_route(request: web.Request) -> web.StreamResponse:
    route = ROUTES.get(request.match_info["route"])
    if route is None:
        raise web.HTTPNotFound()
    request_id = request.headers.get("X-Request-Id", "")
    refuse = request.headers.get("X-Soak-401", "")
    ledger = request.app[LEDGER]
    if refuse == "early" and ledger.first_sight(request_id):
        ledger.record(request_id, UNREAD)
        return unauthorized()
    sha256, size = await hash_body(request)
    attempt = ledger.record(request_id, sha256)
    if refuse == "once" and attempt == 1:
        return unauthorized()
    if not await request.app[CHECKER].valid(request.headers.get("Authorization")):
        return unauthorized()
    return await route(request, Received(sha256, size, attempt))


async def ledger_report(request: web.Request) -> web.Response:
    return web.json_response(request.app[LEDGER].report())


def create_app(simulator_url: str) -> web.Application:
    app = web.Application(client_max_size=1 << 30)
    app[LEDGER] = Ledger()

    async def session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as client:
            app[CHECKER] = TokenChecker(client, simulator_url)
            yield

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/soak/{route}", soak_route)
    app.router.add_get("/_soak/ledger", ledger_report)
    return app


def main() -> None:
    port, simulator_url = int(sys.argv[1]), sys.argv[2]
    web.run_app(
        create_app(simulator_url),
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
    )


if __name__ == "__main__":
    main()
