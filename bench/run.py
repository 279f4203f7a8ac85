"""`make bench`: agentsync-proxy against a direct connection, nginx and a plain aiohttp proxy (on
asyncio's event loop and on uvloop's, agentsync-proxy's own), in one run on loopback: steady load,
1 GiB transfers, start-up and cold bursts, the API's rate limit through each proxy, and what
rewriting links and a fleet's Redis cost; prints a markdown report with the targets met or not
and writes it to bench/results.md.

Usage: .venv/bin/python bench/run.py [--seconds 4] [--rounds 3] [--burst 1000] [--transfers 5]
                                     [--feature-seconds 3] [--feature-rounds 6]"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path

import burst
import features
import limits
import load
import nginx_config
import processes
import report
import servers
import transfers
from columns import AGENTSYNC, DIRECT, NGINX, PLAIN, PLAIN_UVLOOP
from processes import PeakRss, Processes, status_kib
from report import Results
from servers import url

RESULTS_FILE = servers.BENCH_DIR / "results.md"
WARM_UP_SECONDS = 2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=4, help="each wrk run (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs of each target, in turn")
    parser.add_argument("--burst", type=int, default=1000, help="cold-start burst size")
    parser.add_argument("--transfers", type=int, default=5, help="runs of each 1 GiB transfer")
    parser.add_argument(
        "--feature-seconds", type=int, default=3, help="each wrk run on links and Redis (default 3)"
    )
    parser.add_argument(
        "--feature-rounds",
        type=int,
        default=6,
        help="wrk runs of each, in turn, on links and Redis (default 6: their ratios are of"
        " differences of a few hundred µs)",
    )
    return parser.parse_args()


def machine() -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return [
        f"machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}",
        f"Python {platform.python_version()}, aiohttp {metadata.version('aiohttp')},"
        f" agentsync-proxy {metadata.version('agentsync-proxy')}",
        f"command: `make bench` (`{os.path.relpath(sys.executable)} bench/run.py"
        f"{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`),"
        f" {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
    ]


def settings(args: argparse.Namespace) -> list[str]:
    return [
        f"`GET /v1/small` ({len(nginx_config.SMALL_BODY)}-byte JSON) with wrk"
        f" `--latency`, 1 thread at 1 connection, 2 threads at 32: after a {WARM_UP_SECONDS} s"
        f" warm-up of each, {args.rounds} rounds in which every column runs {args.seconds} s in"
        " turn; each figure is the median of its rounds.",
        "Ratios are agentsync-proxy's value divided by the column's: below 1x is fewer"
        " requests/s or less throughput; above 1x is more latency.",
        "Everything runs on the same CPUs over loopback: wrk, both nginx, the proxies. p99 at"
        " 1 connection and the 1 GiB rates move from run to run with the machine's other load"
        " (tens of percent on a shared VM); p50 and requests/s are the steadier figures.",
        "Upstream: nginx, 1 worker. nginx proxy: 1 worker, a static `Authorization` header,"
        " keep-alive upstream pool, access log to a file. Plain aiohttp proxy:"
        " bench/plain_proxy.py, no logging, on asyncio's event loop, and again on uvloop's"
        " (agentsync-proxy's own). agentsync-proxy: `agentsync-proxy serve`,"
        " JSON access log to a file, token from `agentsync-proxy simulator`, every setting at"
        " its default (links rewritten in JSON answers, the API's rate limit paced by what it"
        " announces; nginx announces none).",
        "Upload sink: nginx streams the body (`proxy_request_buffering off`) to"
        " bench/upload_sink.py, which reads every byte before it answers 204.",
        "1 GiB transfers with curl, direct and through agentsync-proxy in turn (median of"
        f" {args.transfers} each); peak RSS is the proxy's"
        " VmHWM over each kind of transfer, and a 10 ms VmRSS poll.",
        f"Cold burst: a fresh simulator and proxy; {args.burst:,} GETs (aiohttp, one connection"
        " each) fired as soon as the port accepts; latency counted from the burst's start.",
    ]


def measure_load(results: Results, targets: dict[str, int], seconds: int, rounds: int) -> None:
    """Every target in turn, `rounds` times at each number of connections; each figure is the
    median of its rounds, so that the machine's other load, which drifts over seconds, weighs
    on every column alike."""
    for target, port in targets.items():
        print(f"wrk: warming up {target}", flush=True)
        load.run_wrk(url(port, "/v1/small"), 32, WARM_UP_SECONDS)
    for connections in (1, 32):
        runs: dict[str, list[load.LoadResult]] = {target: [] for target in targets}
        for round_number in range(rounds):
            print(f"wrk: {connections} connection(s), round {round_number + 1}", flush=True)
            for target, port in targets.items():
                runs[target].append(load.run_wrk(url(port, "/v1/small"), connections, seconds))
        for target, done in runs.items():
            results.load[target, connections] = load.median_of(done)


def _median(done: list[transfers.Transfer]) -> transfers.Transfer:
    for transfer in done:
        if transfer.status >= 300 or transfer.size != transfers.MIB * 1024:
            raise RuntimeError(f"a 1 GiB transfer failed: {transfer}")
    return sorted(done, key=lambda t: t.seconds)[len(done) // 2]


def measure_transfers(
    results: Results, upstream: servers.Upstream, proxy_port: int, proxy_pid: int, runs: int
) -> None:
    """Each kind of 1 GiB transfer direct and through agentsync-proxy in turn, `runs` times
    after one untimed pair (the first read of the sparse file fills the page cache; the proxy
    opens its pooled connection): the machine's other load, which drifts over seconds, weighs
    on both sides of the ratio alike."""
    for kind, path in (("download", "/v1/download"), ("upload", "/v1/upload")):
        print(f"1 GiB {kind}s: direct and agentsync-proxy in turn", flush=True)
        one = {
            target: (
                partial(transfers.download, url(port, path))
                if kind == "download"
                else partial(transfers.upload, url(port, path), upstream.upload_file)
            )
            for target, port in ((DIRECT, upstream.port), (AGENTSYNC, proxy_port))
        }
        done: dict[str, list[transfers.Transfer]] = {DIRECT: [], AGENTSYNC: []}
        with PeakRss(proxy_pid) as rss:
            for _ in range(runs + 1):
                for target, transfer in one.items():
                    done[target].append(transfer())
        for target, timed in done.items():
            results.transfers[kind, target] = _median(timed[1:])
        results.peak_rss_kib[kind] = rss.peak_kib


def measure_cold_burst(results: Results, procs: Processes, upstream_port: int, count: int) -> None:
    """A fresh simulator and proxy; the burst starts the moment the proxy's port is open."""
    print(f"cold-start burst of {count:,}", flush=True)
    simulator_port = servers.start_simulator(procs, "burst-simulator")
    started = time.perf_counter()
    proxy, port = servers.launch_agentsync_proxy(
        procs, "burst-agentsync-proxy", simulator_port, upstream_port
    )
    try:
        processes.wait_for_port(port, proxy, "the burst's agentsync-proxy")
        results.burst_port_open_s = time.perf_counter() - started
        results.burst = burst.fire(url(port, "/v1/small"), count)
        results.burst_token_requests = servers.token_requests(simulator_port)
    finally:
        procs.stop(proxy)


