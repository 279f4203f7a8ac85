"""A fleet of real `agentsync-proxy serve` processes on one real redis-server, in front of the
simulator: one token for the fleet, Redis outages, secrets kept out of Redis and the logs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from redis.asyncio import Redis

from proxy.credentials import Secret
from proxy.servers import RunningSimulator
from proxy.simulator import SimulatorConfig
from proxy.token_seal import TokenSeal
from tests.cli_process import simulator_env, start_serve, until_ready
from tests.redis_server import RedisServer, running_redis

PATH = "/contracting/v1/customers/carriers?page=0&size=3"
PortFactory = Callable[[], int]


@pytest.fixture
def agentsync_simulator_config() -> SimulatorConfig:
    """The simulator's API rate limit, where it has one, is lifted: these tests count token
    requests, and send more API calls a minute than AgentSync's default allows."""
    names = {field.name for field in dataclasses.fields(SimulatorConfig)}
    lifted: dict[str, Any] = {"api_requests_per_minute": 1_000_000}
    return SimulatorConfig(**{k: v for k, v in lifted.items() if k in names})


@pytest.fixture
async def redis_server(unused_tcp_port_factory: PortFactory) -> AsyncIterator[RedisServer]:
    async with running_redis(unused_tcp_port_factory()) as server:
        yield server


@dataclass
class Replica:
    """One `agentsync-proxy serve` process; its JSON log lines go to a file."""

    process: asyncio.subprocess.Process
    url: str
    log: Path

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    found.append(entry)
        return found

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == name]

    async def logged(self, name: str, count: int = 1) -> None:
        """Until the log holds `count` lines of event `name` (log lines are the only thing
        another process tells us)."""
        async with asyncio.timeout(15):
            while len(self.events(name)) < count:
                await asyncio.sleep(0.05)


def fleet_env(simulator: RunningSimulator, redis_url: str, **extra: str) -> dict[str, str]:
    """Pacing off unless `extra` says otherwise: most of these tests count token requests."""
    extra = {"AGENTSYNC_PROXY_API_REQUESTS_PER_MINUTE": "off", **extra}
    return simulator_env(simulator, AGENTSYNC_PROXY_REDIS_URL=redis_url, **extra)


@asynccontextmanager
async def fleet(
    envs: Sequence[dict[str, str]], ports: PortFactory, logs: Path, *, ready: bool = True
) -> AsyncIterator[list[Replica]]:
    """One replica per environment, started at once; with `ready`, each holds a token."""
    replicas: list[Replica] = []
    files = []
    try:
        for index, env in enumerate(envs):
            port = ports()
            path = logs / f"replica-{index}.log"
            file = path.open("wb")
            files.append(file)
            process = await start_serve(
                env, f"127.0.0.1:{port}", stdout=file.fileno(), stderr=file.fileno()
            )
            replicas.append(Replica(process, f"http://127.0.0.1:{port}", path))
        await asyncio.gather(*(listening(replica, ready) for replica in replicas))
        yield replicas
    finally:
        await asyncio.gather(*(stopped(replica) for replica in replicas))
        for file in files:
            file.close()


async def listening(replica: Replica, ready: bool) -> None:
    if ready:
        await until_ready(replica.url)
        return
    async with asyncio.timeout(20), aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with session.get(replica.url + "/-/healthy") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.02)


async def stopped(replica: Replica) -> None:
    """SIGTERM, as an orchestrator stops a replica; it must leave promptly, Redis or not."""
    if replica.process.returncode is None:
        replica.process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(15):
            assert await replica.process.wait() == 0
    finally:
        if replica.process.returncode is None:
            replica.process.kill()
            await replica.process.wait()


