"""The targets agentsync-proxy is held to, each beside this run's figure and whether it was met."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cells import DASH, added, latency, mebibytes, percent, ratio, row, verdict
from columns import AGENTSYNC, DIRECT, PLAIN_UVLOOP
from features import DEFAULTS, LINKS, LINKS_OFF, REDIS, REPLICAS, SMALL

if TYPE_CHECKING:
    from report import Results

MAX_ADDED_P50_RATIO = 1.1  # p50 added at 1 connection, against the plain proxy on uvloop
MIN_RATE_RATIO = 0.85  # requests/s at 32 connections, against the plain proxy on uvloop
MIN_TRANSFER_RATIO = 0.35  # 1 GiB download and upload, against direct
MAX_PEAK_RSS_MIB = 100
MAX_IDLE_RSS_MIB = 60
MAX_READY_S = 1.0
MIN_UPSTREAM_SHARE = 0.95  # of the API's limit, while the backlog fits the wait
MAX_REFUSAL_P99_S = 0.050
MAX_FEATURE_RATIO = 1.2  # added p50 with links rewritten or Redis, against without
PEERS = (DIRECT, PLAIN_UVLOOP, AGENTSYNC)


def _ratio_met(value: float, base: float, test: bool) -> bool | None:
    """`test` unless the ratio cannot be taken (an added latency lost in the noise)."""
    return test if base > 0 and value >= 0 else None


def _lines(results: Results) -> list[tuple[str, str, bool | None]]:
    """(target, this run's figure, met)"""
    one = {t: results.load[t, 1].p50_s - results.load[DIRECT, 1].p50_s for t in PEERS}
    ours, peer = one[AGENTSYNC], one[PLAIN_UVLOOP]
    rate = {t: results.load[t, 32].requests_per_s for t in PEERS}
    lines: list[tuple[str, str, bool | None]] = [
        (
            f"p50 added over direct at 1 connection, ÷ {PLAIN_UVLOOP}: ≤ {MAX_ADDED_P50_RATIO}x",
            f"{added(ours)} ÷ {added(peer)} = {ratio(ours, peer)}",
            _ratio_met(ours, peer, ours <= MAX_ADDED_P50_RATIO * peer),
        ),
        (
            f"requests/s at 32 connections, ÷ {PLAIN_UVLOOP}: ≥ {MIN_RATE_RATIO}x",
            f"{rate[AGENTSYNC]:,.0f} ÷ {rate[PLAIN_UVLOOP]:,.0f}"
            f" = {ratio(rate[AGENTSYNC], rate[PLAIN_UVLOOP])}",
            rate[AGENTSYNC] >= MIN_RATE_RATIO * rate[PLAIN_UVLOOP],
        ),
    ]
    for kind in ("download", "upload"):
        theirs = results.transfers[kind, DIRECT].mib_per_s
        mine = results.transfers[kind, AGENTSYNC].mib_per_s
        lines.append(
            (
                f"1 GiB {kind}, ÷ direct: ≥ {MIN_TRANSFER_RATIO}x",
                f"{mine:,.0f} ÷ {theirs:,.0f} MiB/s = {ratio(mine, theirs)}",
                mine >= MIN_TRANSFER_RATIO * theirs,
            )
        )
    peak = max(results.peak_rss_kib.values())
    lines += [
        (
            f"peak RSS during the 1 GiB transfers: ≤ {MAX_PEAK_RSS_MIB} MiB",
            " / ".join(mebibytes(results.peak_rss_kib[k]) for k in ("download", "upload")),
            peak <= MAX_PEAK_RSS_MIB * 1024,
        ),
        (
            f"idle RSS after start: ≤ {MAX_IDLE_RSS_MIB} MiB",
            mebibytes(results.idle_rss_kib),
            results.idle_rss_kib <= MAX_IDLE_RSS_MIB * 1024,
        ),
        (
            f"launch to `/-/ready` 200: ≤ {MAX_READY_S:g} s",
            latency(results.ready_s),
            results.ready_s <= MAX_READY_S,
        ),
        (
            "cold burst, one process: token requests: 1",
            f"{results.burst_token_requests:,}",
            results.burst_token_requests == 1,
        ),
    ]
    return lines + _limit_lines(results) + _feature_lines(results)


def _limit_lines(results: Results) -> list[tuple[str, str, bool | None]]:
    ours = next(run for run in results.limits if run.through == AGENTSYNC)
    refusals = results.refusals
    assert refusals is not None
    lines: list[tuple[str, str, bool | None]] = [
        (
            "over the limit, the backlog within the wait: client 429s and upstream 429s: 0",
            f"{ours.client_429:,} and {ours.upstream_429:,}",
            ours.client_429 == 0 and ours.upstream_429 == 0,
        ),
        (
            f"over the limit: upstream 2xx rate ≥ {percent(MIN_UPSTREAM_SHARE)} of the limit",
            percent(ours.upstream_share),
            ours.upstream_share >= MIN_UPSTREAM_SHARE,
        ),
    ]
    cuts = refusals.refusal_latency()
    lines.append(
        (
            f"beyond the wait: `429 rate_limited` p99 < {latency(MAX_REFUSAL_P99_S)}",
            DASH if cuts is None else f"{latency(cuts[1])} (max {latency(cuts[2])})",
            None if cuts is None else cuts[1] < MAX_REFUSAL_P99_S,
        )
    )
    return lines


def _feature_lines(results: Results) -> list[tuple[str, str, bool | None]]:
    features = results.features
    assert features is not None and features.fleet_burst is not None
    lines: list[tuple[str, str, bool | None]] = []
    for name, (with_it, path), without in (
        ("links rewritten (on ÷ off), 20 KiB JSON", (DEFAULTS, LINKS), LINKS_OFF),
        ("Redis (with ÷ without), small JSON", (REDIS, SMALL), DEFAULTS),
    ):
        mine, base = features.added_p50(with_it, path), features.added_p50(without, path)
        lines.append(
            (
                f"{name}: p50 added over direct at 1 connection ≤ {MAX_FEATURE_RATIO}x",
                f"{added(mine)} ÷ {added(base)} = {ratio(mine, base)}",
                _ratio_met(mine, base, mine <= MAX_FEATURE_RATIO * base),
            )
        )
    burst = features.fleet_burst
    lines.append(
        (
            f"cold burst on {REPLICAS} replicas sharing Redis: token requests: 1",
            f"{features.fleet_token_requests:,}"
            f" ({burst.ok:,} of {sum(burst.outcomes.values()):,} answered 200)",
            features.fleet_token_requests == 1,
        )
    )
    return lines


def render(results: Results) -> list[str]:
    lines = _lines(results)
    met = sum(1 for *_, ok in lines if ok)
    return [
        f"{met} of {len(lines)} met in this run.",
        "",
        row("target", ["this run", ""]),
        row("---", ["--:", "---"]),
        *(row(target, [figure, verdict(ok)]) for target, figure, ok in lines),
    ]
