"""How the token endpoint's answers are read: Retry-After, expires_in and the access token, odd
values included."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.credentials import ClientSecret, Secret
from proxy.errors import TokenRejected, TokenUnavailable
from proxy.settings import Settings
from proxy.token_endpoint import RETRY_AFTER_CAP, TokenEndpoint, retry_after_seconds
from tests.conftest import ProxyFactory
from tests.rawhttp import RawUpstream

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC).timestamp()


def http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + seconds_from_now, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        (http_date(42), 42.0),
        ("Tue, 04 Mar 2025 05:06:49 -0000", 42.0),  # a date without a zone is read as GMT
        (http_date(-42), 0.0),  # a date in the past: no need to wait
        ("100000000", RETRY_AFTER_CAP),
        ("9" * 5000, RETRY_AFTER_CAP),
        (http_date(86400 * 365), RETRY_AFTER_CAP),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date_and_capped(
    header: str, seconds: float
) -> None:
    assert retry_after_seconds(header, now=NOW) == seconds


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "\u00b2",  # superscript two: str.isdigit() says yes
        "\u0663",  # Arabic-Indic three
        "\uff17",  # fullwidth seven
        "-5",
        "+5",
        "1.5",
        "1e3",
        "soon",
        "Tue, 99 Foo 2025",
        "Mon, 1 Jan 99999",
    ],
)
def test_retry_after_that_is_not_ascii_seconds_or_a_date_is_ignored(header: str | None) -> None:
    assert retry_after_seconds(header, now=NOW) is None


class TokenEndpointAnswering:
    """A real token endpoint on loopback that answers whatever the test sets."""

    def __init__(self) -> None:
        self.status = 200
        self.headers: dict[str, str] = {}
        self.body: bytes = b""
        self.app = web.Application()
        self.app.router.add_post("/oauth2/token", self.token)

    async def token(self, request: web.Request) -> web.Response:
        await request.post()
        return web.Response(
            status=self.status,
            body=self.body,
            headers=self.headers,
            content_type="application/json",
        )


@pytest.fixture
async def answering(
    aiohttp_server: ServerFactory,
) -> AsyncIterator[tuple[TokenEndpointAnswering, TokenEndpoint]]:
    answers = TokenEndpointAnswering()
    server = await aiohttp_server(answers.app)
    async with aiohttp.ClientSession() as session:
        yield (
            answers,
            TokenEndpoint(
                session,
                Settings(
                    api_base_url="https://api.example",
                    token_url=str(server.make_url("/oauth2/token")),
                    client_id="client",
                    client_secret=ClientSecret(Secret("client-secret-value")),
                    default_token_lifetime=1234.0,
                ),
            ),
        )


@pytest.mark.parametrize(
    "header",
    ["\u00b2", "-5", "soon", "99999999999999999999999999", "Tue, 04 Mar 2025 05:06:49 GMT"],
)
async def test_an_odd_retry_after_on_a_503_is_still_a_503(
    answering: tuple[TokenEndpointAnswering, TokenEndpoint], header: str
) -> None:
    answers, endpoint = answering
    answers.status, answers.headers = 503, {"Retry-After": header}
    with pytest.raises(TokenUnavailable) as unavailable:
        await endpoint.fetch()
    retry_after = unavailable.value.retry_after
    assert retry_after is None or 0 <= retry_after <= RETRY_AFTER_CAP


@pytest.mark.parametrize(
    "expires_in",
    [
        '"abc"',
        '"\u00b2"',
        '"\u0663\u0666\u0660\u0660"',
        '"-5"',
        "-5",
        "0",
        "1e30",
        "NaN",
        "true",
        "[1]",
    ],
)
async def test_a_malformed_expires_in_falls_back_to_the_default_lifetime_with_a_warning(
    answering: tuple[TokenEndpointAnswering, TokenEndpoint], expires_in: str
) -> None:
    answers, endpoint = answering
    answers.body = b'{"access_token": "t", "token_type": "Bearer", "expires_in": %s}' % (
        expires_in.encode()
    )
    with structlog.testing.capture_logs() as logs:
        token = await endpoint.fetch()
    assert token.lifetime == 1234.0
    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warning["event"] == "token_expires_in_invalid"
    assert warning["expires_in_assumed"] == 1234.0


@pytest.mark.parametrize(("expires_in", "lifetime"), [("3600", 3600.0), ('"3600"', 3600.0)])
async def test_expires_in_as_a_number_or_a_string_of_digits_is_the_lifetime(
    answering: tuple[TokenEndpointAnswering, TokenEndpoint], expires_in: str, lifetime: float
) -> None:
    answers, endpoint = answering
    answers.body = b'{"access_token": "t", "token_type": "Bearer", "expires_in": %s}' % (
        expires_in.encode()
    )
    assert (await endpoint.fetch()).lifetime == lifetime


# Characters an Authorization header cannot carry: the token would fail every request.
UNSENDABLE_TOKENS = [
    "abc\ndef",
    "abc\r\ndef",
    "abc\x00def",
    "abc\x1bdef",
    "abc\x7fdef",
    "abc\tdef",
    "abc def",
    " abcdef",
    "abc\u00e9def",
    "abc\u2028def",
]


@pytest.mark.parametrize("token", UNSENDABLE_TOKENS)
async def test_a_token_that_cannot_stand_in_a_header_is_a_rejected_answer(
    answering: tuple[TokenEndpointAnswering, TokenEndpoint], token: str
) -> None:
    answers, endpoint = answering
    answers.body = json.dumps(
        {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
    ).encode()
    with pytest.raises(TokenRejected) as rejected:
        await endpoint.fetch()
    assert "AGENTSYNC_TOKEN_URL" in rejected.value.description
    assert token not in str(rejected.value) and "abc" not in rejected.value.description


async def test_a_token_of_visible_ascii_is_taken_as_it_is(
    answering: tuple[TokenEndpointAnswering, TokenEndpoint],
) -> None:
    answers, endpoint = answering
    token = "eyJ0eXAi.eyJzdWIi-_~+/=.sig!#$%&'*^`|"
    answers.body = json.dumps({"access_token": token, "token_type": "Bearer"}).encode()
    assert (await endpoint.fetch()).value.reveal() == token


async def test_token_with_a_newline_is_rejected_not_500(
    make_proxy: ProxyFactory, upstream: RawUpstream, aiohttp_server: ServerFactory
) -> None:
    token_requests = 0

    async def token(request: web.Request) -> web.Response:
        nonlocal token_requests
        token_requests += 1
        body = {"access_token": "Zq9sekret\nXw7tail", "token_type": "Bearer", "expires_in": 3600}
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/oauth2/token", token)
    server = await aiohttp_server(app)
    with structlog.testing.capture_logs() as logs:
        proxy = await make_proxy(token_url=str(server.make_url("/oauth2/token")))
        async with aiohttp.ClientSession() as session:
            for _ in range(20):
                async with session.get(f"{proxy.url}/v1/x") as response:
                    assert response.status == 502
                    text = await response.text()
    body = json.loads(text)
    assert body["error"] == "token_request_rejected"
    assert "AGENTSYNC_TOKEN_URL" in body["error_description"]
    assert upstream.received == []
    assert token_requests == 1  # remembered, not asked again for every request
    [event] = [entry for entry in logs if entry["event"] == "token_request_rejected"]
    assert "header" in event["error"]
    for shown in (text, repr(logs)):
        assert "Zq9sekret" not in shown and "Xw7tail" not in shown
