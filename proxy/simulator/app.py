"""The simulator's application factory."""

from __future__ import annotations

import time

from aiohttp import hdrs, web

from . import contracting, control, producersync
from .api import Handler, api_middleware, is_api_path
from .config import SimulatorConfig
from .state import SIMULATOR_STATE, SimulatorState
from .token_endpoint import TOKEN_PATHS, token_endpoint
from .tokens import Clock

# A module-level default rather than a call in the signature: the config is immutable anyway.
DEFAULT_CONFIG = SimulatorConfig()


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Token and control paths answer errors in JSON too, e.g. a GET on the token endpoint."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if is_api_path(request.path) or exc.status < 400 or exc.content_type == "application/json":
            raise
        body = {"error": exc.reason.lower().replace(" ", "_"), "error_description": exc.reason}
        response = web.json_response(body, status=exc.status)
        if hdrs.ALLOW in exc.headers:
            response.headers[hdrs.ALLOW] = exc.headers[hdrs.ALLOW]
        return response


def create_app(
    config: SimulatorConfig = DEFAULT_CONFIG, clock: Clock = time.monotonic
) -> web.Application:
    """A fresh simulator with its own tokens, counters and copy of the data set; `clock`
    times token expiry and the rate limits."""
    app = web.Application(middlewares=[json_errors, api_middleware])
    app[SIMULATOR_STATE] = SimulatorState(config, clock)
    for path in TOKEN_PATHS:
        app.router.add_post(path, token_endpoint)
    control.add_routes(app)
    contracting.add_routes(app)
    producersync.add_routes(app)
    return app
