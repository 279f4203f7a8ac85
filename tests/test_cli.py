"""The real command line, in subprocesses: check, serve, logs, SIGTERM and memory."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy import __version__
from proxy.servers import RunningSimulator
from tests.cli_process import run_cli, serve, simulator_env, start_serve, until_ready
from tests.rawhttp import RawUpstream, Received, Writer, reply, response_bytes


async def test_check_prints_scope_and_expiry_but_never_the_token(
    agentsync_simulator: RunningSimulator,
) -> None:
    env = simulator_env(agentsync_simulator, AGENTSYNC_SCOPE="rino_api_agency_read")
    result = await run_cli("check", env=env)
    assert result.status == 0, result.stderr
    assert "scope rino_api_agency_read" in result.stdout
    assert "expires 20" in result.stdout
    assert agentsync_simulator.state.tokens_issued == 1
    assert agentsync_simulator.config.client_secret not in result.stdout + result.stderr
    for token in agentsync_simulator.state.tokens.issued():
        assert token not in result.stdout + result.stderr


async def test_check_with_a_wrong_secret_exits_1_with_one_line(
    agentsync_simulator: RunningSimulator,
) -> None:
    env = simulator_env(agentsync_simulator, AGENTSYNC_CLIENT_SECRET="wrong-secret-value")
    result = await run_cli("check", env=env)
    assert result.status == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("agentsync-proxy: token_request_rejected: ")
    assert "wrong-secret-value" not in result.stderr
    assert "Traceback" not in result.stderr


async def test_check_waits_for_a_token_no_longer_than_the_token_timeout(
    upstream: RawUpstream,
) -> None:
    async def never_answer(received: Received, writer: Writer) -> None:
        await asyncio.Event().wait()

    upstream.responder = never_answer
    env = {
        "AGENTSYNC_CLIENT_ID": "id",
        "AGENTSYNC_CLIENT_SECRET": "s",
        "AGENTSYNC_TOKEN_URL": upstream.url + "/oauth2/token",
        "AGENTSYNC_API_BASE_URL": upstream.url,
    }
    result = await run_cli("check", "--token-timeout", "1", env=env)
    assert result.status == 1
    assert result.stderr.splitlines()[-1] == (
        "agentsync-proxy: token_unavailable: no token yet: the token endpoint has not answered"
        " within --token-timeout; check AGENTSYNC_TOKEN_URL and the network"
    )
    assert len(upstream.received) == 1  # given up on, not retried for the default 30 s


async def test_check_with_the_token_endpoint_failing_exits_1_with_one_line(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    async def unavailable(request: web.Request) -> web.Response:
        return web.json_response({"error": "x"}, status=503, headers={"Retry-After": "²"})

    app = web.Application()
    app.router.add_post("/oauth2/token", unavailable)
    server = await aiohttp_server(app)
    env = {
        "AGENTSYNC_CLIENT_ID": "client",
        "AGENTSYNC_CLIENT_SECRET": "client-secret-value",
        "AGENTSYNC_TOKEN_URL": str(server.make_url("/oauth2/token")),
        "AGENTSYNC_API_BASE_URL": "http://127.0.0.1:9",
    }
    result = await run_cli("check", env=env)
    assert result.status == 1
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("agentsync-proxy: token_unavailable: the token endpoint answered 503")
    )


async def test_check_with_bad_configuration_exits_2_listing_every_problem() -> None:
    result = await run_cli("check", env={"AGENTSYNC_ENVIRONMENT": "test"})
    assert result.status == 2
    assert result.stderr.count("\n") == 3  # API base URL, client id, client secret
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["serve", "check"])
@pytest.mark.parametrize("bundle", ["directory", "text"])
async def test_a_ca_bundle_that_cannot_be_used_is_one_line_and_exit_2(
    command: str, bundle: str, tmp_path: Path
) -> None:
    path = tmp_path / "ca.pem"
    if bundle == "directory":
        path.mkdir()
    else:
        path.write_text("a host name\n")
    env = {"AGENTSYNC_CLIENT_ID": "id", "AGENTSYNC_CLIENT_SECRET": "s"}
    result = await run_cli(command, "--ca-bundle", str(path), env=env)
    assert result.status == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"agentsync-proxy: --ca-bundle: {path} ")


@pytest.mark.parametrize("flag", ["--api-base-url", "--token-url"])
async def test_a_password_in_a_url_is_refused_and_never_printed(flag: str) -> None:
    env = {"AGENTSYNC_CLIENT_ID": "id", "AGENTSYNC_CLIENT_SECRET": "s"}
    result = await run_cli("check", flag, "http://u:hunter2@127.0.0.1:9/", env=env)
    assert result.status == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"agentsync-proxy: {flag}: http://***@127.0.0.1:9/ must not hold")
    assert "hunter2" not in result.stdout + result.stderr


async def test_version() -> None:
    result = await run_cli("--version")
    assert (result.status, result.stdout.strip()) == (0, f"agentsync-proxy {__version__}")


@pytest.mark.parametrize("flag", ["--help", "-h"])
async def test_help_lists_every_command(flag: str) -> None:
    result = await run_cli(flag)
    assert result.status == 0, result.stderr
    lines = result.stdout.splitlines()
    for command in ("serve", "check", "demo", "simulator"):
        [line] = [line for line in lines if line.split()[:1] == [command]]
        assert len(line.split()) > 3  # and what it does
    assert "`agentsync-proxy COMMAND --help` shows that command's options" in result.stdout


# Every setting's flag and environment variable, as documented.
SETTING_FLAGS = {
    "--config": "AGENTSYNC_PROXY_CONFIG",
    "--client-secret-file": "AGENTSYNC_CLIENT_SECRET_FILE",
    "--listen": "AGENTSYNC_PROXY_LISTEN",
    "--environment": "AGENTSYNC_ENVIRONMENT",
    "--api-base-url": "AGENTSYNC_API_BASE_URL",
    "--token-url": "AGENTSYNC_TOKEN_URL",
    "--client-id": "AGENTSYNC_CLIENT_ID",
    "--scope": "AGENTSYNC_SCOPE",
    "--client-auth": "AGENTSYNC_CLIENT_AUTH",
    "--log-format": "AGENTSYNC_PROXY_LOG_FORMAT",
    "--log-level": "AGENTSYNC_PROXY_LOG_LEVEL",
    "--log-query": "AGENTSYNC_PROXY_LOG_QUERY",
    "--log-probes": "AGENTSYNC_PROXY_LOG_PROBES",
    "--refresh-margin": "AGENTSYNC_PROXY_REFRESH_MARGIN",
    "--token-requests-per-minute": "AGENTSYNC_PROXY_TOKEN_REQUESTS_PER_MINUTE",
    "--token-timeout": "AGENTSYNC_PROXY_TOKEN_TIMEOUT",
    "--default-token-lifetime": "AGENTSYNC_PROXY_DEFAULT_TOKEN_LIFETIME",
    "--connect-timeout": "AGENTSYNC_PROXY_CONNECT_TIMEOUT",
    "--upstream-timeout": "AGENTSYNC_PROXY_UPSTREAM_TIMEOUT",
    "--client-timeout": "AGENTSYNC_PROXY_CLIENT_TIMEOUT",
    "--max-body-size": "AGENTSYNC_PROXY_MAX_BODY_SIZE",
    "--spool-threshold": "AGENTSYNC_PROXY_SPOOL_THRESHOLD",
    "--allowed-clients": "AGENTSYNC_PROXY_ALLOWED_CLIENTS",
    "--allowed-hosts": "AGENTSYNC_PROXY_ALLOWED_HOSTS",
    "--allowed-origins": "AGENTSYNC_PROXY_ALLOWED_ORIGINS",
    "--ca-bundle": "AGENTSYNC_PROXY_CA_BUNDLE",
    "--shutdown-timeout": "AGENTSYNC_PROXY_SHUTDOWN_TIMEOUT",
    "--workers": "AGENTSYNC_PROXY_WORKERS",
    "--max-connections": "AGENTSYNC_PROXY_MAX_CONNECTIONS",
    "--api-requests-per-minute": "AGENTSYNC_PROXY_API_REQUESTS_PER_MINUTE",
    "--rate-limit-wait": "AGENTSYNC_PROXY_RATE_LIMIT_WAIT",
    "--rewrite-links": "AGENTSYNC_PROXY_REWRITE_LINKS",
    "--link-origins": "AGENTSYNC_PROXY_LINK_ORIGINS",
    "--redis-url": "AGENTSYNC_PROXY_REDIS_URL",
    "--redis-password-file": "AGENTSYNC_PROXY_REDIS_PASSWORD_FILE",
}


def options_of(help_text: str) -> dict[str, str]:
    """Each option of an argparse --help, with the rest of its entry on one line."""
    listed = help_text.partition("\noptions:\n")[2].partition("\n\n")[0]
    entries = (" ".join(entry.split()) for entry in re.split(r"\n  (?=-)", listed))
    return {entry.split()[0].rstrip(","): entry for entry in entries if entry}


@pytest.mark.parametrize("command", ["serve", "check"])
async def test_command_help_lists_every_setting_with_its_variable(command: str) -> None:
    result = await run_cli(command, "--help")
    assert result.status == 0, result.stderr
    options = options_of(result.stdout)
    assert options["--rate-limit-wait"].endswith("(env AGENTSYNC_PROXY_RATE_LIMIT_WAIT)")
    variables = {
        flag: found.group(1)
        for flag, entry in options.items()
        if (found := re.search(r"\(env (\w+)\)$", entry))
    }
    assert variables == SETTING_FLAGS
    # The secret has no flag: the text below the options names its variable.
    assert "AGENTSYNC_CLIENT_SECRET" in result.stdout.replace("AGENTSYNC_CLIENT_SECRET_FILE", "")


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("demo", {"--listen", "--simulator-listen", "--token-lifetime", "--log-format"}),
        ("simulator", {"--listen", "--client-secret", "--scopes", "--token-lifetime"}),
    ],
)
async def test_demo_and_simulator_help_show_their_own_options(
    command: str, flags: set[str]
) -> None:
    result = await run_cli(command, "-h")
    assert result.status == 0, result.stderr
    options = options_of(result.stdout)
    assert flags <= set(options)
    assert "--rate-limit-wait" not in options


async def test_sigterm_lets_in_flight_requests_finish_and_exits_0(
    agentsync_simulator: RunningSimulator, upstream: RawUpstream, unused_tcp_port: int
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(received: Received, writer: Writer) -> None:
        arrived.set()
        await release.wait()
        await reply(200, b'{"done": true}')(received, writer)

    upstream.responder = slow
    env = simulator_env(agentsync_simulator, AGENTSYNC_API_BASE_URL=upstream.url)
    async with serve(env, unused_tcp_port) as proxy, aiohttp.ClientSession() as session:
        in_flight = asyncio.create_task(session.get(proxy.url + "/v1/slow"))
        await arrived.wait()
        proxy.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            while True:  # new connections are refused once the signal is handled
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
                    writer.close()
                    await asyncio.sleep(0.02)
                except OSError:  # refused, or reset while the listener closes
                    break
        release.set()
        response = await in_flight
        assert response.status == 200
        assert await response.json() == {"done": True}
        response.release()
        assert await asyncio.wait_for(proxy.process.wait(), 30) == 0


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def current_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_50_mib_post_is_replayed_identically_with_little_memory(
    agentsync_simulator: RunningSimulator, upstream: RawUpstream, unused_tcp_port: int
) -> None:
    seen: list[str] = []

    async def first_token_refused(received: Received, writer: Writer) -> None:
        token = received.header("Authorization") or ""
        seen.append(token)
        status = 401 if token == seen[0] else 200
        writer.write(response_bytes(status, b"{}"))
        await writer.drain()

    upstream.responder = first_token_refused
    size = 50 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256(block * 50).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(50):
            yield block

    env = simulator_env(agentsync_simulator, AGENTSYNC_API_BASE_URL=upstream.url)
    async with serve(env, unused_tcp_port) as proxy, aiohttp.ClientSession() as session:
        baseline = current_rss_kib(proxy.process.pid)
        async with session.post(
            proxy.url + "/v1/upload", data=body(), headers={"Content-Length": str(size)}
        ) as response:
            assert response.status == 200
        growth_mib = (peak_rss_kib(proxy.process.pid) - baseline) / 1024
    first, replay = upstream.received
    assert first.body_sha256 == replay.body_sha256 == digest
    assert first.body_size == size
    assert growth_mib < 16, f"the proxy grew by {growth_mib:.1f} MiB for a 50 MiB body"


async def test_logs_never_contain_a_token_or_the_secret(
    agentsync_simulator: RunningSimulator, upstream: RawUpstream, unused_tcp_port: int
) -> None:
    seen: list[str] = []

    async def respond(received: Received, writer: Writer) -> None:
        token = received.header("Authorization") or ""
        seen.append(token)
        if received.target == "/v1/reset":
            writer.transport.abort()  # an upstream failure, logged with its exception
            return
        status = 401 if token == seen[0] else 200
        writer.write(response_bytes(status, b'{"echo": "%s"}' % token.encode()))
        await writer.drain()

    upstream.responder = respond
    env = simulator_env(
        agentsync_simulator,
        AGENTSYNC_API_BASE_URL=upstream.url,
        AGENTSYNC_PROXY_LOG_LEVEL="debug",
        AGENTSYNC_PROXY_LOG_QUERY="true",
    )
    state = agentsync_simulator.state
    state.token_lifetime = 1.0  # renewed in the background every half second
    async with serve(env, unused_tcp_port) as proxy, aiohttp.ClientSession() as session:
        headers = {"Authorization": "Bearer client-own-token-value"}
        async with session.get(proxy.url + "/v1/replayed?x=1", headers=headers) as response:
            assert response.status == 200  # replayed with a renewed token
        async with session.get(proxy.url + "/v1/reset") as response:
            assert response.status == 502
        await post(session, agentsync_simulator.url + "/_simulator/faults", {"status": 500})
        issued = state.tokens_issued
        async with asyncio.timeout(10):
            while state.tokens_issued < issued + 1 or state.token_requests < issued + 2:
                await asyncio.sleep(0.02)
        proxy.process.send_signal(signal.SIGTERM)
        out, err = await proxy.process.communicate()
    logs = (out + err).decode()
    records = [json.loads(line) for line in logs.splitlines()]
    events = {record["event"] for record in records}
    assert {"token_obtained", "token_evicted", "token_request_retry", "request"} <= events
    failure = next(r for r in records if r["event"] == "upstream_failed")
    assert failure["exception"][0]["frames"]  # a traceback, rendered without frame locals
    assert any(r.get("replayed") is True for r in records)
    tokens = {value.removeprefix("Bearer ") for value in seen if value}
    tokens |= set(state.tokens.issued())
    assert len(tokens) >= 3
    for secret in (*tokens, agentsync_simulator.config.client_secret, "client-own-token-value"):
        assert secret not in logs


async def test_a_malformed_request_is_one_warning_line_without_a_traceback(
    agentsync_simulator: RunningSimulator, unused_tcp_port: int
) -> None:
    env = simulator_env(agentsync_simulator)
    async with serve(env, unused_tcp_port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(
            b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nabc"
        )
        assert (await reader.readline()).split(b" ")[1] == b"400"
        writer.close()
        proxy.process.send_signal(signal.SIGTERM)
        out, err = await proxy.process.communicate()
    records = [json.loads(line) for line in (out + err).decode().splitlines()]
    [malformed] = [r for r in records if r["event"] == "malformed_request"]
    assert (malformed["level"], malformed["client"]) == ("warning", "127.0.0.1")
    assert "Transfer-Encoding" in malformed["reason"]
    assert "exception" not in malformed
    assert [r for r in records if r["level"] == "error"] == []


async def post(session: aiohttp.ClientSession, url: str, body: object = None) -> None:
    async with session.post(url, json=body if body is not None else {}) as response:
        assert response.status == 200, await response.text()


@pytest.mark.parametrize("command", ["serve", "check"])
async def test_unknown_flag_is_a_usage_error(command: str) -> None:
    result = await run_cli(command, "--no-such-flag")
    assert result.status == 2
    assert "unrecognized arguments: --no-such-flag" in result.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process's socket already listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        ("serve", "--listen"),
        ("simulator", "--listen"),
        ("demo", "--listen"),
        ("demo", "--simulator-listen"),
    ],
)
async def test_a_port_in_use_is_one_line_and_exit_2(
    agentsync_simulator: RunningSimulator, taken_port: int, command: str, flag: str
) -> None:
    address = f"127.0.0.1:{taken_port}"
    done = await run_cli(command, flag, address, env=simulator_env(agentsync_simulator))
    assert done.status == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    [line] = [line for line in done.stderr.splitlines() if address in line]
    assert line.startswith(f"agentsync-proxy: {flag} {address}: address already in use")


async def test_more_workers_than_the_token_cap_is_one_line_and_exit_2() -> None:
    env = {"AGENTSYNC_CLIENT_ID": "id", "AGENTSYNC_CLIENT_SECRET": "s"}
    result = await run_cli("serve", "--workers", "30", env=env)
    assert result.status == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("agentsync-proxy: --workers: 30 workers need")


@pytest.mark.parametrize("value", ["x", "²", "-1", "0", "21"])
async def test_a_bad_internal_worker_variable_is_one_line_and_exit_2(value: str) -> None:
    env = {
        "AGENTSYNC_CLIENT_ID": "id",
        "AGENTSYNC_CLIENT_SECRET": "s",
        "AGENTSYNC_PROXY_WORKER_OF": value,
    }
    result = await run_cli("serve", env=env)
    assert result.status == 2
    [line] = result.stderr.splitlines()
    assert line == (
        f"agentsync-proxy: AGENTSYNC_PROXY_WORKER_OF: {value!r} is not a number of workers from"
        " 1 to 20; the proxy sets this variable for its own worker processes: unset it"
    )


@pytest.mark.parametrize("command", ["simulator", "demo"])
@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "0", "١٢", "soon"])
async def test_a_token_lifetime_that_is_not_a_finite_positive_number_is_refused(
    taken_port: int, command: str, value: str
) -> None:
    # The taken port makes a wrongly accepted value end at once instead of serving on.
    done = await run_cli(command, "--listen", f"127.0.0.1:{taken_port}", "--token-lifetime", value)
    assert done.status == 2
    assert done.stderr.splitlines()[-1].endswith(
        f"argument --token-lifetime: {value!r} is not a finite number of seconds above 0"
    )


async def test_workers_share_the_port_and_stop_together(
    agentsync_simulator: RunningSimulator, upstream: RawUpstream, unused_tcp_port: int
) -> None:
    env = simulator_env(
        agentsync_simulator,
        AGENTSYNC_API_BASE_URL=upstream.url,
        AGENTSYNC_PROXY_WORKERS="2",
        AGENTSYNC_PROXY_TOKEN_REQUESTS_PER_MINUTE="4",
    )
    async with serve(env, unused_tcp_port) as proxy, aiohttp.ClientSession() as session:
        async with asyncio.timeout(20):  # both workers hold a token
            while agentsync_simulator.state.tokens_issued < 2:
                await asyncio.sleep(0.02)
        for _ in range(20):
            async with session.get(proxy.url + "/v1/x") as response:
                assert response.status == 200
        proxy.process.send_signal(signal.SIGTERM)
        _, err = await proxy.process.communicate()
    assert proxy.process.returncode == 0
    records = [json.loads(line) for line in err.decode().splitlines()]
    pids = {r["pid"] for r in records if r["event"] == "listening"}
    assert len(pids) == 2
    assert sum(r["event"] == "stopped" for r in records) == 2
    assert agentsync_simulator.state.token_requests == 2


async def test_serve_on_port_0_logs_the_port_it_got(
    agentsync_simulator: RunningSimulator, upstream: RawUpstream
) -> None:
    env = simulator_env(agentsync_simulator, AGENTSYNC_API_BASE_URL=upstream.url)
    process = await start_serve(
        env, "127.0.0.1:0", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        async with asyncio.timeout(20):
            while (line := json.loads(await process.stderr.readline()))["event"] != "listening":
                pass
        host, _, port = line["listen"].rpartition(":")
        assert (host, port != "0") == ("127.0.0.1", True)
        await until_ready(f"http://127.0.0.1:{port}")
    finally:
        process.kill()
        await process.wait()
