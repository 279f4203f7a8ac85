"""Control endpoints under /_simulator/ through which test harnesses steer the simulator."""

from __future__ import annotations

import json
import math
from typing import Any, TypeGuard

from aiohttp import web

from .links import public_base
from .state import SIMULATOR_STATE

PREFIX = "/_simulator"
MAX_FAULT_DELAY = 300.0


def _invalid(description: str) -> web.HTTPBadRequest:
    body = {"error": "invalid_request", "error_description": description}
    return web.HTTPBadRequest(text=json.dumps(body), content_type="application/json")


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise _invalid("The request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object")
    return body


def _is_number(value: object) -> TypeGuard[float]:
    # bool is an int subclass, but `true` is no number of seconds.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(body: dict[str, Any], allowed: set[str], problems: list[str]) -> None:
    """Raise one 400 that lists every problem, unknown keys included."""
    problems.extend(f"unknown field '{key}'" for key in sorted(body.keys() - allowed))
    if problems:
        raise _invalid("; ".join(problems))


async def add_faults(request: web.Request) -> web.Response:
    body = await _json_object(request)
    status, count, delay = body.get("status"), body.get("count", 1), body.get("delay", 0.0)
    problems = []
    if not (_is_int(status) and 400 <= status <= 599):
        problems.append("'status' must be an integer from 400 to 599")
        status = 0
    if not (_is_int(count) and count >= 1):
        problems.append("'count' must be a positive integer")
        count = 0
    if not (_is_number(delay) and 0 <= delay <= MAX_FAULT_DELAY):
        problems.append(f"'delay' must be a number of seconds from 0 to {MAX_FAULT_DELAY:g}")
        delay = 0.0
    _check(body, {"status", "count", "delay"}, problems)
    state = request.app[SIMULATOR_STATE]
    state.add_fault(status, count, float(delay))
    return web.json_response({"pending_faults": state.pending_faults()})


async def revoke(request: web.Request) -> web.Response:
    return web.json_response({"revoked": request.app[SIMULATOR_STATE].revoke_tokens()})


def _config_body(request: web.Request) -> web.Response:
    state = request.app[SIMULATOR_STATE]
    return web.json_response(
        {
            "token_lifetime": state.token_lifetime,
            "token_requests_per_minute": state.token_requests_per_minute,
            "api_requests_per_minute": state.api_requests_per_minute,
            "public_url": public_base(request),
        }
    )


async def get_config(request: web.Request) -> web.Response:
    return _config_body(request)


async def update_config(request: web.Request) -> web.Response:
    """Change token and API policy: a new lifetime applies to tokens issued from now on, a new
    API rate limit to the next call (calls already made in the window still count)."""
    body = await _json_object(request)
    problems = []
    lifetime = body.get("token_lifetime")
    if "token_lifetime" in body and (not _is_number(lifetime) or lifetime <= 0):
        problems.append("'token_lifetime' must be a positive number of seconds")
    per_minute = body.get("token_requests_per_minute")
    if "token_requests_per_minute" in body and (not _is_int(per_minute) or per_minute < 1):
        problems.append("'token_requests_per_minute' must be a positive integer")
    api_per_minute = body.get("api_requests_per_minute")
    if "api_requests_per_minute" in body and (not _is_int(api_per_minute) or api_per_minute < 1):
        problems.append("'api_requests_per_minute' must be a whole number of at least 1")
    _check(
        body,
        {"token_lifetime", "token_requests_per_minute", "api_requests_per_minute"},
        problems,
    )
    state = request.app[SIMULATOR_STATE]
    if lifetime is not None:
        state.token_lifetime = float(lifetime)
    if per_minute is not None:
        state.token_requests_per_minute = per_minute
    if api_per_minute is not None:
        state.api_requests_per_minute = api_per_minute
    return _config_body(request)


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIMULATOR_STATE].stats())


async def reset(request: web.Request) -> web.Response:
    state = request.app[SIMULATOR_STATE]
    state.reset()
    return web.json_response(state.stats())


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{PREFIX}/faults", add_faults)
    app.router.add_post(f"{PREFIX}/revoke", revoke)
    app.router.add_get(f"{PREFIX}/config", get_config)
    app.router.add_post(f"{PREFIX}/config", update_config)
    app.router.add_get(f"{PREFIX}/stats", stats)
    app.router.add_post(f"{PREFIX}/reset", reset)
