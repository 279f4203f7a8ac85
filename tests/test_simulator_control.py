"""The simulator's /_simulator/ control endpoints (revoke, config, faults, stats and reset) and
its command line's API settings."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from proxy.simulator import SIMULATOR_STATE, SimulatorConfig, create_app
from tests.cli_process import demo_process, run_cli
from tests.clocks import Client, FakeClock, start

FORM = {
    "grant_type": "client_credentials",
    "client_id": "demo-client",
    "client_secret": "demo-secret",
}
ENTITY = "/v2/entities/17345829"


async def bearer(client: Client) -> dict[str, str]:
    response = await client.post("/oauth2/token", data=FORM)
    assert response.status == 200
    return {"Authorization": f"Bearer {(await response.json())['access_token']}"}


async def test_revoke_invalidates_every_issued_token(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    first, second = await bearer(client), await bearer(client)
    response = await client.post("/_simulator/revoke")
    assert response.status == 200
    assert (await response.json())["revoked"] == 2
    assert (await client.get(ENTITY, headers=first)).status == 401
    assert (await client.get(ENTITY, headers=second)).status == 401


async def test_tokens_issued_after_a_revoke_work(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    await bearer(client)
    await client.post("/_simulator/revoke")
    assert (await client.get(ENTITY, headers=await bearer(client))).status == 200


async def test_config_lifetime_applies_to_tokens_issued_afterwards(
    aiohttp_client: AiohttpClient,
) -> None:
    clock = FakeClock()
    client = await start(aiohttp_client, clock=clock)
    old = await bearer(client)
    response = await client.post("/_simulator/config", json={"token_lifetime": 30})
    assert response.status == 200
    assert (await response.json())["token_lifetime"] == 30
    token = await (await client.post("/oauth2/token", data=FORM)).json()
    assert token["expires_in"] == 30
    new = {"Authorization": f"Bearer {token['access_token']}"}
    clock.now += 30
    assert (await client.get(ENTITY, headers=new)).status == 401
    assert (await client.get(ENTITY, headers=old)).status == 200


async def test_config_refuses_a_non_positive_lifetime(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    response = await client.post("/_simulator/config", json={"token_lifetime": 0})
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_request"


async def test_faults_fail_the_next_count_token_requests_then_stop(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await start(aiohttp_client)
    response = await client.post("/_simulator/faults", json={"status": 503, "count": 2})
    assert response.status == 200
    statuses = [(await client.post("/oauth2/token", data=FORM)).status for _ in range(3)]
    assert statuses == [503, 503, 200]


async def test_fault_response_is_json(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    await client.post("/_simulator/faults", json={"status": 500})
    response = await client.post("/oauth2/token", data=FORM)
    assert response.status == 500
    assert "error" in await response.json()


async def test_fault_429_carries_retry_after(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    await client.post("/_simulator/faults", json={"status": 429, "count": 1})
    response = await client.post("/oauth2/token", data=FORM)
    assert response.status == 429
    assert response.headers["Retry-After"] == "1"


async def test_fault_delay_holds_the_token_response_back(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    await client.post("/_simulator/faults", json={"status": 503, "count": 1, "delay": 0.05})
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.post("/oauth2/token", data=FORM)
    # Only a lower bound: a busy machine may take longer, never shorter.
    assert loop.time() - started >= 0.04
    assert response.status == 503


async def test_faults_refuse_invalid_json(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    response = await client.post(
        "/_simulator/faults", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_request"


async def test_faults_refuse_wrong_types_and_name_each(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    fault = {"status": "503", "count": True, "delay": -1}
    response = await client.post("/_simulator/faults", json=fault)
    assert response.status == 400
    description = (await response.json())["error_description"]
    assert all(name in description for name in ("status", "count", "delay"))


async def test_stats_count_token_requests_tokens_and_api_statuses(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await start(aiohttp_client)
    headers = await bearer(client)
    await client.post("/oauth2/token", data={**FORM, "client_secret": "wrong"})
    await client.get(ENTITY, headers=headers)
    await client.get(ENTITY, headers=headers)
    await client.get(ENTITY)
    await client.get("/v2/entities/1", headers=headers)
    response = await client.get("/_simulator/stats")
    assert response.status == 200
    assert await response.json() == {
        "token_requests": 2,
        "tokens_issued": 1,
        "api_calls": {"200": 2, "401": 1, "404": 1},
    }


async def test_counters_are_readable_in_process(aiohttp_client: AiohttpClient) -> None:
    app = create_app(SimulatorConfig(), FakeClock())
    client = await aiohttp_client(app)
    await client.post("/_simulator/faults", json={"status": 503})
    await client.post("/oauth2/token", data=FORM)
    state = app[SIMULATOR_STATE]
    assert (state.token_requests, state.tokens_issued) == (1, 0)


async def test_reset_clears_counters_faults_and_tokens(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    headers = await bearer(client)
    await client.get(ENTITY, headers=headers)
    await client.post("/_simulator/faults", json={"status": 503, "count": 5})
    response = await client.post("/_simulator/reset")
    assert response.status == 200
    assert await response.json() == {"token_requests": 0, "tokens_issued": 0, "api_calls": {}}
    assert (await client.get(ENTITY, headers=headers)).status == 401
    assert (await client.post("/oauth2/token", data=FORM)).status == 200


async def test_wrong_method_on_a_control_path_answers_json(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    response = await client.get("/_simulator/revoke")
    assert response.status == 405
    assert (await response.json())["error"] == "method_not_allowed"


# ---- the API's rate limit, steered at run time ----


async def test_config_changes_the_api_rate_limit_for_the_next_call(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await start(aiohttp_client, config=SimulatorConfig(api_requests_per_minute=10))
    headers = await bearer(client)
    for _ in range(3):
        assert (await client.get(ENTITY, headers=headers)).headers["ratelimit-limit"] == "10"
    response = await client.post("/_simulator/config", json={"api_requests_per_minute": 4})
    assert response.status == 200
    assert (await response.json())["api_requests_per_minute"] == 4
    last = await client.get(ENTITY, headers=headers)
    assert (last.status, last.headers["ratelimit-remaining"]) == (200, "0")
    assert (await client.get(ENTITY, headers=headers)).status == 429
    await client.post("/_simulator/config", json={"api_requests_per_minute": 5})
    more = await client.get(ENTITY, headers=headers)
    assert (more.status, more.headers["ratelimit-limit"]) == (200, "5")


@pytest.mark.parametrize("value", [0, -1, 1.5, "10", True, None, [60]])
async def test_config_refuses_an_api_rate_limit_that_is_not_a_whole_number_of_at_least_1(
    aiohttp_client: AiohttpClient, value: Any
) -> None:
    client = await start(aiohttp_client)
    response = await client.post("/_simulator/config", json={"api_requests_per_minute": value})
    assert response.status == 400
    assert await response.json() == {
        "error": "invalid_request",
        "error_description": "'api_requests_per_minute' must be a whole number of at least 1",
    }
    settings = await (await client.get("/_simulator/config")).json()
    assert settings["api_requests_per_minute"] == 300


async def test_config_shows_the_api_rate_limit_and_the_public_url(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await start(aiohttp_client)
    settings = await (await client.get("/_simulator/config")).json()
    assert settings["api_requests_per_minute"] == 300
    assert settings["public_url"] == str(client.make_url("/").origin())


async def test_stats_count_429s_like_other_statuses(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, config=SimulatorConfig(api_requests_per_minute=2))
    headers = await bearer(client)
    statuses = [(await client.get(ENTITY, headers=headers)).status for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    await client.get(ENTITY)
    stats = await (await client.get("/_simulator/stats")).json()
    assert stats["api_calls"] == {"200": 2, "401": 1, "429": 2}


async def test_reset_gives_back_the_api_budget_and_the_configured_limit(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await start(aiohttp_client, config=SimulatorConfig(api_requests_per_minute=2))
    headers = await bearer(client)
    await client.post("/_simulator/config", json={"api_requests_per_minute": 1})
    await client.get(ENTITY, headers=headers)
    assert (await client.get(ENTITY, headers=headers)).status == 429
    await client.post("/_simulator/reset")
    response = await client.get(ENTITY, headers=await bearer(client))
    assert (response.status, response.headers["ratelimit-remaining"]) == (200, "1")


# ---- the command line ----


@asynccontextmanager
async def simulator_process(*args: str) -> AsyncIterator[str]:
    """`agentsync-proxy simulator` on a free loopback port; yields the URL it logs."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "simulator",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        *args,
        env={"PATH": os.environ["PATH"]},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        record: dict[str, Any] = {}
        async with asyncio.timeout(20):
            while record.get("event") != "simulator_listening":
                line = await process.stderr.readline()
                assert line, "the simulator ended before it served"
                record = json.loads(line)
        yield record["url"]
    finally:
        process.kill()
        await process.wait()