async def burst(replicas: Sequence[Replica], count: int) -> list[int]:
    """`count` concurrent GETs spread over the replicas; their statuses."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def get(index: int) -> int:
            async with session.get(replicas[index % len(replicas)].url + PATH) as response:
                await response.read()
                return response.status

        return list(await asyncio.gather(*(get(i) for i in range(count))))


async def revoke(simulator: RunningSimulator) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(simulator.url + "/_simulator/revoke") as response,
    ):
        assert response.status == 200


def fleet_requests(replicas: Sequence[Replica]) -> tuple[int, int]:
    """Token requests the replicas sent (for the fleet, on their own)."""
    lines = [line for replica in replicas for line in replica.events("token_requested")]
    shared = sum(1 for line in lines if line.get("for_fleet") is True)
    return shared, len(lines) - shared


async def test_cold_burst_across_three_replicas_makes_one_token_request(
    agentsync_simulator: RunningSimulator,
    redis_server: RedisServer,
    unused_tcp_port_factory: PortFactory,
    tmp_path: Path,
) -> None:
    env = fleet_env(agentsync_simulator, redis_server.url())
    async with fleet([env] * 3, unused_tcp_port_factory, tmp_path, ready=False) as replicas:
        statuses = await burst(replicas, 300)
        assert statuses == [200] * 300
        assert agentsync_simulator.state.token_requests == 1
        assert fleet_requests(replicas) == (1, 0)
        for replica in replicas:
            assert replica.events("redis_unavailable") == []


async def test_401_storm_across_replicas_makes_one_renewal(
    agentsync_simulator: RunningSimulator,
    redis_server: RedisServer,
    unused_tcp_port_factory: PortFactory,
    tmp_path: Path,
) -> None:
    env = fleet_env(agentsync_simulator, redis_server.url())
    async with fleet([env] * 3, unused_tcp_port_factory, tmp_path) as replicas:
        assert agentsync_simulator.state.token_requests == 1
        await revoke(agentsync_simulator)
        statuses = await burst(replicas, 150)
        assert statuses == [200] * 150
        assert agentsync_simulator.state.token_requests == 2
        assert agentsync_simulator.state.api_calls["401"] >= 3  # every replica saw the revocation
        assert fleet_requests(replicas) == (2, 0)


async def test_redis_killed_mid_run_every_request_still_answered(
    agentsync_simulator: RunningSimulator,
    redis_server: RedisServer,
    unused_tcp_port_factory: PortFactory,
    tmp_path: Path,
) -> None:
    env = fleet_env(agentsync_simulator, redis_server.url())
    async with fleet([env] * 3, unused_tcp_port_factory, tmp_path) as replicas:
        statuses: list[int] = []
        stop = asyncio.Event()

        async def flow(session: aiohttp.ClientSession, replica: Replica) -> None:
            while not stop.is_set():
                async with session.get(replica.url + PATH) as response:
                    await response.read()
                    statuses.append(response.status)

        async def answered(count: int) -> None:
            async with asyncio.timeout(20):
                while len(statuses) < count:
                    await asyncio.sleep(0.01)

        async with aiohttp.ClientSession() as session:
            flows = [
                asyncio.create_task(flow(session, replica))
                for replica in replicas
                for _ in range(3)
            ]
            try:
                await answered(30)
                await redis_server.kill()
                await asyncio.gather(*(replica.logged("redis_unavailable") for replica in replicas))
                for replica in replicas:
                    async with session.get(replica.url + "/-/ready") as response:
                        assert response.status == 200  # Redis is not needed to serve
                await answered(len(statuses) + 30)
                await revoke(agentsync_simulator)  # every replica must renew, without Redis
                await answered(len(statuses) + 60)
            finally:
                stop.set()
                await asyncio.gather(*flows)

        assert set(statuses) == {200}
        assert agentsync_simulator.state.token_requests == 1 + 3  # then one each, on its own
        assert fleet_requests(replicas) == (1, 3)
        for replica in replicas:
            assert len(replica.events("redis_unavailable")) == 1  # one warning, not one a request
            assert replica.events("token_request_failed") == []


async def test_replicas_share_again_when_redis_returns(
    agentsync_simulator: RunningSimulator,
    redis_server: RedisServer,
    unused_tcp_port_factory: PortFactory,
    tmp_path: Path,
) -> None:
    env = fleet_env(agentsync_simulator, redis_server.url())
    async with fleet([env] * 3, unused_tcp_port_factory, tmp_path) as replicas:
        await redis_server.kill()
        await asyncio.gather(*(replica.logged("redis_unavailable") for replica in replicas))
        await revoke(agentsync_simulator)
        assert await burst(replicas, 30) == [200] * 30
        assert agentsync_simulator.state.token_requests == 1 + 3

        await redis_server.start()  # the same port, empty
        await asyncio.gather(*(replica.logged("redis_available") for replica in replicas))
        await revoke(agentsync_simulator)
        assert await burst(replicas, 150) == [200] * 150
        assert agentsync_simulator.state.token_requests == 1 + 3 + 1
        for replica in replicas:
            assert len(replica.events("redis_unavailable")) == 1
            assert len(replica.events("redis_available")) == 1


async def redis_contents(url: str) -> list[bytes]:
    """Every key of the Redis and every value in it."""
    found: list[bytes] = []
    client = Redis.from_url(url)
    try:
        async for key in client.scan_iter(count=100):
            found.append(as_bytes(key))
            kind = as_bytes(await client.type(key))
            if kind == b"string":
                found.append(as_bytes(await client.get(key)))
            elif kind == b"zset":
                found.extend(as_bytes(member) for member in await client.zrange(key, 0, -1))
            else:
                raise AssertionError(f"a {kind!r} key, which the proxy never writes: {key!r}")
    finally:
        await client.aclose()
    return found


def as_bytes(value: object) -> bytes:
    assert isinstance(value, bytes), value
    return value


async def test_no_key_in_redis_holds_the_token_in_clear(
    agentsync_simulator: RunningSimulator,
    redis_server: RedisServer,
    unused_tcp_port_factory: PortFactory,
    tmp_path: Path,
) -> None:
    env = fleet_env(agentsync_simulator, redis_server.url())
    async with fleet([env] * 3, unused_tcp_port_factory, tmp_path) as replicas:
        tokens = agentsync_simulator.state.tokens.issued()
        assert await burst(replicas, 30) == [200] * 30
        await revoke(agentsync_simulator)
        assert await burst(replicas, 30) == [200] * 30
        tokens += agentsync_simulator.state.tokens.issued()
        contents = await redis_contents(redis_server.url())

    assert len(tokens) >= 2
    seal = TokenSeal(
        Secret(agentsync_simulator.config.client_secret),
        agentsync_simulator.config.client_id,
        agentsync_simulator.token_url,
    )
    opened = [seal.open(value) for value in contents]
    # The shared token is there, sealed: only the client secret opens it.
    (shared,) = [token.value.reveal() for token in opened if token is not None]
    assert shared in tokens
    for value in contents:
        for token in tokens:
            assert token.encode() not in value
    secret = agentsync_simulator.config.client_secret.encode()
    assert not any(secret in value for value in contents)


async def test_wrong_secret_cannot_use_the_shared_token(
    agentsync_simulator: RunningSimulator,
    redis_server: RedisServer,
    unused_tcp_port_factory: PortFactory,
    tmp_path: Path,
) -> None:
    good = fleet_env(agentsync_simulator, redis_server.url())
    async with fleet([good] * 2, unused_tcp_port_factory, tmp_path) as replicas:
        assert agentsync_simulator.state.token_requests == 1
        wrong = {**good, "AGENTSYNC_CLIENT_SECRET": "another-secret"}
        (tmp_path / "wrong").mkdir()
        outsiders = fleet([wrong], unused_tcp_port_factory, tmp_path / "wrong", ready=False)
        async with (
            outsiders as (outsider,),
            aiohttp.ClientSession() as session,
            session.get(outsider.url + PATH) as response,
        ):
            # Refused by the token endpoint, and not served with the fleet's token.
            assert response.status == 502
            assert (await response.json())["error"] == "token_request_rejected"
        assert agentsync_simulator.state.api_calls.get("200", 0) == 0
        # The fleet's token is untouched: the two replicas serve on without a token request.
        before = agentsync_simulator.state.token_requests
        assert await burst(replicas, 30) == [200] * 30
        assert agentsync_simulator.state.token_requests == before
        assert fleet_requests(replicas) == (1, 0)
        log = outsider.log.read_text()
        assert "another-secret" not in log
        assert agentsync_simulator.config.client_secret not in log


async def test_no_redis_password_or_token_in_logs(
    agentsync_simulator: RunningSimulator, unused_tcp_port_factory: PortFactory, tmp_path: Path
) -> None:
    password, wrong = "redis-pw-" + secrets.token_hex(8), "wrong-pw-" + secrets.token_hex(8)
    password_file = tmp_path / "redis-password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    port = unused_tcp_port_factory()
    async with running_redis(port, "--requirepass", password) as redis:
        right = fleet_env(agentsync_simulator, redis.url(password))
        mistaken = fleet_env(agentsync_simulator, redis.url(wrong))
        # The password file wins over the URL's password.
        rescued = {**mistaken, "AGENTSYNC_PROXY_REDIS_PASSWORD_FILE": str(password_file)}
        async with fleet([right, mistaken, rescued], unused_tcp_port_factory, tmp_path) as (
            replicas
        ):
            tokens = agentsync_simulator.state.tokens.issued()
            await revoke(agentsync_simulator)
            assert await burst(replicas, 30) == [200] * 30
            tokens += agentsync_simulator.state.tokens.issued()
            await redis.kill()  # connection errors must not show the password either
            await asyncio.gather(*(replica.logged("redis_unavailable") for replica in replicas))
            await revoke(agentsync_simulator)
            assert await burst(replicas, 30) == [200] * 30
            tokens += agentsync_simulator.state.tokens.issued()

    shared, mistaken_replica, rescued_replica = replicas
    assert fleet_requests([mistaken_replica])[0] == 0
    (warning,) = mistaken_replica.events("redis_unavailable")
    assert warning["level"] == "warning"
    assert warning["reason"] == (
        f"Redis at redis://127.0.0.1:{port}/0: authentication failed: check the password"
        " (AGENTSYNC_PROXY_REDIS_PASSWORD_FILE, or the URL's) and the user name"
    )
    for replica in (shared, rescued_replica):
        assert len(replica.events("redis_connected")) == 1
        (down,) = replica.events("redis_unavailable")
        assert down["reason"].startswith(f"Redis at redis://127.0.0.1:{port}/0: ")
    assert len(tokens) >= 2 + 2 + 3  # twice one shared and one alone, then three alone
    for replica in replicas:
        text = replica.log.read_text()
        assert "Traceback" not in text
        for secret in (password, wrong, agentsync_simulator.config.client_secret, *tokens):
            assert secret not in text


async def test_rediss_with_a_private_ca(
    agentsync_simulator: RunningSimulator, unused_tcp_port_factory: PortFactory, tmp_path: Path
) -> None:
    ca = trustme.CA()
    certificate = ca.issue_cert("localhost")  # the host name is checked, not only the chain
    key, chain, ca_file = tmp_path / "key.pem", tmp_path / "chain.pem", tmp_path / "ca.pem"
    certificate.private_key_pem.write_to_path(str(key))
    certificate.cert_chain_pems[0].write_to_path(str(chain))
    ca.cert_pem.write_to_path(str(ca_file))
    tls_port = unused_tcp_port_factory()
    options: tuple[str, ...] = ("--tls-port", str(tls_port), "--tls-cert-file", str(chain))
    options += ("--tls-key-file", str(key), "--tls-ca-cert-file", str(ca_file))
    options += ("--tls-auth-clients", "no")
    async with running_redis(unused_tcp_port_factory(), *options):
        url = f"rediss://localhost:{tls_port}/0"
        trusting = fleet_env(agentsync_simulator, url, AGENTSYNC_PROXY_CA_BUNDLE=str(ca_file))
        untrusting = fleet_env(agentsync_simulator, url)
        envs = [trusting, trusting, untrusting]
        async with fleet(envs, unused_tcp_port_factory, tmp_path) as replicas:
            assert await burst(replicas, 30) == [200] * 30

    *trusted, untrusted = replicas
    warnings = [replica.events("redis_unavailable") for replica in trusted]
    assert fleet_requests(trusted) == (1, 0), warnings  # one token for the two on Redis
    assert fleet_requests([untrusted]) == (0, 1)
    assert agentsync_simulator.state.token_requests == 2
    for replica in trusted:
        assert replica.events("redis_connected")[0]["redis"] == url
        assert replica.events("redis_unavailable") == []
    (warning,) = untrusted.events("redis_unavailable")
    assert warning["reason"] == (
        f"Redis at {url}: its TLS certificate is not trusted or does not name the host: give"
        " its CA with --ca-bundle (AGENTSYNC_PROXY_CA_BUNDLE)"
    )


async def test_workers_share_one_token_through_redis(
    agentsync_simulator: RunningSimulator,
    redis_server: RedisServer,
    unused_tcp_port_factory: PortFactory,
    tmp_path: Path,
) -> None:
    env = fleet_env(agentsync_simulator, redis_server.url(), AGENTSYNC_PROXY_WORKERS="2")
    async with fleet([env], unused_tcp_port_factory, tmp_path) as (replica,):
        await replica.logged("redis_connected", 2)  # each worker connects on its own
        assert await burst([replica], 100) == [200] * 100
        await revoke(agentsync_simulator)
        assert await burst([replica], 100) == [200] * 100
    assert agentsync_simulator.state.token_requests == 2
    assert fleet_requests([replica]) == (2, 0)


async def test_make_fleet_shows_one_token_request_for_three_proxies() -> None:
    if shutil.which("redis-server") is None and not os.environ.get("CI"):
        pytest.skip("redis-server is not installed: apt-get install redis-server")
    script = Path(__file__).parents[1] / "fleet" / "run.py"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        "--exit",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert text.count("curl -s 'http://127.0.0.1:") == 4  # three proxies and the stats
    assert "A burst of 30 requests through the 3 proxies: {200: 30}" in text
    assert "token requests for the whole fleet: 1" in text
