"""`agentsync-proxy simulator` and `agentsync-proxy demo`: AgentSync without an account."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

import structlog

from proxy import __version__, logs, servers
from proxy.settings import ConfigError, Listen, parse_listen
from proxy.simulator import SimulatorConfig
from proxy.simulator.config import DEFAULT_API_REQUESTS_PER_MINUTE, public_url_problem

# Low enough in the demo that a few quick calls show the ratelimit-* headers counting down.
DEMO_API_REQUESTS_PER_MINUTE = 60


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line and exit 2, like every other problem of the command."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError([message])


def _positive(text: str) -> float:
    # float() also reads inf, nan, 1e400 and other scripts' digits.
    with contextlib.suppress(ValueError):
        value = float(text) if text.isascii() else math.nan
        if math.isfinite(value) and value > 0:
            return value
    raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds above 0")


def _at_least_one(text: str) -> int:
    # int() alone would also read ' 1', '1_0' and other scripts' digits.
    if text.isascii() and text.isdigit() and len(text) <= 9 and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")


def _public_url(text: str) -> str:
    if (problem := public_url_problem(text)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def parser(command: str) -> argparse.ArgumentParser:
    defaults = SimulatorConfig()
    demo = command == "demo"
    parser = _Parser(
        prog=f"agentsync-proxy {command}",
        description=(
            "The AgentSync simulator and a proxy wired to it, in one process."
            if demo
            else "The AgentSync simulator: token endpoint, API and /_simulator/ controls."
        ),
    )
    parser.add_argument("--version", action="version", version=f"agentsync-proxy {__version__}")
    if demo:
        addresses = [
            ("--listen", "the proxy's address", "127.0.0.1:8080"),
            ("--simulator-listen", "the simulator's address", "127.0.0.1:8090"),
        ]
    else:
        addresses = [("--listen", "address to listen on", "127.0.0.1:8090")]
    for flag, what, default in addresses:
        parser.add_argument(
            flag, default=default, metavar="HOST:PORT", help=f"{what} (default {default})"
        )
    parser.add_argument("--client-id", default=defaults.client_id)
    parser.add_argument(
        "--client-secret",
        default=defaults.client_secret,
        help="the simulated client's secret (a test value, not a real one)",
    )
    parser.add_argument(
        "--scopes",
        default=" ".join(defaults.scopes),
        help="space-separated scopes granted to the client",
    )
    parser.add_argument(
        "--token-lifetime", type=_positive, default=defaults.token_lifetime, metavar="SECONDS"
    )
    per_minute = DEMO_API_REQUESTS_PER_MINUTE if demo else DEFAULT_API_REQUESTS_PER_MINUTE
    parser.add_argument(
        "--api-requests-per-minute",
        type=_at_least_one,
        default=per_minute,
        metavar="N",
        help=f"API calls a client may make in each minute, 429 beyond (default {per_minute})",
    )
    parser.add_argument(
        "--public-url",
        type=_public_url,
        metavar="URL",
        help="where the simulator's absolute links point (default: its own address)",
    )
    parser.add_argument("--log-format", choices=("json", "console"), default=None)
    return parser


def _address(flag: str, text: str) -> Listen:
    try:
        return parse_listen(text)
    except ValueError as exc:
        raise ConfigError([f"{flag}: {exc}"]) from None


def main(command: str, argv: Sequence[str], environ: Mapping[str, str]) -> int:
    args = parser(command).parse_args(argv)
    config = SimulatorConfig(
        client_id=args.client_id,
        client_secret=args.client_secret,
        scopes=tuple(args.scopes.split()),
        token_lifetime=args.token_lifetime,
        api_requests_per_minute=args.api_requests_per_minute,
        public_url=args.public_url,
    )
    logs.configure(args.log_format, "info")
    listen = _address("--listen", args.listen)
    if command == "simulator":
        asyncio.run(_simulator(config, listen))
    else:
        asyncio.run(_demo(config, listen, _address("--simulator-listen", args.simulator_listen)))
    return 0


async def _simulator(config: SimulatorConfig, listen: Listen) -> None:
    async with servers.running_simulator(config, listen.host, listen.port) as sim:
        structlog.get_logger("proxy.simulator").info("simulator_listening", url=sim.url)
        await servers.stopped()


async def _demo(config: SimulatorConfig, proxy_listen: Listen, simulator_listen: Listen) -> None:
    async with servers.running_simulator(
        config, simulator_listen.host, simulator_listen.port, flag="--simulator-listen"
    ) as sim:
        settings = servers.settings_for(sim, listen=proxy_listen, log_format="console")
        async with servers.running_proxy(settings) as proxy:
            print(instructions(sim, proxy), flush=True)
            await servers.stopped()
    print("demo stopped", file=sys.stderr)


def instructions(sim: servers.RunningSimulator, proxy: servers.RunningProxy) -> str:
    p, s = proxy.url, sim.url
    product = (
        '{"carrierId": 1, "name": "Demo Term Life 20", "productType": "LIFE", "states": ["TX"]}'
    )
    return f"""
agentsync-proxy demo: the AgentSync simulator is on {s}, the proxy on {p}.
No credentials needed: the proxy fetches a token and adds it. Paste these lines in another terminal:

  # list carriers (page 0, 3 a page)
  curl -s '{p}/contracting/v1/customers/carriers?page=0&size=3'

  # create a product (needs the rino_api_agency_write scope, which the demo client has)
  curl -s -X POST '{p}/contracting/v1/customers/products' \\
       -H 'Content-Type: application/json' -d '{product}'

  # delete a product: refused with 403 access_denied, "Policy evaluation failed",
  # because the demo client was not granted rino_api_agency_delete
  curl -s -X DELETE '{p}/contracting/v1/customers/products/101'

  # revoke every token at AgentSync; the next call gets a 401 upstream, and the proxy
  # renews its token and replays the call: you see only the answer
  curl -s -X POST '{s}/_simulator/revoke'
  curl -s '{p}/v2/entities/17345829'

  # the simulator allows {sim.config.api_requests_per_minute} API calls a minute; each answer
  # says how many are left and when the minute's budget comes back
  curl -si '{p}/v2/entities?limit=2' | grep -i '^ratelimit'

  # 20 calls at once: the proxy paces them under that limit (about one a second here),
  # so every answer is a 200, none a 429; then the simulator's count shows no 429 either
  seq 20 | xargs -P 20 -I{{}} curl -s -o /dev/null \\
       -w '{{}}: %{{http_code}} after %{{time_total}} s\\n' \\
       '{p}/v2/entities/17345829'; curl -s '{s}/_simulator/stats'

  # ProducerSync v2 links are absolute; through the proxy they lead back to the proxy,
  # so following "next" needs no token (straight at the simulator it would get a 401)
  curl -s '{p}/v2/licenses?limit=2'

  # what the simulator saw: token requests, tokens issued, API calls by status
  curl -s '{s}/_simulator/stats'

Ctrl-C stops both.
"""