async def first_entities_page(url: str) -> tuple[aiohttp.ClientResponse, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/oauth2/token", data=FORM) as response:
            token = (await response.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(url + "/v2/entities?limit=2", headers=headers) as response:
            return response, await response.json()


async def test_simulator_on_port_0_links_to_the_port_it_got_and_allows_300_calls() -> None:
    async with simulator_process() as url:
        assert not url.endswith(":0")
        response, body = await first_entities_page(url)
    assert response.headers["ratelimit-limit"] == "300"
    assert body["links"]["self"]["href"] == f"{url}/v2/entities?limit=2"
    assert body["links"]["next"]["href"].startswith(f"{url}/v2/entities?continuationToken=")


async def test_simulator_flags_set_the_public_url_and_the_api_rate_limit() -> None:
    public = "https://producersync.example.test:8443/base"
    args = ("--public-url", public, "--api-requests-per-minute", "7")
    async with simulator_process(*args) as url:
        response, body = await first_entities_page(url)
    assert response.headers["ratelimit-limit"] == "7"
    assert body["links"]["self"]["href"] == f"{public}/v2/entities?limit=2"


async def test_demo_allows_60_api_calls_a_minute_by_default() -> None:
    async with demo_process() as printed:
        found = re.search(r"the AgentSync simulator is on (http://\S+),", printed)
        assert found is not None
        response, _ = await first_entities_page(found[1])
    assert response.headers["ratelimit-limit"] == "60"


@pytest.mark.parametrize("command", ["simulator", "demo"])
@pytest.mark.parametrize("value", ["0", "-1", "1.5", "x", "١٢", "", "1" * 10])
async def test_a_bad_api_rate_limit_flag_is_one_line_and_exit_2(command: str, value: str) -> None:
    # An unusable --listen makes a wrongly accepted value end at once instead of serving on.
    done = await run_cli(command, "--listen", "127.0.0.1:99999", "--api-requests-per-minute", value)
    assert done.status == 2
    assert done.stderr.splitlines() == [
        f"agentsync-proxy: argument --api-requests-per-minute: {value!r} is not a whole number"
        " of at least 1"
    ]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("ftp://h.test", "'ftp://h.test' is not an http:// or https:// URL with a host"),
        ("example.test:8090", "'example.test:8090' is not an http:// or https:// URL with a host"),
        ("http://h/?page=1", "'http://h/?page=1' must not have a query or a fragment"),
        ("http://me:hunter2@h", "the URL must not carry a user name or password"),
    ],
)
@pytest.mark.parametrize("command", ["simulator", "demo"])
async def test_a_bad_public_url_flag_is_one_line_and_exit_2(
    command: str, value: str, problem: str
) -> None:
    done = await run_cli(command, "--listen", "127.0.0.1:99999", "--public-url", value)
    assert done.status == 2
    assert done.stderr.splitlines() == [f"agentsync-proxy: argument --public-url: {problem}"]
