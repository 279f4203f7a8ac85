"""The protection rules against a real headless Chromium: web pages of other origins, and a page
rebound onto the proxy's own address (DNS rebinding), never get a request forwarded; an allowed
origin gets working CORS.

Chromium is driven over the DevTools protocol (aiohttp's websocket client) rather than with
`--dump-dom`: the rebinding test must swap the server behind a loaded page's address before the
page's script runs, and waiting on real events beats guessing a virtual-time budget."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.app import create_app
from proxy.servers import RunningSimulator, settings_for
from proxy.settings import Listen
from tests.conftest import FAST_RETRIES
from tests.rawhttp import RawUpstream


def _find_chromium() -> str | None:
    found = shutil.which("chromium")
    if found is None and os.access("/usr/bin/chromium", os.X_OK):
        found = "/usr/bin/chromium"
    return found


CHROMIUM = _find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)"
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--host-resolver-rules=MAP evil.example 127.0.0.1",
    "--remote-debugging-port=0",
)
STEP_TIMEOUT = 30.0

# The page every scenario loads. Each function records its outcomes in #results and returns
# what it recorded there.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>a web page</title></head>
<body>
<pre id="results">{}</pre>
<iframe name="sink" src="/blank"></iframe>
<script>
function recorded() { return JSON.parse(document.getElementById("results").textContent); }
function record(name, outcome) {
  const results = recorded();
  results[name] = outcome;
  document.getElementById("results").textContent = JSON.stringify(results);
}
async function attempt(name, request) {
  let outcome;
  try { outcome = await request(); } catch (error) { outcome = "failed: " + error.name; }
  record(name, outcome);
}
function described(response) { return response.type + " " + response.status; }
async function readable(response) {
  return {status: response.status, body: await response.json(),
          requestId: response.headers.get("X-Request-Id")};
}
const JSON_POST = {method: "POST", headers: {"Content-Type": "application/json"},
                   body: '{"npn": "123"}'};
function submitForm(action) {
  return new Promise((resolve) => {
    document.querySelector("iframe[name=sink]")
      .addEventListener("load", () => resolve("loaded"), {once: true});
    const form = document.createElement("form");
    form.method = "POST";
    form.action = action;
    form.target = "sink";
    const field = document.createElement("input");
    field.name = "npn";
    field.value = "123";
    form.append(field);
    document.body.append(form);
    form.submit();
  });
}
async function attack(proxy) {
  await attempt("cors_get", () => fetch(proxy + "/v1/x").then(described));
  await attempt("no_cors_get", () => fetch(proxy + "/v1/x", {mode: "no-cors"}).then(described));
  await attempt("json_post", () => fetch(proxy + "/v1/x", JSON_POST).then(described));
  await attempt("form_post", () => submitForm(proxy + "/v1/form"));
  return recorded();
}
async function rebound() {
  await attempt("same_origin_get", () => fetch("/v1/x").then(readable));
  await attempt("same_origin_json_post", () => fetch("/v1/x", JSON_POST).then(readable));
  return recorded();
}
async function useAllowed(proxy) {
  await attempt("cors_get", () => fetch(proxy + "/v1/x").then(readable));
  await attempt("preflighted_put", () => fetch(proxy + "/v1/y", {
    method: "PUT",
    headers: {"Content-Type": "application/json", "X-Client-Trace": "trace-1"},
    body: '{"name": "Acme"}',
  }).then(readable));
  return recorded();
}
</script>
</body></html>
"""


