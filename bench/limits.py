"""The API's rate limit through each proxy, against the simulator's API with its limit scaled
down: closed-loop clients offering three times the limit through nginx, the plain aiohttp proxy
and agentsync-proxy at once (one simulator each, one fixed window long), then an open-loop offer
whose backlog cannot fit agentsync-proxy's wait, to time its refusals."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import over_limit
import processes
import servers
from columns import AGENTSYNC, NGINX, PLAIN_UVLOOP
from over_limit import RATE_LIMITED, Offer
from processes import Processes
from servers import url

API_PATH = "/v2/entities/17345829"
LIMIT_PER_MINUTE = 600  # 10 a second: short runs still span hundreds of requests
CLIENTS = 20
OVER = 3  # the closed-loop clients together want three times the limit
# The simulator counts calls in fixed 60 s windows that start with a client's first call: a run
# one window long (less a second, so that no request reaches the next window) lets a proxy that
# does not pace spend the whole window's budget and then meet its 429s, as it would in
# production, instead of ending while its early burst is still being accepted.
WINDOW_SECONDS = 59.0
WAIT = 30  # agentsync-proxy's --rate-limit-wait while the backlog fits
REFUSAL_WAIT = 1  # ... and where it cannot
REFUSAL_OVER = 6  # the open-loop offer against that short wait
REFUSAL_SECONDS = 20.0


@dataclass(frozen=True)
class LimitRun:
    through: str
    settings: str  # how the proxy was set up, for the table
    limit_per_minute: int
    offered_per_s: float
    offer: Offer
    upstream: Counter[str]  # the simulator's API answers by status

    @property
    def requests(self) -> int:
        return len(self.offer.answers)

    @property
    def ok(self) -> int:
        return sum(n for outcome, n in self.offer.outcomes().items() if outcome.startswith("2"))

    @property
    def client_429(self) -> int:
        """Every 429 the clients saw: the API's passed on and the proxy's own refusals."""
        outcomes = self.offer.outcomes()
        return outcomes["429"] + outcomes[RATE_LIMITED]

    @property
    def refused(self) -> int:
        return self.offer.outcomes()[RATE_LIMITED]

    @property
    def upstream_429(self) -> int:
        return self.upstream["429"]

    @property
    def upstream_ok(self) -> int:
        return sum(n for status, n in self.upstream.items() if status.startswith("2"))

    @property
    def upstream_share(self) -> float:
        """The API calls accepted a second over the run, as a share of the limit's rate."""
        return self.upstream_ok / self.offer.seconds / (self.limit_per_minute / 60)

    def refusal_latency(self) -> tuple[float, float, float] | None:
        """p50, p99 and max of the proxy's own 429 answers, or None when there were none."""
        latencies = self.offer.latencies(RATE_LIMITED)
        if not latencies:
            return None
        if len(latencies) == 1:
            return latencies[0], latencies[0], latencies[0]
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        return cuts[49], cuts[98], latencies[-1]


def api_calls(simulator_port: int) -> Counter[str]:
    calls = servers.simulator_stats(simulator_port)["api_calls"]
    return Counter({status: int(n) for status, n in calls.items()})


def _agentsync_proxy(procs: Processes, name: str, simulator_port: int, wait: int) -> int:
    options = ["--api-requests-per-minute", "auto", "--rate-limit-wait", str(wait)]
    proxy, port = servers.launch_agentsync_proxy(
        procs, name, simulator_port, simulator_port, options
    )
    processes.wait_for_ok(port, "/-/ready", proxy, name)
    return port


def measure_over_limit(procs: Processes, root: Path) -> list[LimitRun]:
    """nginx, the plain aiohttp proxy on uvloop and agentsync-proxy, each in front of a
    simulator of its own, offered three times the limit at the same time for one window."""
    simulators = {
        name: servers.start_simulator(procs, f"limit-simulator-{n}", LIMIT_PER_MINUTE)
        for n, name in enumerate((NGINX, PLAIN_UVLOOP, AGENTSYNC))
    }
    ports = {
        NGINX: servers.start_api_nginx_proxy(
            procs, root, simulators[NGINX], servers.simulator_token(simulators[NGINX])
        ),
        PLAIN_UVLOOP: servers.start_plain_proxy(
            procs,
            simulators[PLAIN_UVLOOP],
            "uvloop",
            servers.simulator_token(simulators[PLAIN_UVLOOP]),
            "limit-plain-proxy",
        ),
        AGENTSYNC: _agentsync_proxy(procs, "limit-agentsync-proxy", simulators[AGENTSYNC], WAIT),
    }
    settings = {
        NGINX: "static `Authorization` with a simulator token",
        PLAIN_UVLOOP: "fixed bearer token from the simulator",
        AGENTSYNC: f"`--api-requests-per-minute auto --rate-limit-wait {WAIT}`",
    }
    offered = OVER * LIMIT_PER_MINUTE / 60
    print(
        f"over the limit: {CLIENTS} clients wanting {offered:g}/s through"
        f" {len(ports)} proxies at once for {WINDOW_SECONDS:g} s",
        flush=True,
    )
    targets = [url(port, API_PATH) for port in ports.values()]
    offers = over_limit.closed_loops(targets, CLIENTS, offered, WINDOW_SECONDS)
    return [
        LimitRun(
            name, settings[name], LIMIT_PER_MINUTE, offered, offer, api_calls(simulators[name])
        )
        for name, offer in zip(ports, offers, strict=True)
    ]


def measure_refusals(procs: Processes) -> LimitRun:
    """agentsync-proxy with a wait of REFUSAL_WAIT s under an open-loop offer of REFUSAL_OVER
    times the limit: what the wait cannot hold is refused, and how fast."""
    simulator = servers.start_simulator(procs, "refusal-simulator", LIMIT_PER_MINUTE)
    port = _agentsync_proxy(procs, "refusal-agentsync-proxy", simulator, REFUSAL_WAIT)
    offered = REFUSAL_OVER * LIMIT_PER_MINUTE / 60
    print(f"beyond the wait: {offered:g}/s open loop for {REFUSAL_SECONDS:g} s", flush=True)
    offer = over_limit.open_loop(url(port, API_PATH), offered, REFUSAL_SECONDS)
    settings = f"`--rate-limit-wait {REFUSAL_WAIT}`, open loop"
    return LimitRun(AGENTSYNC, settings, LIMIT_PER_MINUTE, offered, offer, api_calls(simulator))
