"""The simulator's token endpoint, checked on the wire against AgentSync's public auth docs."""

from __future__ import annotations

import base64
from urllib.parse import quote_plus

from pytest_aiohttp import AiohttpClient

from proxy.simulator import SimulatorConfig
from tests.clocks import FakeClock, start

CREDENTIALS = {"client_id": "demo-client", "client_secret": "demo-secret"}
FORM = {"grant_type": "client_credentials", **CREDENTIALS}


def basic(client_id: str, client_secret: str) -> str:
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


async def test_form_body_credentials_get_a_bearer_token_with_every_granted_scope(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await start(aiohttp_client)
    response = await client.post("/oauth2/token", data=FORM)
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body.keys() == {"token_type", "expires_in", "access_token", "scope"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert len(body["access_token"]) >= 32
    assert body["scope"] == "rino_api_agency_read rino_api_agency_write"


async def test_older_oauth_token_path_also_issues_tokens(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    response = await client.post("/oauth/token", data=FORM)
    assert response.status == 200
    assert (await response.json())["token_type"] == "Bearer"


async def test_each_token_is_different(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    first = await (await client.post("/oauth2/token", data=FORM)).json()
    second = await (await client.post("/oauth2/token", data=FORM)).json()
    assert first["access_token"] != second["access_token"]


async def test_json_body_is_refused_as_invalid_request(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    response = await client.post("/oauth2/token", json=FORM)
    assert response.status == 400
    body = await response.json()
    assert body["error"] == "invalid_request"
    assert "application/x-www-form-urlencoded" in body["error_description"]


async def test_missing_grant_type_is_unsupported(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    response = await client.post("/oauth2/token", data=CREDENTIALS)
    assert response.status == 400
    assert (await response.json())["error"] == "unsupported_grant_type"


async def test_other_grant_type_is_unsupported(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    response = await client.post("/oauth2/token", data={**FORM, "grant_type": "password"})
    assert response.status == 400
    assert (await response.json())["error"] == "unsupported_grant_type"


async def test_http_basic_credentials_are_form_urlencoded_before_encoding(
    aiohttp_client: AiohttpClient,
) -> None:
    config = SimulatorConfig(client_id="id:with colon", client_secret="s3cr+t/%=&")
    client = await start(aiohttp_client, config)
    response = await client.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic(config.client_id, config.client_secret)},
    )
    assert response.status == 200
    assert (await response.json())["token_type"] == "Bearer"


async def test_basic_and_body_credentials_together_are_refused(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await start(aiohttp_client)
    response = await client.post(
        "/oauth2/token",
        data=FORM,
        headers={"Authorization": basic("demo-client", "demo-secret")},
    )
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_request"


async def test_wrong_secret_gets_the_documented_invalid_client_body(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await start(aiohttp_client)
    response = await client.post("/oauth2/token", data={**FORM, "client_secret": "guess-me"})
    assert response.status == 401
    text = await response.text()
    assert "guess-me" not in text
    body = await response.json()
    assert body.keys() == {"errorCode", "errorSummary", "errorLink", "errorId", "errorCauses"}
    assert body["errorCode"] == "invalid_client"
    assert body["errorSummary"] == "Invalid value for 'client_id' parameter."
    assert body["errorLink"] == "invalid_client"
    assert isinstance(body["errorId"], str) and body["errorId"]
    assert body["errorCauses"] == []


async def test_unknown_client_id_gets_invalid_client(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    response = await client.post("/oauth2/token", data={**FORM, "client_id": "someone-else"})
    assert response.status == 401
    assert (await response.json())["errorCode"] == "invalid_client"


async def test_wrong_basic_credentials_are_challenged_with_basic(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await start(aiohttp_client)
    response = await client.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic("demo-client", "wrong")},
    )
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert (await response.json())["errorCode"] == "invalid_client"


async def test_requested_subset_of_granted_scopes_is_granted(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await start(aiohttp_client)
    response = await client.post("/oauth2/token", data={**FORM, "scope": "rino_api_agency_read"})
    assert response.status == 200
    assert (await response.json())["scope"] == "rino_api_agency_read"


async def test_scope_beyond_the_grant_is_invalid_scope(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    scope = "rino_api_agency_read rino_api_agency_delete"
    response = await client.post("/oauth2/token", data={**FORM, "scope": scope})
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_scope"


async def test_request_past_the_per_minute_limit_gets_429_with_retry_after(
    aiohttp_client: AiohttpClient,
) -> None:
    clock = FakeClock()
    client = await start(aiohttp_client, SimulatorConfig(token_requests_per_minute=200), clock)
    for _ in range(200):
        clock.now += 0.1
        assert (await client.post("/oauth2/token", data=FORM)).status == 200
    response = await client.post("/oauth2/token", data=FORM)
    assert response.status == 429
    # The first of the 200 was 19.9 s ago, so its slot frees in 40.1 s.
    assert response.headers["Retry-After"] == "41"
    assert "errorCode" in await response.json()


async def test_rate_limit_slot_frees_after_sixty_seconds(aiohttp_client: AiohttpClient) -> None:
    clock = FakeClock()
    client = await start(aiohttp_client, SimulatorConfig(token_requests_per_minute=2), clock)
    for _ in range(2):
        assert (await client.post("/oauth2/token", data=FORM)).status == 200
    assert (await client.post("/oauth2/token", data=FORM)).status == 429
    clock.now += 60
    assert (await client.post("/oauth2/token", data=FORM)).status == 200


async def test_token_is_refused_once_its_lifetime_has_passed(
    aiohttp_client: AiohttpClient,
) -> None:
    clock = FakeClock()
    client = await start(aiohttp_client, SimulatorConfig(token_lifetime=100), clock)
    token = (await (await client.post("/oauth2/token", data=FORM)).json())["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    clock.now += 99
    assert (await client.get("/v2/entities/17345829", headers=headers)).status == 200
    clock.now += 1
    response = await client.get("/v2/entities/17345829", headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_config_repr_hides_the_secret() -> None:
    assert "demo-secret" not in repr(SimulatorConfig())
