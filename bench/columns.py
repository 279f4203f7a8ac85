"""The names of the benchmark's columns: what agentsync-proxy is compared with."""

from __future__ import annotations

DIRECT, NGINX, AGENTSYNC = "direct", "nginx proxy", "agentsync-proxy"
PLAIN, PLAIN_UVLOOP = "plain aiohttp proxy", "plain aiohttp proxy on uvloop"
