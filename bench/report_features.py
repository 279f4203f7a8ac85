"""The report's section on two features: what rewriting links and a fleet's Redis add to
agentsync-proxy's latency at one connection, and a cold burst on replicas sharing Redis."""

from __future__ import annotations

from cells import DASH, added, latency, ratio, row, rule, verdict
from columns import DIRECT
from features import DEFAULTS, LINKS, LINKS_OFF, REDIS, REPLICAS, SMALL, Features
from nginx_config import LINKS_COUNT, LINKS_SIZE, SMALL_BODY
from targets import MAX_FEATURE_RATIO


def _rows(
    features: Features, path: str, answer: str, lines: list[tuple[str, str | None]]
) -> list[str]:
    """One row per (target, base): the target's p50 and p99, its p50 added over direct and,
    when a base is named, that added p50 divided by the base's, against the target."""
    rows = []
    for target, base in lines:
        run = features.load[target, path]
        cells = [answer, latency(run.p50_s), latency(run.p99_s)]
        if target == DIRECT:
            rows.append(row(target, [*cells, DASH, DASH, DASH]))
            continue
        mine = features.added_p50(target, path)
        if base is None:
            rows.append(row(target, [*cells, added(mine), DASH, DASH]))
            continue
        theirs = features.added_p50(base, path)
        met = None if theirs <= 0 or mine < 0 else mine <= MAX_FEATURE_RATIO * theirs
        judged = [f"{ratio(mine, theirs)} of `{base}`", f"≤ {MAX_FEATURE_RATIO}x: {verdict(met)}"]
        rows.append(row(target, [*cells, added(mine), *judged]))
    return rows


def render(features: Features) -> list[str]:
    burst = features.fleet_burst
    assert burst is not None
    header = ["answer", "p50", "p99", "p50 added over direct", "ratio of added p50s", "target"]
    outcomes = ", ".join(f"{n:,} x {outcome}" for outcome, n in burst.outcomes.most_common())
    total = sum(burst.outcomes.values())
    return [
        f"wrk at 1 connection (1 thread): after a 2 s warm-up of each, {features.rounds}"
        f" rounds in which every line runs {features.seconds} s in turn; each figure is the"
        " median of its rounds. Each agentsync-proxy is a process of its own, started for"
        " this section.",
        "",
        row("", header),
        rule(len(header)),
        *_rows(
            features,
            LINKS,
            f"`GET {LINKS}`, {LINKS_SIZE // 1024} KiB JSON, {LINKS_COUNT} links",
            [(DIRECT, None), (LINKS_OFF, None), (DEFAULTS, LINKS_OFF)],
        ),
        *_rows(
            features,
            SMALL,
            f"`GET {SMALL}`, {len(SMALL_BODY)}-byte JSON",
            [(DIRECT, None), (DEFAULTS, None), (REDIS, DEFAULTS)],
        ),
        "",
        f"- `{DEFAULTS}` is `--rewrite-links on` (the default) without Redis. Checked before"
        f" the rounds: through it {features.links_rewritten} of the answer's {LINKS_COUNT}"
        f" links point at the proxy's origin; through `{LINKS_OFF}`"
        f" {features.links_left_off} of {LINKS_COUNT} are left on the upstream's.",
        f"- The links answer: a ProducerSync-like page that nginx serves as a static file"
        f" (`Content-Type: application/json`), {LINKS_COUNT} absolute `href`s on the"
        " upstream's own origin (the API base URL), generated at the start of the run.",
        f"- `{REDIS}`: a redis-server of the run's own on loopback, nothing saved.",
        "",
        row(f"cold burst, {REPLICAS} replicas sharing one Redis", ["agentsync-proxy"]),
        rule(1),
        row("launch of all three to every port open", [latency(features.fleet_ports_open_s)]),
        row(f"{total:,} concurrent GETs ({total // REPLICAS:,} on each), answers", [outcomes]),
        row(
            "token requests at the simulator",
            [
                f"{features.fleet_token_requests:,}"
                f" (target 1: {verdict(features.fleet_token_requests == 1)})"
            ],
        ),
        row(
            "p50 / p99 / max latency",
            [" / ".join(latency(s) for s in (burst.p50_s, burst.p99_s, burst.max_s))],
        ),
        "",
        f"- A fresh simulator and a fresh Redis; the {REPLICAS} replicas (`--redis-url`) are"
        " launched at once and the burst starts as soon as every port accepts, each request on"
        " a connection of its own (aiohttp), latency counted from the burst's start.",
    ]
