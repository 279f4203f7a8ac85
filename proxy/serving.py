"""Running the proxy as a service: one process, or N worker processes sharing the port, each
stopping gracefully on SIGTERM (not ready at once, in-flight requests finished, exit 0)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace

import structlog

from proxy import __version__
from proxy.app import create_app
from proxy.keys import SHUTTING_DOWN
from proxy.servers import start, stopped
from proxy.settings import ConfigError, Settings, whole_number

log = structlog.get_logger("proxy")
# Set in the environment of each worker: how many workers share the port and the token cap.
WORKER_OF = "AGENTSYNC_PROXY_WORKER_OF"
BACKLOG = 2048  # a burst of new connections must not overflow the accept queue


def serve(settings: Settings, argv: Sequence[str], environ: Mapping[str, str]) -> int:
    if text := environ.get(WORKER_OF, ""):  # this process is one of N workers
        cap = settings.token_requests_per_minute
        workers = whole_number(text) or 0
        if not 1 <= workers <= cap:
            problem = (
                f"{WORKER_OF}: {text!r} is not a number of workers from 1 to {cap}; the proxy sets"
                " this variable for its own worker processes: unset it"
            )
            raise ConfigError([problem])
        # One of N replicas of a fleet: the workers count their token requests together in
        # Redis, and each keeps to its share only while Redis is down. Without Redis the cap
        # is shared: settings refuse more workers than the cap, so every share is at least 1
        # and they add up to no more than the cap.
        if settings.redis_url is None:
            settings = replace(settings, token_requests_per_minute=cap // workers)
        return run(settings, reuse_port=True)
    if settings.workers > 1:
        return supervise(settings.workers, argv, environ)
    return run(settings, reuse_port=False)


def run(settings: Settings, *, reuse_port: bool) -> int:
    with contextlib.suppress(ImportError):
        import uvloop  # its event loop's I/O path is several times faster

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(_run(settings, reuse_port))


async def _run(settings: Settings, reuse_port: bool) -> int:
    app = create_app(settings)
    runner, port = await start(
        app,
        "--listen",
        settings.listen,
        shutdown_timeout=settings.shutdown_timeout,
        backlog=BACKLOG,
        reuse_port=reuse_port,
    )
    # What is loaded by now lives as long as the process: frozen out of the garbage collector,
    # whose full passes would otherwise walk all of it while requests wait.
    gc.collect()
    gc.freeze()
    try:
        log.info(
            "listening",
            listen=str(replace(settings.listen, port=port)),  # the port it got, for :0 too
            environment=settings.environment,
            api_base_url=settings.api_base_url,
            version=__version__,
            pid=os.getpid(),
        )
        await stopped()
        app[SHUTTING_DOWN].set()  # /-/ready answers 503 from now on
        log.info("stopping", shutdown_timeout=settings.shutdown_timeout)
    finally:
        # Stops listening, lets in-flight requests finish (bounded), then closes the sessions.
        await runner.cleanup()
    log.info("stopped")
    return 0


def supervise(workers: int, argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Start N workers of this same command and pass SIGTERM and SIGINT on to them."""
    env = {**environ, WORKER_OF: str(workers)}
    command = [sys.executable, "-m", "proxy", "serve", *argv]
    children = [subprocess.Popen(command, env=env) for _ in range(workers)]

    def forward(signum: int, _: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    statuses = [child.wait() for child in children]
    return max(statuses, key=abs)
