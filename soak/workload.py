"""The soak's traffic: what each kind of request sends, what answer counts as right for it, and
the workers that keep sending until told to stop.

Every request must get an answer within the time limit: its expected answer, a section-7 error
of the proxy (`{"error", "error_description"}` JSON with the code's status), or 401 after a
refused replay. Only the mid-body-reset endpoint may end in a cut-off body instead."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDictProxy

KIB, MIB = 1 << 10, 1 << 20
DATA = os.urandom(16 * MIB)  # request bodies are slices of this
PROXY_ERRORS = {  # the proxy's own error answers: code -> status
    "token_request_rejected": 502,
    "token_unavailable": 503,
    "upstream_unreachable": 502,
    "upstream_timeout": 504,
}
MAX_BACK_OFF = 2.0  # workers honour the proxy's Retry-After up to this many seconds
STALL_SECONDS = 7.0  # longer than the proxy's --upstream-timeout in the soak

Rng = random.Random


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass(frozen=True)
class Outcome:
    label: str
    ok: bool = True
    detail: str = ""
    replayed: bool = False
    retry_after: float = 0.0  # the proxy's Retry-After on a 503 token_unavailable
    intact: bool | None = None  # whether a body's hash matched, where one was compared


@dataclass(frozen=True)
class Call:
    kind: str
    method: str
    path: str
    body: bytes | None = None
    chunked: bool = False
    refuse: str | None = None  # X-Soak-401: once / early
    quit_after: float | None = None  # the client gives up on the request after this long

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body or b"").hexdigest()


@dataclass
class Tally:
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # no answer, or not a valid one
    corrupt: list[str] = field(default_factory=list)  # a body that arrived changed
    intact: int = 0  # bodies whose hash was compared and matched
    bytes_up: int = 0
    bytes_down: int = 0
    replayed_answers: int = 0

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    def add(self, call: Call, outcome: Outcome, request_id: str) -> None:
        self.outcomes[call.kind, outcome.label] += 1
        self.replayed_answers += outcome.replayed
        self.intact += outcome.intact is True
        what = f"{call.kind} {call.method} {call.path} [{request_id}]: {outcome.label}"
        if outcome.intact is False:
            self.corrupt.append(f"{what} {outcome.detail}")
        elif not outcome.ok:
            self.failures.append(f"{what} {outcome.detail}".rstrip())


# ---- what each kind sends ----


def _slice(rng: Rng, size: int) -> bytes:
    offset = rng.randrange(len(DATA) - size + 1)
    return DATA[offset : offset + size]


def small_size(rng: Rng) -> int:
    return rng.choice([0, rng.randint(1, KIB), rng.randint(KIB, 64 * KIB)])


def large_size(rng: Rng) -> int:
    return int(2 ** rng.uniform(16.01, 23))  # log-uniform, just above 64 KiB to 8 MiB


def any_size(rng: Rng) -> int:
    return small_size(rng) if rng.random() < 1 / 3 else large_size(rng)


def _method(rng: Rng) -> str:
    return rng.choice(["POST", "POST", "PUT", "PATCH"])


def _get(rng: Rng) -> Call:
    return Call("get", "GET", f"/soak/echo?n={rng.randrange(1 << 30)}")


def _post_small(rng: Rng) -> Call:
    return Call("post_small", _method(rng), "/soak/echo", _slice(rng, small_size(rng)))


def _post_large(rng: Rng) -> Call:
    return Call("post_large", _method(rng), "/soak/echo", _slice(rng, large_size(rng)))


def _post_chunked(rng: Rng) -> Call:
    return Call("post_chunked", "POST", "/soak/echo", _slice(rng, any_size(rng)), chunked=True)


def _download_path(rng: Rng) -> str:
    size, length = rng.randint(1 * MIB, 4 * MIB), rng.choice([0, 1])
    return f"/soak/download?size={size}&offset={rng.randrange(MIB)}&length={length}"


def _download(rng: Rng) -> Call:
    return Call("download", "GET", _download_path(rng))


def _unavailable(rng: Rng) -> Call:
    return Call("unavailable", "GET", "/soak/unavailable")


def _stall(rng: Rng) -> Call:
    """No answer within the proxy's upstream timeout; half carry a spooled body meanwhile."""
    body = _slice(rng, large_size(rng)) if rng.random() < 0.5 else None
    return Call("stall", "POST" if body else "GET", f"/soak/stall?seconds={STALL_SECONDS}", body)


def _quit_upload(rng: Rng) -> Call:
    """A slow chunked upload the client gives up on part way."""
    body = _slice(rng, rng.randint(2 * MIB, 4 * MIB))  # 0.3 s or more at its pace
    return Call(
        "quit_upload", "POST", "/soak/echo", body, chunked=True, quit_after=rng.uniform(0.02, 0.3)
    )


