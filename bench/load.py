"""Steady load with wrk: requests/s and latency percentiles, parsed from `wrk --latency`."""

from __future__ import annotations

import re
import statistics
import subprocess
from dataclasses import dataclass

from processes import tool

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"


@dataclass(frozen=True)
class LoadResult:
    requests_per_s: float
    p50_s: float
    p99_s: float
    requests: int
    errors: int  # non-2xx/3xx answers plus socket errors


def _seconds(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(output: str) -> LoadResult:
    def percentile(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+{_DURATION}\s*$", output, re.MULTILINE)
        if match is None:
            raise ValueError(f"no {label}% latency in wrk's output:\n{output}")
        return _seconds(match.group(1), match.group(2))

    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    if rate is None or total is None:
        raise ValueError(f"no request rate in wrk's output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = int(non_2xx.group(1)) if non_2xx else 0
    errors += sum(int(n) for n in sockets.groups()) if sockets else 0
    return LoadResult(
        requests_per_s=float(rate.group(1)),
        p50_s=percentile("50"),
        p99_s=percentile("99"),
        requests=int(total.group(1)),
        errors=errors,
    )


def run_wrk(url: str, connections: int, seconds: int) -> LoadResult:
    """One wrk thread for one connection, two for more."""
    threads = 1 if connections == 1 else 2
    argv = [tool("wrk"), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return parse_wrk(done.stdout)


def median_of(runs: list[LoadResult]) -> LoadResult:
    """Requests/s and each percentile: the median over the runs; requests and errors: all."""
    return LoadResult(
        requests_per_s=statistics.median(run.requests_per_s for run in runs),
        p50_s=statistics.median(run.p50_s for run in runs),
        p99_s=statistics.median(run.p99_s for run in runs),
        requests=sum(run.requests for run in runs),
        errors=sum(run.errors for run in runs),
    )
