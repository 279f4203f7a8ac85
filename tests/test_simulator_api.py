"""The simulator's Contracting and ProducerSync APIs: auth, scopes, pagination, writes, errors."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from proxy.simulator import SimulatorConfig, create_app

Client = TestClient[web.Request, web.Application]
CARRIERS = "/contracting/v1/customers/carriers"
PRODUCTS = "/contracting/v1/customers/products"
ALL_SCOPES = ("rino_api_agency_read", "rino_api_agency_write", "rino_api_agency_delete")
NEW_PRODUCT = {
    "carrierId": 3,
    "name": "Great Lakes Cyber Liability",
    "productType": "COMMERCIAL_LIABILITY",
    "states": ["MI", "OH"],
}


async def start(aiohttp_client: AiohttpClient, config: SimulatorConfig | None = None) -> Client:
    return await aiohttp_client(create_app(config or SimulatorConfig()))


async def bearer(client: Client, scope: str | None = None) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "client_id": "demo-client",
        "client_secret": "demo-secret",
    }
    if scope is not None:
        form["scope"] = scope
    response = await client.post("/oauth2/token", data=form)
    assert response.status == 200
    return {"Authorization": f"Bearer {(await response.json())['access_token']}"}


async def start_with_token(
    aiohttp_client: AiohttpClient,
    scope: str | None = None,
    config: SimulatorConfig | None = None,
) -> tuple[Client, dict[str, str]]:
    client = await start(aiohttp_client, config)
    return client, await bearer(client, scope)


def assert_agentsync_error(body: dict[str, Any], status: int, error: str, path: str) -> None:
    assert body.keys() == {"timestamp", "status", "error", "message", "path"}
    assert body["timestamp"].endswith("Z")
    assert (body["status"], body["error"], body["path"]) == (status, error, path)


async def test_call_without_token_gets_401_invalid_token(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    response = await client.get(CARRIERS)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert_agentsync_error(await response.json(), 401, "invalid_token", CARRIERS)


async def test_unknown_token_gets_401_without_echoing_it(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    response = await client.get(CARRIERS, headers={"Authorization": "Bearer made-up-token"})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert "made-up-token" not in await response.text()


async def test_malformed_authorization_header_gets_401(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    response = await client.get(CARRIERS, headers={"Authorization": "Basic ZGVtbzpkZW1v"})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_carrier_pages_follow_next_links_to_every_carrier_once(
    aiohttp_client: AiohttpClient,
) -> None:
    client, headers = await start_with_token(aiohttp_client)
    href: str | None = f"{CARRIERS}?size=5"
    seen: list[int] = []
    numbers: list[int] = []
    while href is not None:
        assert href.startswith("/")
        body = await (await client.get(href, headers=headers)).json()
        seen += [carrier["id"] for carrier in body["_embedded"]["carriers"]]
        numbers.append(body["page"]["number"])
        assert body["page"] == {
            "size": 5,
            "totalElements": 12,
            "totalPages": 3,
            "number": numbers[-1],
        }
        href = body["_links"].get("next", {}).get("href")
    assert numbers == [0, 1, 2]
    assert sorted(seen) == list(range(1, 13))
    assert len(seen) == len(set(seen))


async def test_carrier_page_links_point_to_first_prev_and_last(
    aiohttp_client: AiohttpClient,
) -> None:
    client, headers = await start_with_token(aiohttp_client)
    body = await (await client.get(f"{CARRIERS}?page=1&size=5", headers=headers)).json()
    links = body["_links"]
    assert links["self"]["href"] == f"{CARRIERS}?page=1&size=5"
    assert links["first"]["href"] == f"{CARRIERS}?page=0&size=5"
    assert links["prev"]["href"] == f"{CARRIERS}?page=0&size=5"
    assert links["next"]["href"] == f"{CARRIERS}?page=2&size=5"
    assert links["last"]["href"] == f"{CARRIERS}?page=2&size=5"


async def test_product_list_defaults_to_pages_of_twenty(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client)
    body = await (await client.get(PRODUCTS, headers=headers)).json()
    assert len(body["_embedded"]["products"]) == 20
    assert body["page"] == {"size": 20, "totalElements": 25, "totalPages": 2, "number": 0}


async def test_invalid_page_size_gets_400_bad_request(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client)
    response = await client.get(f"{CARRIERS}?size=0", headers=headers)
    assert response.status == 400
    assert_agentsync_error(await response.json(), 400, "bad_request", CARRIERS)


async def test_carrier_by_id_has_its_naic_code(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client)
    response = await client.get(f"{CARRIERS}/1", headers=headers)
    assert response.status == 200
    body = await response.json()
    assert body["id"] == 1
    assert len(body["naicCode"]) == 5


async def test_unknown_carrier_gets_404_agentsync_body(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client)
    response = await client.get(f"{CARRIERS}/999", headers=headers)
    assert response.status == 404
    assert_agentsync_error(await response.json(), 404, "not_found", f"{CARRIERS}/999")


async def test_unknown_api_path_gets_404_agentsync_body(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client)
    response = await client.get("/contracting/v1/nothing-here", headers=headers)
    assert response.status == 404
    assert_agentsync_error(await response.json(), 404, "not_found", "/contracting/v1/nothing-here")


async def test_delete_without_delete_scope_gets_403_policy_evaluation_failed(
    aiohttp_client: AiohttpClient,
) -> None:
    client, headers = await start_with_token(aiohttp_client)
    response = await client.delete(f"{PRODUCTS}/101", headers=headers)
    assert response.status == 403
    body = await response.json()
    assert_agentsync_error(body, 403, "access_denied", f"{PRODUCTS}/101")
    assert body["message"] == "Policy evaluation failed"


async def test_read_only_token_cannot_create_products(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client, scope="rino_api_agency_read")
    response = await client.post(PRODUCTS, json=NEW_PRODUCT, headers=headers)
    assert response.status == 403
    assert (await response.json())["error"] == "access_denied"


async def test_write_only_token_cannot_read(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client, scope="rino_api_agency_write")
    response = await client.get(CARRIERS, headers=headers)
    assert response.status == 403


async def test_created_product_can_be_read_back(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client)
    response = await client.post(PRODUCTS, json=NEW_PRODUCT, headers=headers)
    assert response.status == 201
    created = await response.json()
    assert response.headers["Location"] == f"{PRODUCTS}/{created['id']}"
    fetched = await (await client.get(response.headers["Location"], headers=headers)).json()
    assert fetched == created
    assert {key: fetched[key] for key in NEW_PRODUCT} == NEW_PRODUCT
    listing = await (await client.get(f"{PRODUCTS}?size=100", headers=headers)).json()
    assert listing["page"]["totalElements"] == 26


async def test_put_replaces_a_product(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client)
    replacement = {**NEW_PRODUCT, "name": "Renamed", "status": "INACTIVE"}
    response = await client.put(f"{PRODUCTS}/101", json=replacement, headers=headers)
    assert response.status == 200
    fetched = await (await client.get(f"{PRODUCTS}/101", headers=headers)).json()
    assert fetched["id"] == 101
    assert (fetched["name"], fetched["status"]) == ("Renamed", "INACTIVE")


async def test_delete_with_delete_scope_removes_the_product(
    aiohttp_client: AiohttpClient,
) -> None:
    config = SimulatorConfig(scopes=ALL_SCOPES)
    client, headers = await start_with_token(aiohttp_client, config=config)
    response = await client.delete(f"{PRODUCTS}/101", headers=headers)
    assert response.status == 204
    assert (await client.get(f"{PRODUCTS}/101", headers=headers)).status == 404


async def test_writes_stay_inside_their_own_app(aiohttp_client: AiohttpClient) -> None:
    first, first_headers = await start_with_token(aiohttp_client)
    await first.put(f"{PRODUCTS}/101", json={**NEW_PRODUCT, "name": "Mine"}, headers=first_headers)
    second, second_headers = await start_with_token(aiohttp_client)
    product = await (await second.get(f"{PRODUCTS}/101", headers=second_headers)).json()
    assert product["name"] == "Prairie Term 20"


async def test_invalid_json_write_gets_400_bad_request(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client)
    response = await client.post(
        PRODUCTS, data=b"{not json", headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status == 400
    assert_agentsync_error(await response.json(), 400, "bad_request", PRODUCTS)


async def test_write_missing_required_fields_names_each_one(
    aiohttp_client: AiohttpClient,
) -> None:
    client, headers = await start_with_token(aiohttp_client)
    response = await client.post(PRODUCTS, json={"states": ["TX"]}, headers=headers)
    assert response.status == 400
    message = (await response.json())["message"]
    assert all(field in message for field in ("name", "productType", "carrierId"))


async def test_v1_entity_is_a_plain_object(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client)
    response = await client.get("/v1/entities/17345829", headers=headers)
    assert response.status == 200
    body = await response.json()
    assert body["npn"] == "17345829"
    assert body["licenses"][0]["state"] == "TX"
    assert "links" not in body


async def test_v2_entity_links_to_itself(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client)
    body = await (await client.get("/v2/entities/8823105", headers=headers)).json()
    assert body["links"]["self"]["href"] == "/v2/entities/8823105"


async def test_unknown_npn_gets_404_agentsync_body(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client)
    response = await client.get("/v2/entities/1", headers=headers)
    assert response.status == 404
    assert_agentsync_error(await response.json(), 404, "not_found", "/v2/entities/1")


async def test_v2_entities_continuation_tokens_reach_every_entity_once(
    aiohttp_client: AiohttpClient,
) -> None:
    client, headers = await start_with_token(aiohttp_client)
    href: str | None = "/v2/entities?limit=4"
    seen: list[str] = []
    while href is not None:
        assert href.startswith("/")
        body = await (await client.get(href, headers=headers)).json()
        seen += [entity["npn"] for entity in body["embedded"]["entities"]]
        href = body["links"].get("next", {}).get("href")
    assert len(seen) == 6
    assert len(set(seen)) == 6


async def test_bad_continuation_token_gets_400(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client)
    response = await client.get("/v2/entities?continuationToken=bogus", headers=headers)
    assert response.status == 400
    assert_agentsync_error(await response.json(), 400, "bad_request", "/v2/entities")


async def test_producersync_needs_no_contracting_scope(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client, scope="rino_api_agency_write")
    assert (await client.get("/v2/entities", headers=headers)).status == 200
