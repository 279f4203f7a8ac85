"""Logging set-up, done once at the entry point; modules only call structlog.get_logger()."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer

SENSITIVE_KEYS = frozenset(
    {"authorization", "access_token", "token", "client_secret", "secret", "password", "cookie"}
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask values under sensitive keys and any bearer/basic credential inside strings."""
    for key, value in event.items():
        if key.lower() in SENSITIVE_KEYS:
            event[key] = "**********"
        elif isinstance(value, str) and _BEARER.search(value):
            event[key] = _BEARER.sub(r"\1 **********", value)
    return event


def _dumps(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=repr).decode()


def processors(log_format: str) -> tuple[list[Any], Any]:
    """The processor chain (ending in redaction) and the renderer for a format."""
    chain: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if log_format == "json":
        # Tracebacks as data, without frame locals: a local may hold a token.
        chain.append(
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        )
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    chain.append(redact)
    return chain, renderer


def configure(log_format: str | None, level: str) -> None:
    """JSON off a terminal, console on one, unless the format is given. Records of the
    standard library's loggers (aiohttp's, asyncio's) are rendered the same way."""
    chosen = log_format or ("console" if sys.stderr.isatty() else "json")
    numeric_level = logging.getLevelName(level.upper())
    chain, renderer = processors(chosen)
    structlog.configure(
        processors=[*chain, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *chain],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric_level, logging.INFO))
