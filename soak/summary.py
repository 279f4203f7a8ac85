"""The soak's figures, the assertions made on them, and the markdown summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from footprint import Footprint
from workload import Tally

MIB = 1 << 20


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Result:
    header: list[str]
    seconds: float = 0.0
    drain_seconds: float = 0.0  # from the stop to the last answer
    warm_up: Tally = field(default_factory=Tally)
    traffic: Tally = field(default_factory=Tally)
    chaos: Counter[str] = field(default_factory=Counter)
    ledger: dict[str, object] = field(default_factory=dict)
    log_disagreements: list[str] = field(default_factory=list)  # access log vs upstream
    simulator: dict[str, object] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline: Footprint | None = None
    peak: Footprint | None = None
    end: Footprint | None = None
    settle_seconds: float = 0.0  # from the end of the traffic to the end figures
    rss_timeline: list[int] = field(default_factory=list)  # KiB every 10 s of traffic
    temp_dir_entries: int = 0
    ready_status: int = 0
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)


def _count_list(counts: dict[str, float] | Counter[str]) -> str:
    return ", ".join(f"{label} {value:g}" for label, value in sorted(counts.items())) or "none"


def requests_table(result: Result) -> list[str]:
    tally = result.traffic
    by_kind: dict[str, Counter[str]] = {}
    for (kind, label), count in tally.outcomes.items():
        by_kind.setdefault(kind, Counter())[label] = count
    lines = ["| kind | requests | answers |", "|---|---:|---|"]
    for kind, labels in sorted(by_kind.items(), key=lambda item: -item[1].total()):
        answers = ", ".join(f"{label}: {count}" for label, count in labels.most_common())
        lines.append(f"| {kind} | {labels.total()} | {answers} |")
    elapsed = result.seconds + result.drain_seconds
    rate = tally.requests / elapsed if elapsed else 0.0
    problems = f"{len(tally.failures)} failed, {len(tally.corrupt)} changed"
    lines.append(f"| all | {tally.requests} ({rate:.0f}/s) | {problems} |")
    return lines


def _replays(result: Result) -> list[str]:
    ledger, sim = result.ledger, result.simulator
    more = len(_list(ledger, "seen_more_than_twice"))
    return [
        "| | |",
        "|---|---|",
        f"| requests the upstream saw twice (replays) | {ledger.get('replays')}, of which"
        f" {ledger.get('replays_compared')} compared body for body"
        f" ({ledger.get('replays_with_body')} non-empty) |",
        f"| replayed bodies that differed from the first | {len(_list(ledger, 'mismatches'))} |",
        f"| requests sent upstream more than twice | {more} |",
        f"| proxy `replays_total` | {_count_list(result.metrics.get('replays', {}))} |",
        "| access lines whose `replayed` disagrees with the upstream |"
        f" {len(result.log_disagreements)} |",
        f"| echo answers that came after a replay | {result.traffic.replayed_answers} |",
        f"| token requests / tokens issued (simulator) | {sim.get('token_requests')} /"
        f" {sim.get('tokens_issued')} |",
        f"| proxy `token_requests_total` | {_count_list(result.metrics.get('tokens', {}))} |",
        f"| faults injected | {_count_list(result.chaos)} |",
        f"| token checks at the simulator's API | {_count_list(_dict(sim, 'api_calls'))} |",
        f"| proxy's own error answers | {_count_list(result.metrics.get('errors', {}))} |",
    ]


def _list(data: dict[str, object], key: str) -> list[object]:
    value = data.get(key)
    return value if isinstance(value, list) else []


def _dict(data: dict[str, object], key: str) -> dict[str, float]:
    value = data.get(key)
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _mib_list(kib: list[int]) -> str:
    return ", ".join(f"{value / 1024:.0f}" for value in kib)


def footprint_table(result: Result) -> list[str]:
    rows = [("baseline", result.baseline), ("peak", result.peak), ("end", result.end)]
    shown = [(name, fp) for name, fp in rows if fp is not None]
    lines = [
        "| proxy process | " + " | ".join(name for name, _ in shown) + " |",
        "|---|" + "---:|" * len(shown),
    ]
    fields: list[tuple[str, Callable[[Footprint], str]]] = [
        ("open file descriptors", lambda fp: str(fp.fds)),
        ("sockets", lambda fp: str(fp.sockets)),
        ("temporary files", lambda fp: str(fp.temp_files)),
        ("RSS", lambda fp: f"{fp.rss_kib / 1024:.1f} MiB"),
    ]
    for label, show in fields:
        lines.append(f"| {label} | " + " | ".join(show(fp) for _, fp in shown) + " |")
    return lines


def checks_table(result: Result) -> list[str]:
    lines = ["| assertion | result | detail |", "|---|---|---|"]
    for check in result.checks:
        lines.append(f"| {check.name} | {'PASS' if check.passed else 'FAIL'} | {check.detail} |")
    return lines


def render(result: Result) -> str:
    up, down = result.traffic.bytes_up / MIB, result.traffic.bytes_down / MIB
    parts = [
        "# `make soak`: results",
        "",
        *(f"- {line}" for line in result.header),
        f"- {result.seconds:g} s of traffic, then {result.drain_seconds:.1f} s for the last"
        f" answers; {result.warm_up.requests} requests in the warm-up before it; bodies sent"
        f" {up:,.0f} MiB, received {down:,.0f} MiB.",
        "",
        *requests_table(result),
        "",
        *_replays(result),
        "",
        *footprint_table(result),
        "",
        f"RSS every 10 s of traffic: {_mib_list(result.rss_timeline)} MiB. End figures"
        f" {result.settle_seconds:.1f} s after the last answer, with the client's connections"
        f" closed; files left in the proxy's TMPDIR: {result.temp_dir_entries}; `/-/ready` at"
        f" the end: {result.ready_status}.",
        "",
        *checks_table(result),
        "",
        f"**{'PASS' if result.passed else 'FAIL'}**",
    ]
    for title, lines in (
        ("Failed requests", result.warm_up.failures + result.traffic.failures),
        ("Bodies that arrived changed", result.warm_up.corrupt + result.traffic.corrupt),
    ):
        if lines:
            parts += ["", f"{title} (first 20):", "", *(f"- {line}" for line in lines[:20])]
    if result.log_disagreements:
        parts += ["", "Access lines whose `replayed` disagrees with what the upstream saw:", ""]
        parts += [f"- {line}" for line in result.log_disagreements[:20]]
    return "\n".join(parts) + "\n"
