"""1 GiB downloads and uploads with curl, timed by curl itself."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from processes import tool

MIB = 1 << 20


@dataclass(frozen=True)
class Transfer:
    status: int
    size: int  # bytes moved
    seconds: float

    @property
    def mib_per_s(self) -> float:
        return self.size / MIB / self.seconds


def _curl(args: list[str], size_field: str) -> Transfer:
    write_out = f"%{{http_code}} %{{{size_field}}} %{{time_total}}"
    argv = [tool("curl"), "-sS", "-o", "/dev/null", "-w", write_out, *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    status, size, seconds = done.stdout.split()
    return Transfer(status=int(status), size=int(size), seconds=float(seconds))


def download(url: str) -> Transfer:
    return _curl([url], "size_download")


def upload(url: str, file: Path) -> Transfer:
    """POST the file, streamed with its Content-Length; no `Expect: 100-continue` round trip."""
    headers = ["-H", "Expect:", "-H", "Content-Type: application/octet-stream"]
    return _curl(["-X", "POST", "-T", str(file), *headers, url], "size_upload")
