"""Logging: secrets masked, and one JSON line per event off a terminal."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from multidict import istr

from proxy import logs
from proxy.servers import RunningSimulator
from tests.cli_process import serve, simulator_env, start_serve, until_ready
from tests.rawhttp import raw_request, read_body, read_head


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


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_off_a_terminal_every_event_is_one_json_line_with_utc_time_and_no_secret(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    logs.configure(None, "info")
    structlog.get_logger("proxy").info(
        "token_obtained", access_token="tok-123", detail="sent Bearer abc.def"
    )
    structlog.get_logger("proxy").debug("not_at_info")
    logging.getLogger("aiohttp.server").warning("closed by %s", "peer")
    err = capsys.readouterr().err
    ours, aiohttps = (json.loads(line) for line in err.splitlines())
    assert (ours["event"], ours["level"]) == ("token_obtained", "info")
    assert (ours["access_token"], ours["detail"]) == ("**********", "sent Bearer **********")
    assert (aiohttps["event"], aiohttps["level"]) == ("closed by peer", "warning")
    assert aiohttps["logger"] == "aiohttp.server"
    for line in (ours, aiohttps):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", line["timestamp"])
    assert "tok-123" not in err
    assert "abc.def" not in err


def test_a_value_json_cannot_hold_natively_is_still_one_json_line(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    logs.configure("json", "info")
    structlog.get_logger("proxy").warning("token_expires_in_invalid", value=10**30, at=1 + 2j)
    [line] = capsys.readouterr().err.splitlines()
    event = json.loads(line)
    assert (event["event"], event["value"], event["at"]) == (
        "token_expires_in_invalid",
        10**30,
        "(1+2j)",
    )


def test_text_that_is_not_unicode_and_str_subclasses_are_still_one_json_line(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    logs.configure("json", "info")
    # aiohttp reads a header's bytes with surrogateescape: \xff becomes a lone surrogate.
    structlog.get_logger("proxy").info("request", request_id="ab\udcff", header=istr("X-Id"))
    [line] = capsys.readouterr().err.splitlines()
    event = json.loads(line)
    assert (event["request_id"], event["header"]) == ("ab\udcff", "X-Id")


async def test_a_request_id_that_is_not_utf8_gets_its_answer_and_access_line(
    agentsync_simulator: RunningSimulator, unused_tcp_port: int
) -> None:
    async with serve(simulator_env(agentsync_simulator), unused_tcp_port) as proxy:
        head = b"GET /v1/x HTTP/1.1\r\nHost: evil.example\r\nX-Request-Id: ab\xff\r\n\r\n"
        answer = await raw_request(proxy.port, head)
        assert (answer.status, json.loads(answer.body)["error"]) == (403, "host_not_allowed")
        proxy.process.send_signal(signal.SIGTERM)
        _, err = await proxy.process.communicate()
    events = [json.loads(line) for line in err.decode().splitlines()]
    [line] = [event for event in events if event["event"] == "request"]
    assert (line["request_id"], line["status"]) == ("ab\udcff", 403)


async def test_a_log_stream_that_breaks_costs_the_lines_not_the_answers_or_the_metrics(
    agentsync_simulator: RunningSimulator, unused_tcp_port: int
) -> None:
    """A log collector that goes away (or a full disk) makes every write to stderr fail."""
    reading, writing = os.pipe()
    process = await start_serve(
        simulator_env(agentsync_simulator, AGENTSYNC_PROXY_LOG_PROBES="true"),
        f"127.0.0.1:{unused_tcp_port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=writing,
    )
    os.close(writing)
    try:
        await until_ready(f"http://127.0.0.1:{unused_tcp_port}")
        os.close(reading)  # from now on each write to the proxy's stderr fails (EPIPE)
        reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        # Pipelined: the scrape comes while the forwarded request's line still waits.
        writer.write(
            b"GET /v2/entities HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"GET /-/metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        statuses = []
        for _ in range(2):
            status_line, headers = await read_head(reader)
            statuses.append(int(status_line.split()[1]))
            metrics = await read_body(reader, headers)
        writer.close()
        assert statuses == [200, 200]
        assert b'requests_total{method="GET",status_class="2xx"} 1.0' in metrics
        refused = await raw_request(
            unused_tcp_port, b"GET /v1/x HTTP/1.1\r\nHost: evil.example\r\n\r\n"
        )
        assert refused.status == 403
        healthy = await raw_request(
            unused_tcp_port, b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        assert healthy.status == 200  # with --log-probes: liveness does not fail with the log
    finally:
        process.kill()
        await process.wait()
