"""ProducerSync API: producers by NPN (v1, v2) and the v2 list paged by continuation tokens."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import urlencode

from aiohttp import web

from .api import ApiError, natural, query_int
from .data import Record
from .state import SIMULATOR_STATE

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def _encode_offset(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_offset(token: str) -> int:
    """The offset inside a continuation token; clients are to treat tokens as opaque."""
    try:
        decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        decoded = ""
    label, _, raw = decoded.partition(":")
    offset = natural(raw) if label == "offset" else None
    if offset is None:
        raise ApiError(400, "bad_request", "Invalid continuationToken")
    return offset


def _entity(request: web.Request) -> Record:
    npn = request.match_info["npn"]
    entity = request.app[SIMULATOR_STATE].data.entities.get(npn)
    if entity is None:
        raise ApiError(404, "not_found", f"No entity with NPN '{npn}'")
    return entity


def _v2(entity: Record) -> Record:
    return {**entity, "links": {"self": {"href": f"/v2/entities/{entity['npn']}"}}}


def _list_href(limit: int, offset: int) -> dict[str, str]:
    query = {"limit": limit, **({"continuationToken": _encode_offset(offset)} if offset else {})}
    return {"href": f"/v2/entities?{urlencode(query)}"}


async def get_entity_v1(request: web.Request) -> web.Response:
    return web.json_response(_entity(request))


async def get_entity_v2(request: web.Request) -> web.Response:
    return web.json_response(_v2(_entity(request)))


async def list_entities_v2(request: web.Request) -> web.Response:
    entities = list(request.app[SIMULATOR_STATE].data.entities.values())
    limit = query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    token = request.query.get("continuationToken")
    offset = 0 if token is None else _decode_offset(token)
    links = {"self": _list_href(limit, offset)}
    if offset + limit < len(entities):
        links["next"] = _list_href(limit, offset + limit)
    body = {
        "embedded": {"entities": [_v2(e) for e in entities[offset : offset + limit]]},
        "links": links,
    }
    return web.json_response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/entities/{npn}", get_entity_v1)
    app.router.add_get("/v2/entities", list_entities_v2)
    app.router.add_get("/v2/entities/{npn}", get_entity_v2)
