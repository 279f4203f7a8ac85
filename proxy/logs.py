"""Logging set-up, done once at the entry point; modules only call structlog.get_logger()."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from typing import Any, BinaryIO, TextIO, cast

import msgspec
import structlog
from aiohttp.http_exceptions import HttpProcessingError
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict

SENSITIVE_KEYS = frozenset(
    {"authorization", "access_token", "token", "client_secret", "secret", "password", "cookie"}
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")


def redact(_: Any, __: str, event: EventDict) -> EventDict:
    """Mask values under sensitive keys and any bearer/basic credential inside strings."""
    for key, value in event.items():
        if key.lower() in SENSITIVE_KEYS:
            event[key] = "**********"
        elif isinstance(value, str) and _BEARER.search(value):  # rarely: search before sub
            event[key] = _BEARER.sub(r"\1 **********", value)
    return event


def _json_line(event: EventDict, **_: Any) -> bytes:
    try:
        return msgspec.json.encode(event, enc_hook=_as_text)
    except (TypeError, ValueError, msgspec.EncodeError):  # a lone surrogate: json writes it
        return json.dumps(event, default=_as_text).encode()


def _as_text(value: object) -> str:
    """What JSON has no type for: a str subclass (multidict's istr) as its text, else its repr."""
    return str(value) if isinstance(value, str) else repr(value)


class _Stream:
    """stderr for structlog's lines. A write that fails (its reader gone, a full disk) loses
    that line, as the standard library's logging does, not the answer or the scrape that
    logged it."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, data: Any) -> None:
        with contextlib.suppress(OSError):
            self._stream.write(data)

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            self._stream.flush()


def malformed_requests(record: logging.LogRecord) -> bool:
    """aiohttp logs each request it cannot parse at ERROR with a traceback, though the mistake is
    a client's (or a port scanner's): it becomes one warning line, what was wrong and from whom."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, HttpProcessingError) and record.name == "aiohttp.server":
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.exc_info = "malformed_request", None
        record.client = record.args[0] if isinstance(record.args, tuple) and record.args else None
        record.reason = error.message.strip().splitlines()[0] if error.message else str(error)
        record.args = ()
    return True


def configure(log_format: str | None, level: str) -> None:
    """JSON off a terminal, console on one, unless the format is given. Records of the
    standard library's loggers (aiohttp's, asyncio's) are rendered the same way."""
    chosen = log_format or ("console" if sys.stderr.isatty() else "json")
    numeric_level = logging.getLevelName(level.upper())
    chain: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # One write() a line, so that the lines of several workers sharing stderr never mix.
    if chosen == "json":
        # Tracebacks as data, without frame locals: a local may hold a token.
        chain.append(
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        )
        renderer: Any = structlog.processors.JSONRenderer()  # the standard library's records
        # JSON lines straight to bytes by msgspec, the quickest part of each access line.
        final: Any = structlog.processors.JSONRenderer(serializer=_json_line)
        # structlog's loggers only write and flush their file.
        factory: Any = structlog.BytesLoggerFactory(cast(BinaryIO, _Stream(sys.stderr.buffer)))
    else:
        renderer = final = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        factory = structlog.WriteLoggerFactory(cast(TextIO, _Stream(sys.stderr)))
    chain.append(redact)
    structlog.configure(
        processors=[*chain, final],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(allow=("client", "reason")),
                *chain,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.addFilter(malformed_requests)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric_level, logging.INFO))
