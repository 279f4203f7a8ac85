"""The results of one run and their markdown rendering: the targets met or not, then the main
table (agentsync-proxy beside a direct connection, nginx and a plain aiohttp proxy on asyncio's
and on uvloop's event loop, with ratios taken within the run), the API's rate limit through each
proxy, and what rewriting links and a fleet's Redis cost."""

from __future__ import annotations

from dataclasses import dataclass, field

import report_features
import report_limits
import targets
from burst import BurstResult
from cells import DASH, added, latency, mebibytes, ratio, row
from columns import AGENTSYNC, DIRECT, NGINX, PLAIN, PLAIN_UVLOOP
from features import Features
from limits import LimitRun
from load import LoadResult
from transfers import Transfer

TARGETS = (DIRECT, NGINX, PLAIN, PLAIN_UVLOOP, AGENTSYNC)
COMPARED = (DIRECT, NGINX, PLAIN, PLAIN_UVLOOP)  # what agentsync-proxy is divided by
PROXIES = COMPARED[1:]  # the columns with an added latency over direct


@dataclass
class Results:
    machine: list[str]
    settings: list[str]
    load: dict[tuple[str, int], LoadResult] = field(default_factory=dict)  # (target, connections)
    transfers: dict[tuple[str, str], Transfer] = field(default_factory=dict)  # (kind, target)
    peak_rss_kib: dict[str, int] = field(default_factory=dict)  # kind -> agentsync-proxy's peak
    idle_rss_kib: int = 0
    ready_s: float = 0.0
    token_requests_steady: int = 0
    access_log_lines: int = 0
    burst: BurstResult | None = None
    burst_token_requests: int = 0
    burst_port_open_s: float = 0.0
    limits: list[LimitRun] = field(default_factory=list)  # the closed-loop offer, each proxy
    refusals: LimitRun | None = None  # agentsync-proxy, a backlog beyond its wait
    features: Features | None = None  # links, Redis, the fleet's cold burst


def _p50(run: LoadResult) -> float:
    return run.p50_s


def _p99(run: LoadResult) -> float:
    return run.p99_s


def _load_rows(results: Results, connections: int) -> list[str]:
    runs = {target: results.load[target, connections] for target in TARGETS}
    ours = runs[AGENTSYNC]
    per = f"{connections} connection{'s' if connections > 1 else ''}"

    def rate(run: LoadResult) -> str:
        text = f"{run.requests_per_s:,.0f}"
        return text + (f" ({run.errors:,} errors)" if run.errors else "")

    rows = [
        row(
            f"requests/s, {per}",
            [rate(runs[t]) for t in TARGETS]
            + [ratio(ours.requests_per_s, runs[t].requests_per_s) for t in COMPARED],
        )
    ]
    for name, pick in (("p50", _p50), ("p99", _p99)):
        rows.append(
            row(
                f"{name} latency, {per}",
                [latency(pick(runs[t])) for t in TARGETS]
                + [ratio(pick(ours), pick(runs[t])) for t in COMPARED],
            )
        )
        if connections == 1:
            extra = {t: pick(runs[t]) - pick(runs[DIRECT]) for t in TARGETS}
            rows.append(
                row(
                    f"{name} added over direct, {per}",
                    [DASH]
                    + [added(extra[t]) for t in TARGETS[1:]]
                    + [DASH]
                    + [ratio(extra[AGENTSYNC], extra[t]) for t in PROXIES],
                )
            )
    return rows


def _transfer_rows(results: Results) -> list[str]:
    rows = []
    for kind in ("download", "upload"):
        direct, ours = results.transfers[kind, DIRECT], results.transfers[kind, AGENTSYNC]
        rows.append(
            row(
                f"1 GiB {kind}, MiB/s",
                [
                    f"{direct.mib_per_s:,.0f}",
                    *_dashes(PROXIES),
                    f"{ours.mib_per_s:,.0f}",
                    ratio(ours.mib_per_s, direct.mib_per_s),
                    *_dashes(PROXIES),
                ],
            )
        )
    for kind in ("download", "upload"):
        rows.append(
            _only_ours(f"peak RSS during the 1 GiB {kind}", mebibytes(results.peak_rss_kib[kind]))
        )
    return rows


def _dashes(columns: tuple[str, ...]) -> list[str]:
    return [DASH] * len(columns)


def _only_ours(label: str, value: str) -> str:
    """A row with agentsync-proxy's figure alone."""
    return row(label, [*_dashes(TARGETS[:-1]), value, *_dashes(COMPARED)])


def _startup_rows(results: Results) -> list[str]:
    burst = results.burst
    assert burst is not None
    outcomes = ", ".join(f"{n:,} x {outcome}" for outcome, n in burst.outcomes.most_common())
    only_ours = [
        ("launch to `/-/ready` 200", latency(results.ready_s)),
        ("idle RSS after start", mebibytes(results.idle_rss_kib)),
        ("token requests, whole steady-state run", f"{results.token_requests_steady:,}"),
        ("access log lines written, steady-state run", f"{results.access_log_lines:,}"),
        ("cold burst: launch to port open", latency(results.burst_port_open_s)),
        (f"cold burst: {sum(burst.outcomes.values()):,} concurrent GETs, answers", outcomes),
        ("cold burst: token requests", f"{results.burst_token_requests:,}"),
        (
            "cold burst: p50 / p99 / max latency",
            " / ".join(latency(s) for s in (burst.p50_s, burst.p99_s, burst.max_s)),
        ),
    ]
    return [_only_ours(label, value) for label, value in only_ours]


def render(results: Results) -> str:
    header = row("", [*TARGETS, *(f"agentsync-proxy ÷ {t}" for t in COMPARED)])
    rows = [
        header,
        row("---", ["--:"] * (len(TARGETS) + len(COMPARED))),
        *_load_rows(results, 1),
        *_load_rows(results, 32),
        *_transfer_rows(results),
        *_startup_rows(results),
    ]
    assert results.features is not None and results.refusals is not None
    lines = [
        "# agentsync-proxy benchmark",
        "",
        *(f"- {line}" for line in results.machine),
        "",
        "## Targets",
        "",
        *targets.render(results),
        "",
        "## Steady load, 1 GiB transfers, start-up",
        "",
        *rows,
        "",
        *(f"- {line}" for line in results.settings),
        "",
        "## Over the API's rate limit",
        "",
        *report_limits.render(results.limits, results.refusals),
        "",
        "## Links and Redis",
        "",
        *report_features.render(results.features),
        "",
    ]
    return "\n".join(lines)
