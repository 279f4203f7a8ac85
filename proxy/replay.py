"""The 401 policy, apart from any I/O: send; on 401 renew the token (unless someone already
has) and send once more; a second 401 goes to the client as it is."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from proxy.token_endpoint import Token


class Response(Protocol):
    @property
    def status(self) -> int: ...

    def release(self) -> Any: ...


class Tokens(Protocol):
    async def token(self) -> Token: ...

    async def renew(self, rejected: Token) -> Token: ...


R = TypeVar("R", bound=Response)


async def send_with_replay(
    send: Callable[[Token], Awaitable[R]], tokens: Tokens, replaying: Callable[[], None]
) -> R:
    """The upstream's answer; `replaying` is told before the request is sent a second time, so
    that a replay which then fails is still known as one."""
    token = await tokens.token()
    response = await send(token)
    if response.status != 401:
        return response
    response.release()  # the rejected answer is let go before the replay
    fresh = await tokens.renew(token)
    replaying()
    return await send(fresh)
