"""Typed keys of the proxy application's state."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from proxy.access import AccessLog
from proxy.forwarding import Upstream
from proxy.links import LinkRewriter
from proxy.metrics import Metrics
from proxy.pacing import Pacer
from proxy.settings import Settings
from proxy.tokens import TokenSource

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenSource)
UPSTREAM = web.AppKey("upstream", Upstream)
CLIENT = web.AppKey("upstream_session", aiohttp.ClientSession)
METRICS = web.AppKey("metrics", Metrics)
ACCESS_LOG = web.AppKey("access_log", AccessLog)
LINKS = web.AppKey("links", LinkRewriter)
PACER = web.AppKey("pacer", Pacer)
SHUTTING_DOWN = web.AppKey("shutting_down", asyncio.Event)
