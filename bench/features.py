"""What two features cost at one connection: rewriting links in a 20 KiB JSON answer (on
against off) and a fleet's Redis (with against without), each agentsync-proxy in a process of
its own, in interleaved rounds; and a cold burst on three replicas sharing one Redis."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field

import burst
import load
import processes
import servers
from burst import BurstResult
from columns import DIRECT
from load import LoadResult
from nginx_config import LINKS_COUNT
from processes import Processes
from servers import url

SMALL, LINKS = "/v1/small", "/v1/links"
DEFAULTS = "agentsync-proxy"  # links on (the default), no Redis: the base of both ratios
LINKS_OFF = "agentsync-proxy --rewrite-links off"
REDIS = "agentsync-proxy --redis-url"
WARM_UP_SECONDS = 2
REPLICAS = 3


@dataclass
class Features:
    seconds: int  # each wrk run
    rounds: int
    load: dict[tuple[str, str], LoadResult] = field(default_factory=dict)  # (target, path)
    links_rewritten: int = 0  # links on the proxy's origin in the answer through DEFAULTS
    links_left_off: int = 0  # links left on the upstream's origin through LINKS_OFF
    fleet_burst: BurstResult | None = None
    fleet_token_requests: int = 0
    fleet_ports_open_s: float = 0.0

    def added_p50(self, target: str, path: str) -> float:
        return self.load[target, path].p50_s - self.load[DIRECT, path].p50_s


def _ready_proxy(
    procs: Processes, name: str, simulator_port: int, upstream_port: int, *options: str
) -> int:
    proxy, port = servers.launch_agentsync_proxy(
        procs, name, simulator_port, upstream_port, options
    )
    processes.wait_for_ok(port, "/-/ready", proxy, name)
    return port


def _count_links(port: int, origin: str) -> int:
    status, body = processes.http_get(port, LINKS)
    if status != 200:
        raise RuntimeError(f"GET {LINKS} answered {status}")
    return body.count(origin.encode())


def measure_features(
    procs: Processes, upstream_port: int, simulator_port: int, seconds: int, rounds: int
) -> Features:
    """Direct, the default proxy and the proxy with Redis on the small answer; direct, links
    on and links off on the links answer: every one at one connection in turn, `rounds`
    times; each figure is the median of its rounds."""
    result = Features(seconds, rounds)
    redis_url = servers.start_redis(procs)
    options = {
        DEFAULTS: ("features", "--rewrite-links", "on"),
        LINKS_OFF: ("links-off", "--rewrite-links", "off"),
        REDIS: ("redis", "--redis-url", redis_url),
    }
    ports = {
        target: _ready_proxy(
            procs, f"{name}-agentsync-proxy", simulator_port, upstream_port, *settings
        )
        for target, (name, *settings) in options.items()
    }
    ports[DIRECT] = upstream_port
    result.links_rewritten = _count_links(ports[DEFAULTS], url(ports[DEFAULTS]))
    result.links_left_off = _count_links(ports[LINKS_OFF], url(upstream_port))
    if result.links_rewritten != LINKS_COUNT or result.links_left_off != LINKS_COUNT:
        raise RuntimeError(
            f"links: {result.links_rewritten} of {LINKS_COUNT} rewritten with rewriting on,"
            f" {result.links_left_off} of {LINKS_COUNT} left alone with it off"
        )
    runs = [
        (DIRECT, SMALL),
        (DEFAULTS, SMALL),
        (REDIS, SMALL),
        (DIRECT, LINKS),
        (DEFAULTS, LINKS),
        (LINKS_OFF, LINKS),
    ]
    for target, path in runs:
        print(f"wrk: warming up {target} on {path}", flush=True)
        load.run_wrk(url(ports[target], path), 1, WARM_UP_SECONDS)
    done: dict[tuple[str, str], list[LoadResult]] = {run: [] for run in runs}
    for round_number in range(rounds):
        print(f"wrk: links and Redis at 1 connection, round {round_number + 1}", flush=True)
        for target, path in runs:
            done[target, path].append(load.run_wrk(url(ports[target], path), 1, seconds))
    for run, results in done.items():
        result.load[run] = load.median_of(results)
    return result


def measure_fleet_burst(procs: Processes, result: Features, upstream_port: int, count: int) -> None:
    """A fresh simulator and Redis, REPLICAS fresh proxies on that Redis launched at once;
    `count` GETs on each replica at the same time as soon as every port accepts."""
    print(f"cold burst of {count:,} on each of {REPLICAS} replicas sharing Redis", flush=True)
    simulator_port = servers.start_simulator(procs, "fleet-simulator")
    redis_url = servers.start_redis(procs, "fleet-redis")
    started = time.perf_counter()
    launched: list[tuple[subprocess.Popen[bytes], int]] = [
        servers.launch_agentsync_proxy(
            procs,
            f"fleet-agentsync-proxy-{n}",
            simulator_port,
            upstream_port,
            ["--redis-url", redis_url],
        )
        for n in range(1, REPLICAS + 1)
    ]
    try:
        for proxy, port in launched:
            processes.wait_for_port(port, proxy, "a replica")
        result.fleet_ports_open_s = time.perf_counter() - started
        result.fleet_burst = burst.fire_many([url(port, SMALL) for _, port in launched], count)
        result.fleet_token_requests = servers.token_requests(simulator_port)
    finally:
        for proxy, _ in launched:
            procs.stop(proxy)