def access_log_lines(log: Path) -> int:
    with log.open("rb") as file:
        return sum(1 for line in file if json.loads(line).get("event") == "request")


def run(args: argparse.Namespace, procs: Processes, root: Path) -> Results:
    results = Results(machine=machine(), settings=settings(args))
    upstream = servers.start_upstream(procs, root)
    plain_port = servers.start_plain_proxy(procs, upstream.port, "asyncio")
    plain_uvloop_port = servers.start_plain_proxy(procs, upstream.port, "uvloop")
    simulator_port = servers.start_simulator(procs, "simulator")
    started = time.perf_counter()
    proxy, proxy_port = servers.launch_agentsync_proxy(
        procs, "agentsync-proxy", simulator_port, upstream.port
    )
    processes.wait_for_ok(proxy_port, "/-/ready", proxy, "agentsync-proxy")
    results.ready_s = time.perf_counter() - started
    time.sleep(1)
    results.idle_rss_kib = status_kib(proxy.pid, "VmRSS")

    targets = {
        DIRECT: upstream.port,
        NGINX: upstream.nginx_proxy_port,
        PLAIN: plain_port,
        PLAIN_UVLOOP: plain_uvloop_port,
        AGENTSYNC: proxy_port,
    }
    measure_load(results, targets, args.seconds, args.rounds)
    measure_transfers(results, upstream, proxy_port, proxy.pid, args.transfers)
    results.token_requests_steady = servers.token_requests(simulator_port)
    procs.stop(proxy)
    results.access_log_lines = access_log_lines(root / "agentsync-proxy.log")
    measure_cold_burst(results, procs, upstream.port, args.burst)
    results.features = features.measure_features(
        procs, upstream.port, simulator_port, args.feature_seconds, args.feature_rounds
    )
    features.measure_fleet_burst(procs, results.features, upstream.port, args.burst)
    results.limits = limits.measure_over_limit(procs, root)
    results.refusals = limits.measure_refusals(procs)
    return results


def main() -> int:
    args = parse_args()
    processes.ensure_tools()
    root = Path(tempfile.mkdtemp(prefix="agentsync-bench-"))
    try:
        started = time.perf_counter()
        with Processes(root) as procs:
            results = run(args, procs, root)
        results.machine.append(f"the whole run took {(time.perf_counter() - started) / 60:.1f} min")
    except BaseException:
        processes.show_logs(root)
        raise
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = report.render(results)
    print(text)
    RESULTS_FILE.write_text(text)
    print(f"written to {RESULTS_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
