"""Request targets, as a property: any raw request target either is refused with a 4xx and
forwarded nowhere, or reaches the configured upstream (its own host:port) byte for byte, under
the API base URL's path.

The tests are async `@given` functions: pytest-asyncio (under pytest-aiohttp) runs every example
on the test's event loop, so one proxy and one raw upstream, started by function-scoped fixtures,
serve all the examples while Hypothesis keeps its generation, shrinking and example database.
Each example therefore looks only at what the upstream received during that example."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ProxyFactory
from tests.rawhttp import RawUpstream, raw_request

# Printable ASCII without space (it ends the target) and '#' (a fragment is never sent).
TARGET_CHARACTERS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "#")
TRICKY_PIECES = (
    "%2F",
    "%2f",
    "%2e",
    "%2E%2E",
    "%25",
    "%00",
    "%",
    "%z",
    "..",
    ".",
    "/",
    "//",
    "//evil.example",
    "@evil.example",
    "\\",
    "\\\\evil.example",
    "?",
    "&",
    "=",
    ":",
    "-",
    "/-/",
)
percent_escapes = st.builds(
    lambda byte, upper: f"%{byte:02X}" if upper else f"%{byte:02x}",
    st.integers(0, 255),
    st.booleans(),
)
targets = st.lists(
    st.one_of(
        st.text(TARGET_CHARACTERS, min_size=1, max_size=6),
        st.sampled_from(TRICKY_PIECES),
        percent_escapes,
    ),
    max_size=10,
).map(lambda parts: "/" + "".join(parts))
QUERIES = st.text(TARGET_CHARACTERS)
PROPERTY = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def is_proxy_own_path(target: str) -> bool:
    """Under /-/ (the proxy's own paths, never forwarded), counting %2D as '-' as RFC 3986
    section 6.2.2.2 does."""
    path = target.partition("?")[0]
    return re.sub("%2[dD]", "-", path).startswith("/-/")


@dataclass(frozen=True)
class Proxied:
    port: int
    base_path: str
    upstream: RawUpstream


@pytest.fixture(params=["", "/api"], ids=["no-base-path", "base-path-api"])
async def proxied(
    request: pytest.FixtureRequest, make_proxy: ProxyFactory, upstream: RawUpstream
) -> Proxied:
    base_path: str = request.param
    proxy = await make_proxy(api_base_url=upstream.url + base_path)
    return Proxied(proxy.port, base_path, upstream)


async def check_forwarded_unchanged_or_refused(proxied: Proxied, target: str) -> None:
    upstream = proxied.upstream
    before = len(upstream.received)
    data = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    response = await raw_request(proxied.port, data)
    forwarded = upstream.received[before:]
    if is_proxy_own_path(target):
        assert forwarded == [], f"{target!r} is the proxy's own and was forwarded"
    elif not forwarded:
        assert 400 <= response.status < 500, f"{target!r}: {response.status} {response.body!r}"
    else:
        assert len(forwarded) == 1
        # The HTTP client writes an empty query (`/x?`) as `/x`: the only change it makes.
        path, _, query = target.partition("?")
        assert forwarded[0].target == proxied.base_path + (target if query else path)
        assert forwarded[0].header("Host") == f"127.0.0.1:{upstream.port}"
        assert response.status == 200


@PROPERTY
@given(target=targets)
async def test_raw_target_is_forwarded_unchanged_to_the_upstream_or_refused(
    proxied: Proxied, target: str
) -> None:
    await check_forwarded_unchanged_or_refused(proxied, target)


@PROPERTY
@given(target=st.builds(lambda path, query: f"{path}?{query}?", targets, QUERIES))
async def test_target_whose_query_ends_in_question_mark_is_forwarded_unchanged(
    proxied: Proxied, target: str
) -> None:
    await check_forwarded_unchanged_or_refused(proxied, target)