def _quit_download(rng: Rng) -> Call:
    """A download the client closes after its first bytes."""
    return Call("quit_download", "GET", _download_path(rng), quit_after=0.0)


def _reset(rng: Rng) -> Call:
    """Mostly a long answer cut mid-body (streamed through: the client sees it cut); sometimes a
    short one (read whole by the proxy: a clean 502)."""
    if rng.random() < 0.25:
        size, length = 32 * KIB, 1
    else:
        size, length = rng.randint(1 * MIB, 3 * MIB), rng.choice([0, 1])
    how = rng.choice(["rst", "fin"])
    return Call(
        "reset", "GET", f"/soak/reset?size={size}&cut={size // 2}&how={how}&length={length}"
    )


def replay_call(rng: Rng) -> Call:
    """A request the upstream refuses once with 401 (after reading its body, or before)."""
    refuse = rng.choice(["once", "once", "early"])
    body = _slice(rng, any_size(rng))
    return Call(f"replay_{refuse}", _method(rng), "/soak/echo", body, rng.random() < 0.5, refuse)


PLANS: dict[str, Callable[[Rng], Call]] = {
    "get": _get,
    "post_small": _post_small,
    "post_large": _post_large,
    "post_chunked": _post_chunked,
    "download": _download,
    "reset": _reset,
    "unavailable": _unavailable,
    "stall": _stall,
    "quit_upload": _quit_upload,
    "quit_download": _quit_download,
}
WEIGHTS = {
    "get": 30,
    "post_small": 20,
    "post_large": 12,
    "post_chunked": 10,
    "download": 8,
    "reset": 4,
    "unavailable": 3,
    "stall": 1,
    "quit_upload": 2,
    "quit_download": 2,
}


def pick(rng: Rng) -> Call:
    """A request of a kind drawn by WEIGHTS, with random sizes."""
    kind = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
    return PLANS[kind](rng)


# ---- what counts as the right answer ----


def proxy_error(answer: Answer) -> str | None:
    """The section-7 code of a well-formed error answer of the proxy, else None."""
    if not answer.headers.get("Content-Type", "").startswith("application/json"):
        return None
    try:
        body = json.loads(answer.body)
    except ValueError:
        return None
    if not isinstance(body, dict) or set(body) != {"error", "error_description"}:
        return None
    code = body["error"]
    if PROXY_ERRORS.get(code) != answer.status or not isinstance(body["error_description"], str):
        return None
    if code == "token_unavailable" and "Retry-After" not in answer.headers:
        return None
    return str(code)


def _json(answer: Answer) -> dict[str, object]:
    try:
        body = json.loads(answer.body)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def check(call: Call, answer: Answer) -> Outcome:
    code = proxy_error(answer)
    if code is not None:
        retry_after = float(answer.headers.get("Retry-After", 0)) if answer.status == 503 else 0
        return Outcome(f"{answer.status} {code}", retry_after=retry_after)
    if answer.status == 401 and _json(answer).get("source") == "soak-upstream":
        return Outcome("401 (replay refused too)")
    return CHECKS.get(call.kind, _check_echo)(call, answer)


def _unexpected(answer: Answer) -> Outcome:
    return Outcome(
        f"unexpected {answer.status}", ok=False, detail=answer.body[:200].decode(errors="replace")
    )


def _check_echo(call: Call, answer: Answer) -> Outcome:
    if answer.status != 200:
        return _unexpected(answer)
    body = _json(answer)
    size = len(call.body or b"")
    if body.get("sha256") != call.sha256 or body.get("size") != size:
        return Outcome(
            "200 with a different body",
            ok=False,
            detail=f"sent {size} bytes, upstream got {body.get('size')}",
            intact=False,
        )
    replayed = body.get("attempt") == 2
    return Outcome("200 after a replay" if replayed else "200", replayed=replayed, intact=True)


def _check_download(call: Call, answer: Answer) -> Outcome:
    if answer.status != 200:
        return _unexpected(answer)
    if hashlib.sha256(answer.body).hexdigest() != answer.headers.get("X-Soak-Sha256"):
        return Outcome(
            "200 with a corrupt body", ok=False, detail=f"{len(answer.body)} bytes", intact=False
        )
    return Outcome("200", intact=True)


def _check_reset(call: Call, answer: Answer) -> Outcome:
    return Outcome(
        f"{answer.status}, cut answer looked complete", ok=False, detail=f"{len(answer.body)} bytes"
    )


