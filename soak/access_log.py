"""The proxy's JSON access log, read back after the soak to compare what it says was replayed
with what the upstream saw twice."""

from __future__ import annotations

import json
from pathlib import Path

Line = dict[str, object]


def access_lines(log: Path) -> dict[str, Line]:
    """Access lines by request id; other lines (token events, warnings) are skipped."""
    lines: dict[str, Line] = {}
    with log.open(encoding="utf-8", errors="replace") as file:
        for text in file:
            try:
                line = json.loads(text)
            except ValueError:
                continue
            if isinstance(line, dict) and line.get("event") == "request":
                lines[str(line.get("request_id"))] = line
    return lines


def describe(request_id: str, line: Line | None) -> str:
    if line is None:
        return f"{request_id}: no access line"
    fields = ("method", "path", "status", "upstream_status", "error", "replayed")
    return f"{request_id}: " + ", ".join(f"{name}={line.get(name)}" for name in fields)


def replay_disagreements(log: Path, seen_twice: list[object]) -> list[str]:
    """Requests the upstream saw twice that the access log does not call replayed, and
    requests the log calls replayed that the upstream saw only once."""
    lines = access_lines(log)
    twice = {str(request_id) for request_id in seen_twice}
    logged = {request_id for request_id, line in lines.items() if line.get("replayed") is True}
    return [
        *(
            describe(rid, lines.get(rid)) + " (seen twice upstream)"
            for rid in sorted(twice - logged)
        ),
        *(
            describe(rid, lines.get(rid)) + " (seen once upstream)"
            for rid in sorted(logged - twice)
        ),
    ]
