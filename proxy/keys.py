"""Typed keys of the proxy application's state."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.forwarding import Upstream
from proxy.metrics import Metrics
from proxy.settings import Settings
from proxy.spool_files import SpoolFiles
from proxy.tokens import TokenSource
from proxy.upstream_client import UpstreamClient

if TYPE_CHECKING:  # imports redis: only a proxy with a Redis URL loads it
    from proxy.fleet import Fleet

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenSource)
UPSTREAM = web.AppKey("upstream", Upstream)
CLIENT = web.AppKey("upstream_client", UpstreamClient)
METRICS = web.AppKey("metrics", Metrics)
SHUTTING_DOWN = web.AppKey("shutting_down", asyncio.Event)
SPOOL_FILES = web.AppKey("spool_files", SpoolFiles)
FLEET: web.AppKey[Fleet] = web.AppKey("fleet")  # set only with a Redis URL
