"""What a test checks to prove nothing was leaked: the process's open temporary files."""

from __future__ import annotations

import os


def temporary_files() -> list[str]:
    """Open file descriptors of this process on temporary or deleted files."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed between listing and reading
            continue
        if target.startswith("/tmp/") or "(deleted)" in target:
            found.append(f"{fd}:{target}")
    return sorted(found)
