"""The simulator's Contracting and ProducerSync APIs: auth, scopes, rate limit, pagination and
links, writes, errors."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import ClientResponse
from pytest_aiohttp import AiohttpClient
from yarl import URL

from proxy.simulator import SimulatorConfig
from tests.clocks import Client, FakeClock, start

CARRIERS = "/contracting/v1/customers/carriers"
PRODUCTS = "/contracting/v1/customers/products"
RATE_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")
ENTITY = "/v2/entities/17345829"
ALL_SCOPES = ("rino_api_agency_read", "rino_api_agency_write", "rino_api_agency_delete")
NEW_PRODUCT = {
    "carrierId": 3,
    "name": "Great Lakes Cyber Liability",
    "productType": "COMMERCIAL_LIABILITY",
    "states": ["MI", "OH"],
}


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
    clock: FakeClock | None = None,
) -> tuple[Client, dict[str, str]]:
    client = await start(aiohttp_client, config, clock)
    return client, await bearer(client, scope)


def origin(client: Client) -> str:
    """The test server's address as links should name it, e.g. http://127.0.0.1:41234."""
    return str(client.make_url("/").origin())


async def follow(client: Client, href: str, headers: dict[str, str]) -> ClientResponse:
    """GET an absolute link exactly as written: its percent-escapes go on the wire unchanged."""
    return await client.session.get(URL(href, encoded=True), headers=headers)


def quota(response: ClientResponse) -> tuple[int, int, int]:
    """The answer's (limit, remaining, reset) from its ratelimit-* headers."""
    limit, remaining, reset = (int(response.headers[name]) for name in RATE_HEADERS)
    return limit, remaining, reset


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


async def test_v2_entity_links_to_itself_absolutely(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client)
    body = await (await client.get("/v2/entities/8823105", headers=headers)).json()
    assert body["links"]["self"]["href"] == f"{origin(client)}/v2/entities/8823105"


async def test_unknown_npn_gets_404_agentsync_body(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client)
    response = await client.get("/v2/entities/1", headers=headers)
    assert response.status == 404
    assert_agentsync_error(await response.json(), 404, "not_found", "/v2/entities/1")


async def test_v2_entities_continuation_tokens_reach_every_entity_once(
    aiohttp_client: AiohttpClient,
) -> None:
    client, headers = await start_with_token(aiohttp_client)
    href: str | None = f"{origin(client)}/v2/entities?limit=4"
    seen: list[str] = []
    while href is not None:
        assert href.startswith(origin(client) + "/v2/entities?")
        body = await (await follow(client, href, headers)).json()
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


# ---- the API's rate limit ----


async def test_every_answer_to_a_valid_token_carries_its_rate_limit_budget(
    aiohttp_client: AiohttpClient,
) -> None:
    clock = FakeClock()
    config = SimulatorConfig(api_requests_per_minute=5)
    client, headers = await start_with_token(aiohttp_client, config=config, clock=clock)
    assert quota(await client.get(ENTITY, headers=headers)) == (5, 4, 60)
    clock.now += 10.5
    not_found = await client.get("/v2/entities/1", headers=headers)
    assert (not_found.status, quota(not_found)) == (404, (5, 3, 50))
    refused = await client.delete(f"{PRODUCTS}/101", headers=headers)  # no delete scope
    assert (refused.status, quota(refused)) == (403, (5, 2, 50))
    wrong_method = await client.patch(ENTITY, headers=headers)
    assert (wrong_method.status, quota(wrong_method)) == (405, (5, 1, 50))


async def test_calls_without_a_valid_token_are_not_counted_nor_labelled(
    aiohttp_client: AiohttpClient,
) -> None:
    config = SimulatorConfig(api_requests_per_minute=2)
    client, headers = await start_with_token(aiohttp_client, config=config)
    for _ in range(5):
        for wrong in ({}, {"Authorization": "Bearer made-up-token"}):
            response = await client.get(ENTITY, headers=wrong)
            assert response.status == 401
            assert not any(name in response.headers for name in RATE_HEADERS)
    assert quota(await client.get(ENTITY, headers=headers)) == (2, 1, 60)


async def test_beyond_the_limit_answers_429_with_retry_after_and_agentsync_body(
    aiohttp_client: AiohttpClient,
) -> None:
    clock = FakeClock()
    config = SimulatorConfig(api_requests_per_minute=3)
    client, headers = await start_with_token(aiohttp_client, config=config, clock=clock)
    for _ in range(3):
        assert (await client.get(ENTITY, headers=headers)).status == 200
    clock.now += 12.25
    response = await client.get(f"{CARRIERS}?size=2", headers=headers)
    assert response.status == 429
    assert quota(response) == (3, 0, 48)
    assert response.headers["Retry-After"] == "48"
    body = await response.json()
    assert_agentsync_error(body, 429, "Too Many Requests", CARRIERS)
    assert "rate limit" in body["message"]


async def test_tokens_of_one_client_share_its_budget(aiohttp_client: AiohttpClient) -> None:
    config = SimulatorConfig(api_requests_per_minute=2)
    client, first = await start_with_token(aiohttp_client, config=config)
    second = await bearer(client)
    assert (await client.get(ENTITY, headers=first)).status == 200
    assert quota(await client.get(ENTITY, headers=second)) == (2, 0, 60)
    assert (await client.get(ENTITY, headers=first)).status == 429