class DevToolsPage:
    """One Chromium tab driven over the DevTools protocol, one command at a time."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._events: list[str] = []

    async def _next(self) -> dict[str, Any]:
        message: dict[str, Any] = await self._socket.receive_json()
        if "method" in message:
            self._events.append(message["method"])
        return message

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        command_id = next(self._ids)
        await self._socket.send_json({"id": command_id, "method": method, "params": params})
        async with asyncio.timeout(STEP_TIMEOUT):
            while True:
                message = await self._next()
                if message.get("id") == command_id:
                    if "error" in message:
                        raise AssertionError(f"{method} failed: {message['error']}")
                    result: dict[str, Any] = message["result"]
                    return result

    async def open(self, url: str) -> None:
        self._events.clear()
        navigation = await self.call("Page.navigate", url=url)
        assert "errorText" not in navigation, f"{url}: {navigation['errorText']}"
        async with asyncio.timeout(STEP_TIMEOUT):
            while "Page.loadEventFired" not in self._events:
                await self._next()

    async def run(self, expression: str) -> Any:
        """Evaluate `expression` in the page, awaiting the promise it returns."""
        answer = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        assert "exceptionDetails" not in answer, answer["exceptionDetails"]
        return answer["result"].get("value")


async def _devtools_address(stderr: asyncio.StreamReader) -> str:
    prefix = "DevTools listening on ws://"
    log: list[str] = []
    async with asyncio.timeout(STEP_TIMEOUT):
        while line := (await stderr.readline()).decode(errors="replace"):
            log.append(line)
            if line.startswith(prefix):
                return line.removeprefix(prefix).split("/", 1)[0]
    raise AssertionError("Chromium exited before listening:\n" + "".join(log[-20:]))


async def _drain(stderr: asyncio.StreamReader) -> None:
    while await stderr.read(65536):
        pass


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[DevToolsPage]:
    assert CHROMIUM is not None
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    drained: asyncio.Task[None] | None = None
    try:
        address = await _devtools_address(process.stderr)
        drained = asyncio.create_task(_drain(process.stderr))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{address}/json/list") as response:
                targets = await response.json()
            page_socket = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with session.ws_connect(page_socket, max_msg_size=0) as socket:
                page = DevToolsPage(socket)
                await page.call("Page.enable")
                yield page
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        if drained is not None:
            await drained


@asynccontextmanager
async def page_server(port: int = 0) -> AsyncIterator[web.AppRunner]:
    """Serves the page above at / and an empty page at /blank, on 127.0.0.1."""

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def blank(_: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>blank</title>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/blank", blank)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield runner
    finally:
        await runner.cleanup()


def bound_port(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])


@dataclass(frozen=True)
class Answer:
    """A request the proxy answered, and its own error code if it refused it."""

    method: str
    target: str
    status: int
    error: str | None


@dataclass
class ObservedProxy:
    port: int
    answers: list[Answer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def observed_proxy(
    simulator: RunningSimulator, upstream: RawUpstream, port: int = 0, **overrides: Any
) -> AsyncIterator[ObservedProxy]:
    """The real proxy app, with a hook that records every answer it gives. The record tells a
    request the proxy refused from one the browser never sent."""
    settings = settings_for(
        simulator, api_base_url=upstream.url, listen=Listen("127.0.0.1", port), **overrides
    )
    app = create_app(settings, token_source_options=FAST_RETRIES)
    answers: list[Answer] = []

    async def record(request: web.Request, response: web.StreamResponse) -> None:
        error = None
        body = response.body if isinstance(response, web.Response) else None
        if isinstance(body, bytes) and response.status >= 400:
            error = json.loads(body).get("error")
        answers.append(Answer(request.method, request.raw_path, response.status, error))

    app.on_response_prepare.append(record)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield ObservedProxy(bound_port(runner), answers)
    finally:
        await runner.cleanup()


def answered(proxy: ObservedProxy) -> set[tuple[str, str, int, str | None]]:
    return {(a.method, a.target, a.status, a.error) for a in proxy.answers}


# Same site (127.0.0.1, another port) and cross-site (a name that resolves to 127.0.0.1).
# Both page addresses are loopback, like the proxy's, so Chromium's Private/Local Network
# Access rules do not apply: every refusal below is the proxy's, as the record shows.
@pytest.mark.parametrize("page_host", ["127.0.0.1", "evil.example"])
async def test_pages_of_other_origins_get_nothing_forwarded(
    agentsync_simulator: RunningSimulator,
    upstream: RawUpstream,
    tmp_path: Path,
    page_host: str,
) -> None:
    async with (
        observed_proxy(agentsync_simulator, upstream) as proxy,
        page_server() as pages,
        chromium(tmp_path) as browser,
    ):
        await browser.open(f"http://{page_host}:{bound_port(pages)}/")
        results = await browser.run(f"attack({json.dumps(proxy.url)})")
    assert results == {
        "cors_get": "failed: TypeError",  # refused, and without CORS headers it is unreadable
        "no_cors_get": "opaque 0",
        "json_post": "failed: TypeError",  # its preflight was refused
        "form_post": "loaded",
    }
    assert answered(proxy) == {
        ("GET", "/v1/x", 403, "origin_not_allowed"),
        ("OPTIONS", "/v1/x", 403, "origin_not_allowed"),
        ("POST", "/v1/form", 403, "origin_not_allowed"),
    }
    assert upstream.received == []


async def test_page_rebound_onto_the_proxy_address_reads_only_host_not_allowed(
    agentsync_simulator: RunningSimulator, upstream: RawUpstream, tmp_path: Path
) -> None:
    # DNS rebinding: the page was loaded from evil.example:PORT, then the proxy answers at that
    # same address, so the page's requests are same-origin: no CORS stands in the way and a GET
    # carries no Origin. Only the Host check is left to refuse them.
    async with chromium(tmp_path) as browser:
        async with page_server() as pages:
            port = bound_port(pages)
            await browser.open(f"http://evil.example:{port}/")
        async with observed_proxy(agentsync_simulator, upstream, port=port) as proxy:
            results = await browser.run("rebound()")
    for name in ("same_origin_get", "same_origin_json_post"):
        assert results[name]["status"] == 403, results
        assert results[name]["body"]["error"] == "host_not_allowed", results
    assert answered(proxy) == {
        ("GET", "/v1/x", 403, "host_not_allowed"),
        ("POST", "/v1/x", 403, "host_not_allowed"),
    }
    assert upstream.received == []


async def test_rebound_name_on_another_port_gets_host_not_allowed(
    agentsync_simulator: RunningSimulator, upstream: RawUpstream, tmp_path: Path
) -> None:
    # The page's name, evil.example, reaches the proxy's port too: Host is evil.example:PORT.
    async with (
        observed_proxy(agentsync_simulator, upstream) as proxy,
        page_server() as pages,
        chromium(tmp_path) as browser,
    ):
        await browser.open(f"http://evil.example:{bound_port(pages)}/")
        results = await browser.run(f"attack('http://evil.example:{proxy.port}')")
    assert results == {
        "cors_get": "failed: TypeError",
        "no_cors_get": "opaque 0",
        "json_post": "failed: TypeError",
        "form_post": "loaded",
    }
    assert answered(proxy) == {
        ("GET", "/v1/x", 403, "host_not_allowed"),
        ("OPTIONS", "/v1/x", 403, "host_not_allowed"),
        ("POST", "/v1/form", 403, "host_not_allowed"),
    }
    assert upstream.received == []


async def test_allowed_origin_reads_answers_and_its_preflight_is_not_forwarded(
    agentsync_simulator: RunningSimulator, upstream: RawUpstream, tmp_path: Path
) -> None:
    async with page_server() as pages:
        origin = f"http://127.0.0.1:{bound_port(pages)}"
        async with (
            observed_proxy(agentsync_simulator, upstream, allowed_origins=(origin,)) as proxy,
            chromium(tmp_path) as browser,
        ):
            await browser.open(origin + "/")
            results = await browser.run(f"useAllowed({json.dumps(proxy.url)})")
    get, put = results["cors_get"], results["preflighted_put"]
    assert (get["status"], get["body"]) == (200, {"ok": True}), results
    assert (put["status"], put["body"]) == (200, {"ok": True}), results
    assert get["requestId"] and put["requestId"]  # exposed to the page by the proxy
    assert [(r.method, r.target) for r in upstream.received] == [("GET", "/v1/x"), ("PUT", "/v1/y")]
    assert upstream.received[0].header("X-Request-Id") == get["requestId"]
    assert upstream.received[1].header("X-Client-Trace") == "trace-1"
    assert upstream.received[1].body == b'{"name": "Acme"}'
    assert ("OPTIONS", "/v1/y", 204, None) in answered(proxy)
