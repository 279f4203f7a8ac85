"""`make soak`: about a minute of mixed traffic through agentsync-proxy, with token-endpoint and
upstream faults, ending with assertions that nothing was lost, corrupted or leaked.

Usage: .venv/bin/python soak/run.py [--seconds 60] [--workers 24] [--keep]

Three processes on loopback ports:

- `agentsync-proxy simulator` with 20 s tokens, so the proxy renews in the background every
  10 s; the soak injects faults through its /_simulator/ endpoints (chaos.py);
- the soak upstream (echo_upstream.py), the proxy's API base URL: it hashes every body and
  records the hash per X-Request-Id, and accepts a bearer token only while the simulator does
  (it asks the simulator's API with the same Authorization). A revocation at the simulator thus
  makes the upstream answer 401 to the proxy's token for real: the proxy renews it and replays
  the request, body included, and the upstream compares the replayed body with the first. A
  request flagged `X-Soak-401: once` (or `early`, before its body is read) is refused on first
  sight whatever its token, so replays happen between revocations too;
- `agentsync-proxy serve` in front of the upstream, spooling bodies above 64 KiB to temporary
  files, its TMPDIR a directory of the run's own.

The traffic (workload.py) runs from 24 workers and one worker sending a request flagged for a
401 every second or two. Before it, a warm-up of the same mix; then, once the proxy is idle,
its open file descriptors, temporary files and RSS are the baseline. After the traffic, once
the client's connections are closed and nothing is in flight, they must be back near it."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import aiohttp
import footprint
import stack
import workload
from access_log import replay_disagreements
from chaos import Chaos
from chaos import describe as describe_chaos
from children import SOAK_DIR, Processes, show_logs
from echo_upstream import KEEPALIVE_TIMEOUT
from footprint import Footprint, Sampler
from stack import Servers, get_json, proxy_metrics, wait_idle, wait_ready
from summary import Check, Result, render

RESULTS_FILE = SOAK_DIR / "results.md"
REQUEST_TIMEOUT = 30.0  # a request without an answer by then is a hang
FD_MARGIN = 5
RSS_MARGIN_MIB = 30
IDLE_SECONDS = KEEPALIVE_TIMEOUT + 1.5  # the proxy's pooled upstream connections idle out
SETTLE_TIMEOUT = 40.0  # from the end of the traffic: ample for the above


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0, help="traffic (default 60)")
    parser.add_argument("--warm-up", type=float, default=5.0, help="warm-up (default 5)")
    parser.add_argument("--workers", type=int, default=24, help="concurrent workers (24)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random traffic")
    parser.add_argument("--keep", action="store_true", help="keep the logs' directory")
    return parser.parse_args()


def header(args: argparse.Namespace) -> list[str]:
    return [
        f"machine: {os.cpu_count()} CPUs, Linux {platform.release()}, Python"
        f" {platform.python_version()}, aiohttp {metadata.version('aiohttp')}, agentsync-proxy"
        f" {metadata.version('agentsync-proxy')}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"command: `make soak` (`soak/run.py --seconds {args.seconds:g} --workers"
        f" {args.workers} --seed {args.seed}`)",
        f"proxy: {stack.settings()}; {describe_chaos()}",
        f"traffic: {args.workers} workers (small GETs; POSTs, PUTs and PATCHes of 0 to 8 MiB,"
        " some chunked; streamed 1-4 MiB downloads; answers reset or closed mid-body; upstream"
        f" 503s; {workload.STALL_SECONDS:g} s stalls, some with a spooled body; clients giving"
        " up mid-upload and mid-download; after a 503 `token_unavailable` each waits out its"
        f" `Retry-After`, up to {workload.MAX_BACK_OFF:g} s) and one more sending a request the"
        " upstream refuses once with 401 every 1-2 s",
    ]


# ---- the phases ----


async def drive(
    servers: Servers, seconds: float, workers: int, seed: int, chaos: Chaos | None
) -> tuple[workload.Tally, float]:
    """Traffic for `seconds`, then until every request has its answer; return the tally and
    how long the last answers took after the stop."""
    tally, stop = workload.Tally(), asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        traffic = workload.Traffic(session, servers.proxy, tally, stop, REQUEST_TIMEOUT)
        async with asyncio.TaskGroup() as group:
            group.create_task(traffic.run(workers, seed))
            if chaos is not None:
                group.create_task(chaos.run(stop))
            await asyncio.sleep(seconds)
            stop.set()
            stopped = time.monotonic()
    return tally, time.monotonic() - stopped


async def settle(servers: Servers, baseline: Footprint, since: float) -> tuple[Footprint, float]:
    """The proxy's footprint once back within the margins of the baseline (or at the timeout),
    and the seconds from `since` to then."""
    while True:
        now = footprint.read(servers.proxy_pid, servers.temp_dir)
        elapsed = time.monotonic() - since
        back = now.fds <= baseline.fds + FD_MARGIN and now.temp_files <= baseline.temp_files
        if back or elapsed > SETTLE_TIMEOUT:
            return now, elapsed
        await asyncio.sleep(0.25)


async def soak(args: argparse.Namespace, servers: Servers, result: Result) -> None:
    connector = aiohttp.TCPConnector(force_close=True)  # holds no connection to the proxy
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=10)
    ) as control:
        if await wait_ready(control, servers.proxy) != 200:
            raise RuntimeError("agentsync-proxy did not become ready")
        await warm_up(args, control, servers, result)
        await traffic(args, control, servers, result)
        await finish(control, servers, result)


async def warm_up(
    args: argparse.Namespace, control: aiohttp.ClientSession, servers: Servers, result: Result
) -> None:
    """The same mix without faults; then, once the proxy is idle, the baseline."""
    print(f"warm-up: {args.warm_up:g} s", flush=True)
    result.warm_up, _ = await drive(servers, args.warm_up, args.workers, args.seed, None)
    await wait_idle(control, servers.proxy)
    await asyncio.sleep(IDLE_SECONDS)
    result.baseline = footprint.read(servers.proxy_pid, servers.temp_dir)


async def traffic(
    args: argparse.Namespace, control: aiohttp.ClientSession, servers: Servers, result: Result
) -> None:
    """The mix with faults, the proxy's footprint sampled all along."""
    sampler = Sampler(servers.proxy_pid, servers.temp_dir)
    sampling = asyncio.get_running_loop().create_task(sampler.run())
    chaos = Chaos(control, servers.simulator)
    print(f"traffic: {args.seconds:g} s from {args.workers} workers", flush=True)
    try:
        result.traffic, result.drain_seconds = await drive(
            servers, args.seconds, args.workers, args.seed + 1000, chaos
        )
    finally:
        sampling.cancel()
    result.seconds, result.chaos = args.seconds, chaos.done
    result.peak, result.rss_timeline = sampler.peak, sampler.rss_timeline


