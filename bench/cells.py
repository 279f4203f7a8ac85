"""Formatting of the report's table cells: latencies, ratios, sizes, verdicts and rows."""

from __future__ import annotations

DASH = "-"


def latency(seconds: float) -> str:
    if abs(seconds) < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if abs(seconds) < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def added(seconds: float) -> str:
    return ("+" if seconds >= 0 else "-") + latency(abs(seconds))


def ratio(value: float, base: float) -> str:
    """value / base; a dash where either is not positive (an added latency lost in the noise)."""
    return f"{value / base:.2f}x" if base > 0 and value >= 0 else DASH


def mebibytes(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def percent(share: float) -> str:
    return f"{share * 100:.1f}%"


def verdict(met: bool | None) -> str:
    """None: the figure cannot be judged (a ratio of latencies lost in the noise)."""
    if met is None:
        return DASH
    return "met" if met else "**not met**"


def row(label: str, cells: list[str]) -> str:
    return "| " + " | ".join([label, *cells]) + " |"


def rule(columns: int, first: str = "---") -> str:
    """The markdown line under a header of `columns` cells after the label, right-aligned."""
    return row(first, ["--:"] * columns)