def _check_unavailable(call: Call, answer: Answer) -> Outcome:
    if answer.status == 503 and _json(answer) == {"soak": "unavailable"}:
        return Outcome("503 from the upstream")
    return _unexpected(answer)


def _check_stall(call: Call, answer: Answer) -> Outcome:
    return Outcome(f"{answer.status}, no upstream timeout", ok=False)


CHECKS: dict[str, Callable[[Call, Answer], Outcome]] = {
    "download": _check_download,
    "reset": _check_reset,
    "unavailable": _check_unavailable,
    "stall": _check_stall,
}


# ---- sending ----


async def _chunks(body: bytes, rng: Rng, slow: bool = False) -> AsyncIterator[bytes]:
    """The body in chunks of random sizes, with a pause now and then; if slow, in 64 KiB
    chunks 10 ms apart."""
    start = 0
    while start < len(body):
        end = start + (64 * KIB if slow else rng.randint(1, 512 * KIB))
        yield body[start:end]
        start = end
        if slow or rng.random() < 0.1:
            await asyncio.sleep(0.01 if slow else 0.005)


async def _exchange(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    call: Call,
    rng: Rng,
    tally: Tally,
) -> Outcome:
    data = _chunks(call.body or b"", rng) if call.chunked else call.body
    async with session.request(call.method, url, headers=headers, data=data) as response:
        tally.bytes_up += len(call.body or b"")
        body = await response.read()
        tally.bytes_down += len(body)
        return check(call, Answer(response.status, response.headers, body))


async def _give_up(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], call: Call, rng: Rng
) -> Outcome:
    """Walk away from the request: from a slow upload after `quit_after` seconds, from a
    download after its first bytes."""
    if call.chunked:
        try:
            async with asyncio.timeout(call.quit_after):
                data = _chunks(call.body or b"", rng, slow=True)
                async with session.request(call.method, url, headers=headers, data=data) as answer:
                    await answer.read()
        except TimeoutError:
            return Outcome("client gave up mid-upload")
        return Outcome(f"{answer.status} before the client gave up")
    async with session.request(call.method, url, headers=headers) as answer:
        if answer.status != 200:  # e.g. a 503 token_unavailable: nothing to walk away from
            return check(call, Answer(answer.status, answer.headers, await answer.read()))
        await answer.content.readany()
        answer.close()
    return Outcome("client gave up mid-download")


async def send(
    session: aiohttp.ClientSession, base: str, call: Call, rng: Rng, limit: float, tally: Tally
) -> Outcome:
    """Send one request and add its outcome to the tally."""
    request_id = os.urandom(12).hex()
    headers = {"X-Request-Id": request_id, **({"X-Soak-401": call.refuse} if call.refuse else {})}
    try:
        async with asyncio.timeout(limit):
            if call.quit_after is None:
                outcome = await _exchange(session, base + call.path, headers, call, rng, tally)
            else:
                outcome = await _give_up(session, base + call.path, headers, call, rng)
    except TimeoutError:
        outcome = Outcome(f"no answer in {limit:g} s", ok=False)
    except aiohttp.ClientPayloadError as exc:
        outcome = Outcome("cut off mid-body", ok=call.kind == "reset", detail=repr(exc))
    except aiohttp.ClientError as exc:
        outcome = Outcome(f"connection failed: {type(exc).__name__}", ok=False, detail=str(exc))
    tally.add(call, outcome, request_id)
    return outcome


@dataclass
class Traffic:
    session: aiohttp.ClientSession
    base: str
    tally: Tally
    stop: asyncio.Event
    timeout: float = 30.0
    replay_every: tuple[float, float] = (1.0, 2.0)

    async def worker(self, seed: int) -> None:
        rng = random.Random(seed)  # noqa: S311 - test traffic, not security
        while not self.stop.is_set():
            outcome = await send(self.session, self.base, pick(rng), rng, self.timeout, self.tally)
            await self.pause(min(outcome.retry_after, MAX_BACK_OFF))

    async def pause(self, seconds: float) -> None:
        """Sleep, but no longer than the traffic runs."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), seconds)

    async def replayer(self, seed: int) -> None:
        """One request refused once with 401 every second or two: each makes the proxy renew
        its token, so they are spaced to stay under its cap on token requests."""
        rng = random.Random(seed)  # noqa: S311 - test traffic, not security
        while not self.stop.is_set():
            await send(self.session, self.base, replay_call(rng), rng, self.timeout, self.tally)
            await self.pause(rng.uniform(*self.replay_every))

    async def run(self, workers: int, seed: int) -> None:
        async with asyncio.TaskGroup() as group:
            for index in range(workers):
                group.create_task(self.worker(seed + index))
            group.create_task(self.replayer(seed + workers))
