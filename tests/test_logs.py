"""The log processors and the batched output: same text as structlog's own, fewer writes."""

from __future__ import annotations

import asyncio
import datetime
import io
import time
from typing import Any

import pytest

from proxy import logs


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("Authorization", "Bearer abc.def", "**********"),
        ("client_secret", "s3cret", "**********"),
        ("path", "/v1/x?note=BEARER%20x", "/v1/x?note=BEARER%20x"),
        ("detail", "sent Bearer abc.def-1 twice", "sent Bearer ********** twice"),
        ("detail", "header basic dXNlcjpwYXNz", "header basic **********"),
        ("request_id", "0b1e", "0b1e"),
        ("status", 200, 200),
    ],
)
def test_redact_masks_sensitive_keys_and_credentials_in_text(
    key: str, value: Any, expected: Any
) -> None:
    assert logs.redact(None, "info", {key: value}) == {key: expected}


@pytest.mark.parametrize("nanoseconds", [0, 1_000, 999_999_000, 123_456_789])
def test_timestamp_is_structlogs_iso_utc_text(
    monkeypatch: pytest.MonkeyPatch, nanoseconds: int
) -> None:
    second = 1_795_465_829
    monkeypatch.setattr(time, "time_ns", lambda: second * 1_000_000_000 + nanoseconds)
    moment = datetime.datetime.fromtimestamp(second, tz=datetime.UTC)
    moment = moment.replace(microsecond=nanoseconds // 1000)
    expected = moment.isoformat().replace("+00:00", "Z")  # what structlog's TimeStamper writes
    assert logs.UtcTimestamp()(None, "info", {}) == {"timestamp": expected}


async def test_lines_logged_in_one_loop_iteration_leave_in_one_write() -> None:
    target = io.StringIO()
    writes: list[str] = []
    target.write = writes.append  # type: ignore[method-assign,assignment]
    logger = logs.LineLogger(logs.LineBatcher(target))
    for n in range(3):
        logger.info(f"line {n}")
    assert writes == []
    await asyncio.sleep(0)
    assert writes == ["line 0\nline 1\nline 2\n"]


def test_lines_logged_outside_an_event_loop_leave_at_once() -> None:
    target = io.StringIO()
    logs.LineLogger(logs.LineBatcher(target)).info("starting")
    assert target.getvalue() == "starting\n"


async def test_lines_logged_from_another_thread_leave_at_once() -> None:
    target = io.StringIO()
    logger = logs.LineLogger(logs.LineBatcher(target))
    logger.info("from the loop")  # the loop is now known to the batcher
    await asyncio.to_thread(logger.info, "from a thread")
    assert target.getvalue() == "from the loop\nfrom a thread\n"
