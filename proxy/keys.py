"""Typed keys of the proxy application's state."""

from __future__ import annotations

import asyncio

from aiohttp import web

from proxy.forwarding import Upstream
from proxy.metrics import Metrics
from proxy.settings import Settings
from proxy.spool_files import SpoolFiles
from proxy.tokens import TokenSource
from proxy.upstream_client import UpstreamClient

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenSource)
UPSTREAM = web.AppKey("upstream", Upstream)
CLIENT = web.AppKey("upstream_client", UpstreamClient)
METRICS = web.AppKey("metrics", Metrics)
SHUTTING_DOWN = web.AppKey("shutting_down", asyncio.Event)
SPOOL_FILES = web.AppKey("spool_files", SpoolFiles)
