"""Operations: probes, readiness, metrics and the access log."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import create_app
from proxy.credentials import ClientSecret, Secret
from proxy.keys import ACCESS_LOG, METRICS, SHUTTING_DOWN, TOKENS
from proxy.servers import RunningProxy, RunningSimulator, running_proxy, settings_for, start
from tests.conftest import ProxyFactory
from tests.leaks import temporary_files, until
from tests.rawhttp import RawUpstream, Received, Writer, raw_request, reply, response_bytes


@pytest.fixture
def logs() -> Any:
    with structlog.testing.capture_logs() as captured:
        yield captured


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        body = await response.json() if response.content_type == "application/json" else None
        return response.status, body


async def access_line(app: web.Application, logs: list[dict[str, Any]]) -> dict[str, Any]:
    """The one request's access line, once it is written."""
    await app[ACCESS_LOG].written()
    [line] = [entry for entry in logs if entry["event"] == "request"]
    return line


async def scrape(proxy: RunningProxy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as session, session.get(proxy.url + "/-/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_healthy_and_ready_answer_200_with_a_token(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    await proxy.app[TOKENS].token()
    assert await get(proxy.url + "/-/healthy") == (200, {"status": "healthy"})
    assert await get(proxy.url + "/-/ready") == (200, {"status": "ready"})


async def test_not_ready_without_a_token_and_the_reason_says_why(
    make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    proxy = await make_proxy(client_secret=ClientSecret(Secret("wrong")))
    await get(proxy.url + "/v1/x")  # the token request is refused
    status, body = await get(proxy.url + "/-/ready")
    assert status == 503
    assert "token_request_rejected" in body["reason"]
    status, _ = await get(proxy.url + "/-/healthy")
    assert status == 200


async def test_not_ready_while_shutting_down(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    await proxy.app[TOKENS].token()
    assert (await get(proxy.url + "/-/ready"))[0] == 200
    proxy.app[SHUTTING_DOWN].set()  # what SIGTERM does first
    assert await get(proxy.url + "/-/ready") == (
        503,
        {"status": "not ready", "reason": "shutting down"},
    )


@pytest.mark.parametrize("path", ["/-/", "/-/other", "/-/metrics/x", "/-/healthy/"])
async def test_nothing_under_the_proxys_own_prefix_is_forwarded(
    make_proxy: ProxyFactory, upstream: RawUpstream, path: str
) -> None:
    proxy = await make_proxy()
    status, body = await get(proxy.url + path)
    assert status == 404
    assert body["error"] == "not_found"
    assert upstream.received == []


async def test_metrics_count_requests_replays_token_failures_and_errors(
    agentsync_simulator: RunningSimulator, make_proxy: ProxyFactory, upstream: RawUpstream
) -> None:
    seen: list[str] = []

    async def first_token_refused(received: Received, writer: Writer) -> None:
        token = received.header("Authorization") or ""
        seen.append(token)
        writer.write(response_bytes(401 if token == seen[0] else 200, b"{}"))
        await writer.drain()

    upstream.responder = first_token_refused
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            agentsync_simulator.url + "/_simulator/faults", json={"status": 503, "count": 1}
        ) as response,
    ):
        assert response.status == 200
    proxy = await make_proxy(max_body_size=10)
    for _ in range(3):
        assert (await get(proxy.url + "/v1/x"))[0] == 200
    async with (
        aiohttp.ClientSession() as session,
        session.post(proxy.url + "/v1/x", data=b"x" * 11) as response,
    ):
        assert response.status == 413
    metrics = await scrape(proxy)

    def value(name: str, **labels: str) -> float:
        return metrics.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("agentsync_proxy_requests_total", method="GET", status_class="2xx") == 3
    assert value("agentsync_proxy_requests_total", method="POST", status_class="4xx") == 1
    assert value("agentsync_proxy_replays_total", outcome="success", reason="401") == 1
    assert value("agentsync_proxy_token_requests_total", outcome="unavailable") == 1
    assert value("agentsync_proxy_token_requests_total", outcome="success") == 2
    assert value("agentsync_proxy_errors_total", error="request_too_large") == 1
    assert value("agentsync_proxy_request_duration_seconds_count") == 4
    assert value("agentsync_proxy_upstream_duration_seconds_count") == 3
    assert value("agentsync_proxy_requests_in_flight") == 0
    assert value("agentsync_proxy_response_body_bytes_total") == 6
    assert value("agentsync_proxy_token_request_duration_seconds_count") == 3
    assert 3500 < value("agentsync_proxy_token_expires_in_seconds") <= 3600


async def test_rate_limit_redis_and_link_metrics_appear_once_reported(
    make_proxy: ProxyFactory,
) -> None:
    proxy = await make_proxy()
    before = await scrape(proxy)
    assert math.isnan(before[("agentsync_proxy_rate_limit_remaining", ())])
    assert math.isnan(before[("agentsync_proxy_redis_up", ())])
    assert before[("agentsync_proxy_rate_limited_total", ())] == 0
    metrics = proxy.app[METRICS]
    metrics.held(0.02)
    metrics.held(45.0)
    metrics.rate_limited()
    metrics.upstream_429()
    metrics.upstream_429()
    metrics.announced(17)
    metrics.redis(False)
    metrics.links_rewritten()
    metrics.replayed(429, "success")
    after = await scrape(proxy)

    def value(name: str, **labels: str) -> float:
        return after[(name, tuple(sorted(labels.items())))]

    assert value("agentsync_proxy_rate_limit_held_total") == 2
    assert value("agentsync_proxy_rate_limit_held_seconds_count") == 2
    assert value("agentsync_proxy_rate_limit_held_seconds_sum") == pytest.approx(45.02)
    assert value("agentsync_proxy_rate_limit_held_seconds_bucket", le="0.01") == 0
    assert value("agentsync_proxy_rate_limit_held_seconds_bucket", le="0.025") == 1
    assert value("agentsync_proxy_rate_limit_held_seconds_bucket", le="60.0") == 2
    assert value("agentsync_proxy_rate_limited_total") == 1
    assert value("agentsync_proxy_upstream_rate_limited_total") == 2
    assert value("agentsync_proxy_rate_limit_remaining") == 17
    assert value("agentsync_proxy_redis_up") == 0
    assert value("agentsync_proxy_links_rewritten_total") == 1
    assert value("agentsync_proxy_replays_total", outcome="success", reason="429") == 1
    metrics.redis(True)
    assert (await scrape(proxy))[("agentsync_proxy_redis_up", ())] == 1


async def test_a_replay_that_gets_no_answer_is_logged_and_counted_as_a_failed_replay(
    make_proxy: ProxyFactory, upstream: RawUpstream, logs: list[dict[str, Any]]
) -> None:
    seen: list[str] = []
    replay_arrived = asyncio.Event()

    async def refuse_then_hang(received: Received, writer: Writer) -> None:
        seen.append(received.header("Authorization") or "")
        if len(seen) == 1:
            writer.write(response_bytes(401, b"{}"))
            await writer.drain()
        else:
            replay_arrived.set()
            await asyncio.Event().wait()  # never answers; the proxy's timeout ends it

    upstream.responder = refuse_then_hang
    proxy = await make_proxy(upstream_timeout=0.5)
    status, body = await get(proxy.url + "/v1/x")
    assert (status, body["error"]) == (504, "upstream_timeout")
    assert replay_arrived.is_set() and seen[0] != seen[1]
    metrics = await scrape(proxy)
    failed = ("agentsync_proxy_replays_total", (("outcome", "failed"), ("reason", "401")))
    assert metrics[failed] == 1
    [line] = [entry for entry in logs if entry["event"] == "request"]
    assert (line["status"], line["replayed"], line["error"]) == (504, True, "upstream_timeout")


async def test_access_line_has_every_field_and_masks_query_values(
    make_proxy: ProxyFactory, logs: list[dict[str, Any]]
) -> None:
    proxy = await make_proxy()
    await get(proxy.url + "/v2/entities?npn=17345829&lastName=Delgado")
    line = await access_line(proxy.app, logs)
    assert line["path"] == "/v2/entities?npn=***&lastName=***"
    for field in (
        "request_id",
        "method",
        "status",
        "upstream_status",
        "duration_ms",
        "upstream_ms",
        "bytes_in",
        "bytes_out",
        "replayed",
        "client",
    ):
        assert field in line
    assert (line["method"], line["status"], line["client"]) == ("GET", 200, "127.0.0.1")


async def test_access_line_is_written_while_the_next_request_is_upstream(
    make_proxy: ProxyFactory, upstream: RawUpstream, logs: list[dict[str, Any]]
) -> None:
    """An answered request's line waits (a few ms at most) for the proxy to be idle: at the
    latest while the next request is away at the upstream, not in that request's way."""
    lines_seen: list[int] = []
    answer = reply()

    async def respond(received: Received, writer: Writer) -> None:
        lines_seen.append(sum(entry["event"] == "request" for entry in logs))
        await answer(received, writer)

    upstream.responder = respond
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(proxy.url + "/v1/x") as response:
                assert response.status == 200
    assert lines_seen == [0, 1, 2]
    await proxy.app[ACCESS_LOG].written()
    assert sum(entry["event"] == "request" for entry in logs) == 3


async def test_duration_ends_with_the_answer_not_when_the_line_is_written(
    make_proxy: ProxyFactory, logs: list[dict[str, Any]]
) -> None:
    proxy = await make_proxy()
    started = time.perf_counter()
    assert (await get(proxy.url + "/v1/x"))[0] == 200
    elapsed_ms = (time.perf_counter() - started) * 1000
    line = await access_line(proxy.app, logs)  # some milliseconds later
    assert line["duration_ms"] <= elapsed_ms


async def test_access_lines_of_the_last_requests_are_written_at_shutdown(
    agentsync_simulator: RunningSimulator, logs: list[dict[str, Any]]
) -> None:
    async with running_proxy(settings_for(agentsync_simulator)) as proxy:
        status, _ = await get(proxy.url + "/v2/entities")
    assert [entry["status"] for entry in logs if entry["event"] == "request"] == [status]


@pytest.mark.uvloop_too
async def test_an_upload_cut_at_shutdown_while_its_spool_is_written_keeps_its_access_line(
    nothing_leaked: None,
    agentsync_simulator: RunningSimulator,
    upstream: RawUpstream,
    logs: list[dict[str, Any]],
) -> None:
    """Shutdown cancels a request it has waited for, and then, as its connection closes,
    cancels it again: the second cancellation lands while the request waits for its spool
    file's last write to end (here the only worker thread is busy), and its line must
    survive it."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    busy = threading.Event()
    files = temporary_files()
    settings = settings_for(agentsync_simulator, api_base_url=upstream.url, spool_threshold=1024)
    app = create_app(settings)
    runner, port = await start(app, "--listen", settings.listen, shutdown_timeout=0.1)
    try:
        await app[TOKENS].token()
        worker = loop.run_in_executor(None, busy.wait)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n"
            + b"x" * 200_000
        )
        await writer.drain()
        async with asyncio.timeout(10):  # the body goes upstream as it arrives
            await upstream.head_arrived.wait()
    finally:
        try:
            await runner.cleanup()
        finally:
            busy.set()
    await worker
    await until(lambda: temporary_files() == files)  # the spool's last write, then its file
    writer.close()
    line = await access_line(app, logs)
    assert (line["method"], line["path"], line["bytes_in"]) == ("POST", "/v1/upload", 200_000)
    assert app[METRICS].in_flight == 0


async def test_a_query_value_without_a_name_is_masked_too(
    make_proxy: ProxyFactory, logs: list[dict[str, Any]]
) -> None:
    proxy = await make_proxy()
    await get(proxy.url + "/v2/entities?17345829&state=TX&&Delgado")
    line = await access_line(proxy.app, logs)
    assert line["path"] == "/v2/entities?***&state=***&&***"


async def test_log_query_shows_query_values(
    make_proxy: ProxyFactory, logs: list[dict[str, Any]]
) -> None:
    proxy = await make_proxy(log_query=True)
    await get(proxy.url + "/v2/entities?npn=17345829")
    line = await access_line(proxy.app, logs)
    assert line["path"] == "/v2/entities?npn=17345829"


async def test_probes_are_logged_only_with_log_probes(
    make_proxy: ProxyFactory, logs: list[dict[str, Any]]
) -> None:
    quiet = await make_proxy()
    await get(quiet.url + "/-/healthy")
    assert [entry for entry in logs if entry["event"] == "request"] == []
    chatty = await make_proxy(log_probes=True)
    await chatty.app[TOKENS].token()
    await get(chatty.url + "/-/ready")
    [line] = [entry for entry in logs if entry["event"] == "request"]
    assert (line["path"], line["status"]) == ("/-/ready", 200)


async def test_credentials_in_an_absolute_target_never_reach_the_access_line(
    make_proxy: ProxyFactory, logs: list[dict[str, Any]]
) -> None:
    proxy = await make_proxy(log_query=True)
    target = "http://agent:s3cr3t@127.0.0.1/v1/x"
    answer = await raw_request(
        proxy.port, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    )
    assert answer.status == 403
    line = await access_line(proxy.app, logs)
    assert line["path"] == "http://***@127.0.0.1/v1/x"


async def test_a_logged_probe_masks_its_query_values_too(
    make_proxy: ProxyFactory, logs: list[dict[str, Any]]
) -> None:
    proxy = await make_proxy(log_probes=True)
    assert (await get(proxy.url + "/-/healthy?token=s3cr3t"))[0] == 200
    [line] = [entry for entry in logs if entry["event"] == "request"]
    assert line["path"] == "/-/healthy?token=***"


async def test_policy_evaluation_failed_logs_which_scope_to_add(
    agentsync_simulator: RunningSimulator, logs: list[dict[str, Any]]
) -> None:
    async with (
        running_proxy(settings_for(agentsync_simulator)) as proxy,
        aiohttp.ClientSession() as session,
        session.delete(proxy.url + "/contracting/v1/customers/products/101") as response,
    ):
        assert response.status == 403
        assert (await response.json())["message"] == "Policy evaluation failed"
    [hint] = [entry for entry in logs if entry["event"] == "scope_missing"]
    assert "rino_api_agency_delete" in hint["hint"]
    assert "AGENTSYNC_SCOPE" in hint["hint"]


async def test_plain_403_from_the_upstream_gets_no_scope_hint(
    make_proxy: ProxyFactory, upstream: RawUpstream, logs: list[dict[str, Any]]
) -> None:
    upstream.responder = reply(403, b'{"error": "forbidden"}')
    proxy = await make_proxy()
    assert (await get(proxy.url + "/v1/x"))[0] == 403
    assert not [entry for entry in logs if entry["event"] == "scope_missing"]


async def test_the_documented_fixtures_give_a_working_proxy(
    agentsync_proxy: RunningProxy, agentsync_simulator: RunningSimulator
) -> None:
    status, body = await get(agentsync_proxy.url + "/contracting/v1/customers/carriers")
    assert status == 200
    assert body["_embedded"]["carriers"][0]["name"] == "Prairie Mutual Life Insurance Company"
    assert agentsync_simulator.state.tokens_issued == 1
