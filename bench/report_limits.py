"""The report's section on the API's rate limit: what clients and the API saw through each
proxy while clients wanted three times the limit, and how fast agentsync-proxy refuses what its
wait cannot hold."""

from __future__ import annotations

import statistics

from cells import DASH, latency, percent, row, rule
from limits import CLIENTS, LIMIT_PER_MINUTE, OVER, REFUSAL_SECONDS, WINDOW_SECONDS, LimitRun


def _ok_latency(run: LimitRun) -> str:
    """p50 and max of the 2xx answers' latency."""
    latencies = sorted(a.seconds for a in run.offer.answers if a.outcome.startswith("2"))
    if not latencies:
        return DASH
    return f"{latency(statistics.median(latencies))} / {latency(latencies[-1])}"


def _share(part: int, whole: int) -> str:
    return f"{part:,} ({percent(part / whole)})" if whole else "0"


def _others(run: LimitRun) -> str:
    """Answers neither 2xx nor 429 (connection errors, 5xx), should there be any."""
    others = {
        outcome: n
        for outcome, n in run.offer.outcomes().items()
        if not outcome.startswith("2") and outcome not in ("429", "rate_limited")
    }
    return ", ".join(f"{n:,} x {outcome}" for outcome, n in others.items()) or "0"


def render(runs: list[LimitRun], refusals: LimitRun) -> list[str]:
    per_second = LIMIT_PER_MINUTE / 60
    header = [
        "settings",
        "client requests",
        "answered 2xx",
        "429s clients saw",
        "of them the proxy's `rate_limited`",
        "other answers",
        "upstream 429s",
        "upstream 2xx/s, share of the limit",
        "2xx latency p50 / max",
    ]
    lines = [
        f"{CLIENTS} closed-loop clients wanting {OVER * per_second:g} requests/s together"
        f" ({OVER}x the limit) for {WINDOW_SECONDS:g} s, `GET /v2/entities/17345829` on the"
        f" simulator's API with its limit at {LIMIT_PER_MINUTE} a minute ({per_second:g}/s);"
        " targets for agentsync-proxy: 0 client 429s and 0 upstream 429s while the backlog fits"
        " the wait, upstream 2xx at ≥ 95% of the limit.",
        "",
        row("through", header),
        rule(len(header)),
    ]
    for run in runs:
        lines.append(
            row(
                run.through,
                [
                    run.settings,
                    f"{run.requests:,}",
                    _share(run.ok, run.requests),
                    f"{run.client_429:,}",
                    f"{run.refused:,}",
                    _others(run),
                    f"{run.upstream_429:,}",
                    f"{run.upstream_ok / run.offer.seconds:.2f} ({percent(run.upstream_share)})",
                    _ok_latency(run),
                ],
            )
        )
    cuts = refusals.refusal_latency()
    refusal_header = [
        "settings",
        "client requests",
        "answered 2xx",
        "refused: `429 rate_limited`",
        "other answers",
        "upstream 429s",
        "upstream 2xx/s, share of the limit",
        "2xx latency p50 / max",
        "refusal latency p50 / p99 / max",
    ]
    lines += [
        "",
        f"Beyond the wait: an open-loop offer of {refusals.offered_per_s:g} requests/s"
        f" ({refusals.offered_per_s / per_second:g}x the limit) for {REFUSAL_SECONDS:g} s"
        " through agentsync-proxy, whose backlog cannot fit its wait; target: every request"
        " beyond it refused in < 50 ms (p99), 0 upstream 429s.",
        "",
        row("through", refusal_header),
        rule(len(refusal_header)),
        row(
            refusals.through,
            [
                refusals.settings,
                f"{refusals.requests:,}",
                _share(refusals.ok, refusals.requests),
                _share(refusals.refused, refusals.requests),
                _others(refusals),
                f"{refusals.upstream_429:,}",
                f"{refusals.upstream_ok / refusals.offer.seconds:.2f}"
                f" ({percent(refusals.upstream_share)})",
                _ok_latency(refusals),
                DASH if cuts is None else " / ".join(latency(s) for s in cuts),
            ],
        ),
        "",
        *(f"- {line}" for line in _method()),
    ]
    return lines


def _method() -> list[str]:
    return [
        "Each proxy has a simulator of its own, started with `--api-requests-per-minute"
        f" {LIMIT_PER_MINUTE}`; the three closed-loop runs go at the same time (the load is"
        " light: tens of requests a second), so that they take one window, not three.",
        "The simulator counts API calls in fixed 60 s windows, each starting with a client's"
        f" first call: a run of {WINDOW_SECONDS:g} s is one window, long enough for a proxy"
        " that does not pace to spend the window's whole budget early and then meet the 429s"
        " for the rest of it, as it would in production.",
        "Closed loop: each client sends, waits for the answer, and sends again when its share"
        " of the offer is due (at once when the answer came later), so a proxy that holds"
        " requests slows its clients down instead of piling up a backlog.",
        "nginx and the plain aiohttp proxy (on uvloop) send a token fetched from the"
        " simulator's token endpoint before the run; agentsync-proxy fetches its own.",
        "Upstream figures are the simulator's `/_simulator/stats` (`api_calls` by status);"
        " the upstream 2xx rate is taken over the run, from the first request sent to the last"
        " answer.",
    ]
