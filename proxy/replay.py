"""The replay policy, apart from any I/O: after a 401 (the token renewed) or a 429 (its pause
waited out, if that fits the wait budget), the request is sent once more, at most once each."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from proxy.access import Exchange
from proxy.errors import RateLimited
from proxy.pacing import Pacer
from proxy.token_endpoint import Token


class Response(Protocol):
    status: int

    @property
    def headers(self) -> Mapping[str, str]: ...

    def release(self) -> Any: ...


class Tokens(Protocol):
    async def token(self) -> Token: ...

    async def renew(self, rejected: Token) -> Token: ...


R = TypeVar("R", bound=Response)


async def send_with_replay(
    send: Callable[[Token], Awaitable[R]], tokens: Tokens, pacer: Pacer, record: Exchange
) -> R:
    """The upstream's answer, a second 401 or 429 included, as it came. Raises RateLimited
    when the request would wait too long for the rate limit, a TokenError without a token."""
    ticket = await pacer.hold()
    replayed: set[int] = set()
    token: Token | None = None
    while True:
        record.held_seconds += ticket.held
        try:
            token = token or await tokens.token()
            response = await send(token)
        except BaseException:
            await pacer.abandoned(ticket)
            raise
        pause = await pacer.answered(ticket, response.status, response.headers)
        status = response.status
        if status == 401 and status not in replayed:
            response.release()  # the rejected answer is let go before the replay
            token = await tokens.renew(token)
            ticket = await pacer.hold()
        elif status == 429 and status not in replayed and pause is not None:
            if pause > pacer.max_wait:
                return response
            try:
                ticket = await pacer.hold()  # until the pause ends, the fleet's requests too
            except RateLimited:
                return response  # the upstream's own 429, unchanged
            except BaseException:
                response.release()
                raise
            response.release()
        else:
            return response
        replayed.add(status)
        record.replayed, record.replay_reason = True, status
