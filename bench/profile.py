"""Where agentsync-proxy spends its time under load: py-spy samples it while wrk drives
`GET /v1/small` (or `--path`, such as /v1/links; at 32 connections unless told); prints the
hottest functions, by own and by total time.

Usage: .venv/bin/python bench/profile.py [--seconds 15] [--connections 32] [--path /v1/small]
[--top 15] [--gil] [--keep FILE]
(needs py-spy in the venv: `.venv/bin/pip install py-spy`)"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import processes
import servers
from processes import Processes, tool
from servers import url


def py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy is missing: .venv/bin/pip install py-spy")
    return found


def hot_spots(collapsed: str) -> tuple[Counter[str], Counter[str], int]:
    """Own and total samples per function from py-spy's raw (collapsed stack) output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        samples += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            total[frame] += int(count)
    return own, total, samples


def table(title: str, counts: Counter[str], samples: int, top: int) -> str:
    rows = [f"| {title} | % of samples |", "| --- | --: |"]
    rows += [f"| `{name}` | {n / samples:.1%} |" for name, n in counts.most_common(top)]
    return "\n".join(rows)


def record(
    seconds: int,
    connections: int,
    path: str,
    gil: bool,
    output: Path,
    procs: Processes,
    root: Path,
) -> None:
    upstream = servers.start_upstream(procs, root)
    simulator_port = servers.start_simulator(procs, "simulator")
    proxy, port = servers.launch_agentsync_proxy(
        procs, "agentsync-proxy", simulator_port, upstream.port
    )
    processes.wait_for_ok(port, "/-/ready", proxy, "agentsync-proxy")
    threads = min(connections, 2)
    load = [tool("wrk"), f"-t{threads}", f"-c{connections}", f"-d{seconds + 4}s"]
    load.append(url(port, path))
    wrk = subprocess.Popen(load, stdout=subprocess.DEVNULL)
    try:
        spy = [py_spy(), "record", "--pid", str(proxy.pid), "--duration", str(seconds)]
        spy += ["--format", "raw", "--nolineno", "--output", str(output)]
        spy += ["--gil"] if gil else []
        subprocess.run(spy, check=True, capture_output=True, timeout=seconds + 60)
    finally:
        wrk.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description="py-spy profile of agentsync-proxy under wrk")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--path", default="/v1/small", help="/v1/small or /v1/links")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    parser.add_argument("--keep", type=Path, help="also keep py-spy's raw output here")
    args = parser.parse_args()
    processes.ensure_tools()
    root = Path(tempfile.mkdtemp(prefix="agentsync-profile-"))
    try:
        with Processes(root) as procs:
            output = root / "profile.txt"
            record(args.seconds, args.connections, args.path, args.gil, output, procs, root)
        collapsed = (root / "profile.txt").read_text()
        if args.keep is not None:
            args.keep.write_text(collapsed)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    own, total, samples = hot_spots(collapsed)
    which = "samples holding the GIL" if args.gil else "samples of busy threads"
    at = f"{args.connections} connection{'s' if args.connections > 1 else ''}"
    print(f"{samples:,} {which}, agentsync-proxy at {at} on GET {args.path}\n")
    print(table("own time (the function itself)", own, samples, args.top), end="\n\n")
    print(table("total time (with what it calls)", total, samples, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
