"""Contracting API: carriers (read-only) and products (read and write), with HAL pagination."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from .api import ApiError, natural, query_int
from .data import Record
from .state import SIMULATOR_STATE

BASE = "/contracting/v1/customers"
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
PRODUCT_STATUSES = ("ACTIVE", "INACTIVE")
STATE_CODE = re.compile(r"[A-Z]{2}")


def hal_page(request: web.Request, path: str, relation: str, items: list[Record]) -> Record:
    """One page of `items` in Spring HATEOAS form; hrefs are relative so they survive a proxy."""
    number = query_int(request, "page", 0, 0, 1_000_000)
    size = query_int(request, "size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    total_pages = -(-len(items) // size)

    def link(page: int) -> dict[str, str]:
        return {"href": f"{path}?page={page}&size={size}"}

    links = {"self": link(number), "first": link(0)}
    if number > 0:
        links["prev"] = link(number - 1)
    if number + 1 < total_pages:
        links["next"] = link(number + 1)
    links["last"] = link(max(total_pages - 1, 0))
    return {
        "_embedded": {relation: items[number * size : (number + 1) * size]},
        "_links": links,
        "page": {
            "size": size,
            "totalElements": len(items),
            "totalPages": total_pages,
            "number": number,
        },
    }


def _with_links(record: Record, path: str) -> Record:
    return {**record, "_links": {"self": {"href": f"{path}/{record['id']}"}}}


def _product_out(product: Record) -> Record:
    out = _with_links(product, f"{BASE}/products")
    out["_links"]["carrier"] = {"href": f"{BASE}/carriers/{product['carrierId']}"}
    return out


def _lookup(records: dict[int, Record], request: web.Request, kind: str) -> Record:
    raw = request.match_info["id"]
    number = natural(raw)
    record = None if number is None else records.get(number)
    if record is None:
        raise ApiError(404, "not_found", f"No {kind} with id '{raw}'")
    return record


async def list_carriers(request: web.Request) -> web.Response:
    carriers = request.app[SIMULATOR_STATE].data.carriers.values()
    items = [_with_links(carrier, f"{BASE}/carriers") for carrier in carriers]
    return web.json_response(hal_page(request, f"{BASE}/carriers", "carriers", items))


async def get_carrier(request: web.Request) -> web.Response:
    carrier = _lookup(request.app[SIMULATOR_STATE].data.carriers, request, "carrier")
    return web.json_response(_with_links(carrier, f"{BASE}/carriers"))


async def list_products(request: web.Request) -> web.Response:
    items = [_product_out(p) for p in request.app[SIMULATOR_STATE].data.products.values()]
    return web.json_response(hal_page(request, f"{BASE}/products", "products", items))


async def get_product(request: web.Request) -> web.Response:
    product = _lookup(request.app[SIMULATOR_STATE].data.products, request, "product")
    return web.json_response(_product_out(product))


async def create_product(request: web.Request) -> web.Response:
    data = request.app[SIMULATOR_STATE].data
    product = {"id": data.next_product_id, **await _product_fields(request)}
    data.products[product["id"]] = product
    data.next_product_id += 1
    location = f"{BASE}/products/{product['id']}"
    return web.json_response(_product_out(product), status=201, headers={"Location": location})


async def replace_product(request: web.Request) -> web.Response:
    data = request.app[SIMULATOR_STATE].data
    product = _lookup(data.products, request, "product")
    product.update(await _product_fields(request))
    return web.json_response(_product_out(product))


async def delete_product(request: web.Request) -> web.Response:
    data = request.app[SIMULATOR_STATE].data
    del data.products[_lookup(data.products, request, "product")["id"]]
    return web.Response(status=204)


async def _product_fields(request: web.Request) -> Record:
    """A product's writable fields from a JSON body, every problem reported at once."""
    try:
        body: Any = await request.json()
    except ValueError as exc:
        raise ApiError(400, "bad_request", "The request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "The request body must be a JSON object")
    carriers = request.app[SIMULATOR_STATE].data.carriers
    problems = []
    for name in ("name", "productType"):
        if not isinstance(body.get(name), str) or not body[name].strip():
            problems.append(f"'{name}' is required and must be a non-empty string")
    carrier_id = body.get("carrierId")
    if type(carrier_id) is not int or carrier_id not in carriers:
        problems.append("'carrierId' is required and must be the id of a known carrier")
    states = body.get("states", [])
    if not isinstance(states, list) or not all(
        isinstance(s, str) and STATE_CODE.fullmatch(s) for s in states
    ):
        problems.append("'states' must be a list of two-letter state codes")
    status = body.get("status", "ACTIVE")
    if status not in PRODUCT_STATUSES:
        problems.append(f"'status' must be one of {', '.join(PRODUCT_STATUSES)}")
    if problems:
        raise ApiError(400, "bad_request", "; ".join(problems))
    return {
        "carrierId": carrier_id,
        "name": body["name"],
        "productType": body["productType"],
        "states": states,
        "status": status,
    }


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{BASE}/carriers", list_carriers)
    app.router.add_get(f"{BASE}/carriers/{{id}}", get_carrier)
    app.router.add_get(f"{BASE}/products", list_products)
    app.router.add_post(f"{BASE}/products", create_product)
    app.router.add_get(f"{BASE}/products/{{id}}", get_product)
    app.router.add_put(f"{BASE}/products/{{id}}", replace_product)
    app.router.add_delete(f"{BASE}/products/{{id}}", delete_product)
