"""`agentsync-proxy demo` as a user runs it: the lines it prints, pasted into a shell."""

from __future__ import annotations

import asyncio
import json
import re
import shutil

import pytest

from tests.cli_process import demo_process


@pytest.mark.skipif(shutil.which("curl") is None, reason="the demo's lines use curl")
async def test_the_demos_burst_of_20_is_paced_to_200s_without_a_429() -> None:
    async with demo_process() as printed:
        [burst] = re.findall(r"^  (seq 20 .*\\\n.*\\\n.*)$", printed, re.MULTILINE)
        shell = await asyncio.create_subprocess_exec(
            "bash", "-c", burst, stdout=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(60):
            out, _ = await shell.communicate()
    *answers, stats = out.decode().splitlines()
    assert len(answers) == 20
    assert all(re.fullmatch(r"\d+: 200 after [\d.]+ s", answer) for answer in answers)
    assert max(float(answer.split()[-2]) for answer in answers) < 30  # within the 30 s wait
    calls = json.loads(stats)["api_calls"]
    assert calls == {"200": 20}  # no 429 reached the simulator either