async def test_the_window_ends_sixty_seconds_after_its_first_call(
    aiohttp_client: AiohttpClient,
) -> None:
    clock = FakeClock()
    config = SimulatorConfig(api_requests_per_minute=2)
    client, headers = await start_with_token(aiohttp_client, config=config, clock=clock)
    clock.now += 100  # the window starts with the first call, not with the token
    assert quota(await client.get(ENTITY, headers=headers)) == (2, 1, 60)
    clock.now += 30
    assert quota(await client.get(ENTITY, headers=headers)) == (2, 0, 30)
    clock.now += 29.5
    late = await client.get(ENTITY, headers=headers)
    assert (late.status, quota(late), late.headers["Retry-After"]) == (429, (2, 0, 1), "1")
    clock.now += 0.5
    fresh = await client.get(ENTITY, headers=headers)
    assert (fresh.status, quota(fresh)) == (200, (2, 1, 60))


async def test_the_default_limit_is_300_calls_a_minute(aiohttp_client: AiohttpClient) -> None:
    assert SimulatorConfig().api_requests_per_minute == 300
    client, headers = await start_with_token(aiohttp_client)
    statuses = [(await client.get(ENTITY, headers=headers)).status for _ in range(300)]
    assert statuses == [200] * 300
    response = await client.get(ENTITY, headers=headers)
    assert (response.status, quota(response)) == (429, (300, 0, 60))


# ---- links as AgentSync writes them ----


async def test_v2_list_links_are_absolute_with_percent_encoded_tokens(
    aiohttp_client: AiohttpClient,
) -> None:
    client, headers = await start_with_token(aiohttp_client)
    body = await (await client.get("/v2/entities?limit=2", headers=headers)).json()
    links = body["links"]
    assert links["self"]["href"] == f"{origin(client)}/v2/entities?limit=2"
    prefix = f"{origin(client)}/v2/entities?continuationToken=%2B%2F"
    assert links["next"]["href"].startswith(prefix)
    assert links["next"]["href"].endswith("&limit=2")
    entity_links = [entity["links"]["self"]["href"] for entity in body["embedded"]["entities"]]
    assert all(href.startswith(f"{origin(client)}/v2/entities/") for href in entity_links)


@pytest.mark.parametrize("listing", ["entities", "licenses"])
async def test_following_links_next_href_gives_page_two(
    aiohttp_client: AiohttpClient, listing: str
) -> None:
    client, headers = await start_with_token(aiohttp_client)
    whole = await (await client.get(f"/v2/{listing}?limit=100", headers=headers)).json()
    first = await (await client.get(f"/v2/{listing}?limit=3", headers=headers)).json()
    response = await follow(client, first["links"]["next"]["href"], headers)
    assert response.status == 200
    second = await response.json()
    assert second["embedded"][listing] == whole["embedded"][listing][3:6]
    assert second["links"]["self"]["href"] == first["links"]["next"]["href"]


async def test_a_link_whose_token_lost_its_percent_encoding_is_refused(
    aiohttp_client: AiohttpClient,
) -> None:
    client, headers = await start_with_token(aiohttp_client)
    first = await (await client.get("/v2/licenses?limit=3", headers=headers)).json()
    decoded = first["links"]["next"]["href"].replace("%2B", "+").replace("%2F", "/")
    response = await follow(client, decoded, headers)
    assert response.status == 400
    assert_agentsync_error(await response.json(), 400, "bad_request", "/v2/licenses")


async def test_a_token_of_one_list_is_refused_by_another(aiohttp_client: AiohttpClient) -> None:
    client, headers = await start_with_token(aiohttp_client)
    first = await (await client.get("/v2/licenses?limit=3", headers=headers)).json()
    query = URL(first["links"]["next"]["href"], encoded=True).raw_query_string
    response = await client.get(URL(f"/v2/entities?{query}", encoded=True), headers=headers)
    assert response.status == 400


async def test_links_name_the_public_url_with_its_base_path(
    aiohttp_client: AiohttpClient,
) -> None:
    config = SimulatorConfig(public_url="https://producersync.example.test/gateway/")
    client, headers = await start_with_token(aiohttp_client, config=config)
    body = await (await client.get("/v2/entities?limit=4", headers=headers)).json()
    base = "https://producersync.example.test/gateway/v2/entities"
    assert body["links"]["self"]["href"] == f"{base}?limit=4"
    assert body["links"]["next"]["href"].startswith(f"{base}?continuationToken=%2B%2F")
    assert body["embedded"]["entities"][0]["links"]["self"]["href"].startswith(f"{base}/")


async def test_contracting_links_stay_relative(aiohttp_client: AiohttpClient) -> None:
    config = SimulatorConfig(public_url="https://contracting.example.test")
    client, headers = await start_with_token(aiohttp_client, config=config)
    body = await (await client.get(f"{PRODUCTS}?size=5", headers=headers)).json()
    assert body["_links"]["next"]["href"] == f"{PRODUCTS}?page=1&size=5"


@pytest.mark.parametrize(
    "public_url",
    ["ftp://example.test", "example.test", "http://", "http://h/?q=1", "http://h/#f", "http://a b"],
)
def test_config_refuses_a_public_url_that_is_not_a_plain_http_url(public_url: str) -> None:
    with pytest.raises(ValueError, match="public_url"):
        SimulatorConfig(public_url=public_url)


def test_config_refuses_a_public_url_with_credentials_without_showing_them() -> None:
    with pytest.raises(ValueError, match="public_url") as raised:
        SimulatorConfig(public_url="https://user:hunter2@example.test")
    assert "hunter2" not in str(raised.value)


def test_config_refuses_an_api_limit_below_one() -> None:
    with pytest.raises(ValueError, match="api_requests_per_minute"):
        SimulatorConfig(api_requests_per_minute=0)