async def finish(control: aiohttp.ClientSession, servers: Servers, result: Result) -> None:
    """Once the proxy is idle again: its footprint, the ledger, the counters, the verdict."""
    print("settling", flush=True)
    since = time.monotonic()
    in_flight = await wait_idle(control, servers.proxy)
    await asyncio.sleep(IDLE_SECONDS)  # as idle as at the baseline
    assert result.baseline is not None
    result.end, result.settle_seconds = await settle(servers, result.baseline, since)
    result.temp_dir_entries = len(list(servers.temp_dir.iterdir()))
    result.ledger = await get_json(control, servers.upstream + "/_soak/ledger")
    (servers.temp_dir.parent / "ledger.json").write_text(json.dumps(result.ledger, indent=1))
    result.log_disagreements = replay_disagreements(
        servers.proxy_log, ledger_list(result.ledger, "replayed_ids")
    )
    result.simulator = await get_json(control, servers.simulator + "/_simulator/stats")
    result.metrics = await proxy_metrics(control, servers.proxy)
    result.ready_status = await wait_ready(control, servers.proxy, patience=15)
    result.checks = assertions(result, in_flight)


# ---- the verdict ----


def ledger_list(ledger: dict[str, object], key: str) -> list[object]:
    value = ledger.get(key)
    return value if isinstance(value, list) else []


def assertions(result: Result, in_flight: float) -> list[Check]:
    return [*traffic_checks(result), *footprint_checks(result, in_flight)]


def traffic_checks(result: Result) -> list[Check]:
    phases = (result.warm_up, result.traffic)
    failures = [failure for phase in phases for failure in phase.failures]
    corrupt = [body for phase in phases for body in phase.corrupt]
    total, intact = sum(p.requests for p in phases), sum(p.intact for p in phases)
    replays = int(str(result.ledger.get("replays", 0)))
    mismatches = ledger_list(result.ledger, "mismatches")
    more = ledger_list(result.ledger, "seen_more_than_twice")
    return [
        Check(
            "every request got an answer",
            not failures,
            f"{total - len(failures)} of {total}, warm-up included",
        ),
        Check(
            "every body arrived as sent (echoed and downloaded hashes)",
            not corrupt,
            f"{intact} intact, {len(corrupt)} changed",
        ),
        Check(
            "replays happened, every replayed body equal to the first",
            replays > 0 and not mismatches,
            f"{replays} replays, {len(mismatches)} differed",
        ),
        Check("no request sent upstream more than twice", not more, f"{len(more)}"),
    ]


def footprint_checks(result: Result, in_flight: float) -> list[Check]:
    baseline, end = result.baseline, result.end
    assert baseline is not None and end is not None
    rss_growth = (end.rss_kib - baseline.rss_kib) / 1024
    return [
        Check("nothing in flight after the traffic", in_flight == 0, f"{in_flight:g}"),
        Check(
            f"open fds back to baseline (+{FD_MARGIN})",
            end.fds <= baseline.fds + FD_MARGIN,
            f"{baseline.fds} -> {end.fds}",
        ),
        Check(
            "temporary files back to baseline",
            end.temp_files <= baseline.temp_files and result.temp_dir_entries == 0,
            f"{baseline.temp_files} -> {end.temp_files}",
        ),
        Check(
            f"RSS back to baseline (+{RSS_MARGIN_MIB} MiB)",
            rss_growth <= RSS_MARGIN_MIB,
            f"{rss_growth:+.1f} MiB",
        ),
        Check("proxy ready at the end", result.ready_status == 200, f"{result.ready_status}"),
    ]


def main() -> int:
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="agentsync-soak-"))
    result = Result(header=header(args))
    try:
        with Processes(root) as children:
            servers = stack.start(children, root)
            asyncio.run(soak(args, servers, result))
    except BaseException:
        show_logs(root)
        raise
    finally:
        if args.keep or not result.passed:
            print(f"logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    text = render(result)
    print(text)
    RESULTS_FILE.write_text(text)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
