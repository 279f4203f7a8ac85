"""ProducerSync API: producers by NPN (v1, v2), and the v2 lists of entities and licenses paged
by continuation tokens, with absolute links as AgentSync writes them."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import urlencode

from aiohttp import web

from .api import ApiError, natural, query_int
from .data import Record
from .links import public_base
from .state import SIMULATOR_STATE

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Real continuation tokens are opaque base64 that may hold '+', '/' and '='. These always begin
# with '+/', so a client or proxy that turns a link's '%2B' back into '+' is caught (400).
TOKEN_PREFIX = b"\xfb\xff"


def encode_token(listing: str, offset: int) -> str:
    return base64.b64encode(TOKEN_PREFIX + f"{listing}:{offset}".encode()).decode()


def _decode_token(listing: str, token: str) -> int:
    """The offset inside a token issued for `listing`; clients are to treat tokens as opaque."""
    try:
        decoded = base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    prefix, payload = decoded[: len(TOKEN_PREFIX)], decoded[len(TOKEN_PREFIX) :]
    label, _, raw = payload.decode("ascii", "replace").partition(":")
    offset = natural(raw) if prefix == TOKEN_PREFIX and label == listing else None
    if offset is None:
        raise ApiError(400, "bad_request", "Invalid continuationToken")
    return offset


def _entity(request: web.Request) -> Record:
    npn = request.match_info["npn"]
    entity = request.app[SIMULATOR_STATE].data.entities.get(npn)
    if entity is None:
        raise ApiError(404, "not_found", f"No entity with NPN '{npn}'")
    return entity


def _v2(entity: Record, base: str) -> Record:
    return {**entity, "links": {"self": {"href": f"{base}/v2/entities/{entity['npn']}"}}}


def _page(request: web.Request, listing: str, items: list[Record]) -> Record:
    """One page of `items`: `embedded.<listing>`, and `links.self` and `links.next` as absolute
    URLs whose continuation tokens are percent-encoded."""
    limit = query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    token = request.query.get("continuationToken")
    offset = 0 if token is None else _decode_token(listing, token)
    base = public_base(request)

    def href(at: int) -> dict[str, str]:
        query = {**({"continuationToken": encode_token(listing, at)} if at else {}), "limit": limit}
        return {"href": f"{base}/v2/{listing}?{urlencode(query)}"}

    links = {"self": href(offset)}
    if offset + limit < len(items):
        links["next"] = href(offset + limit)
    return {"embedded": {listing: items[offset : offset + limit]}, "links": links}


async def get_entity_v1(request: web.Request) -> web.Response:
    return web.json_response(_entity(request))


async def get_entity_v2(request: web.Request) -> web.Response:
    return web.json_response(_v2(_entity(request), public_base(request)))


async def list_entities_v2(request: web.Request) -> web.Response:
    base = public_base(request)
    entities = [_v2(e, base) for e in request.app[SIMULATOR_STATE].data.entities.values()]
    return web.json_response(_page(request, "entities", entities))


async def list_licenses_v2(request: web.Request) -> web.Response:
    entities = request.app[SIMULATOR_STATE].data.entities.values()
    licenses = [{"npn": e["npn"], **lic} for e in entities for lic in e["licenses"]]
    return web.json_response(_page(request, "licenses", licenses))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/entities/{npn}", get_entity_v1)
    app.router.add_get("/v2/entities", list_entities_v2)
    app.router.add_get("/v2/entities/{npn}", get_entity_v2)
    app.router.add_get("/v2/licenses", list_licenses_v2)
