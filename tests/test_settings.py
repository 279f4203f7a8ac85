"""Settings: precedence of flags, environment, TOML file, environment table and defaults, and
one clear line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from proxy.cli import main
from proxy.settings import ConfigError, Settings, load_settings
from tests.cli_process import run_cli

BASE_ENV = {"AGENTSYNC_CLIENT_ID": "id", "AGENTSYNC_CLIENT_SECRET": "env-secret-value"}


def problems(flags: dict[str, object], environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load_settings(flags, environ)
    return error.value.problems


def test_defaults_come_from_the_sandbox_row_of_the_environment_table() -> None:
    settings = load_settings({}, BASE_ENV)
    assert settings.environment == "sandbox"
    assert settings.token_url == "https://auth.sandbox.agentsync.io/oauth2/token"
    assert settings.api_base_url == "https://api.sandbox.agentsync.io"
    assert str(settings.listen) == "127.0.0.1:8080"
    assert (settings.refresh_margin, settings.token_requests_per_minute) == (300.0, 20)
    assert (settings.connect_timeout, settings.upstream_timeout) == (10.0, 60.0)
    assert settings.max_body_size == 1073741824
    assert settings.client_auth == "post"
    assert settings.scope is None


def test_production_row() -> None:
    settings = load_settings({"environment": "production"}, BASE_ENV)
    assert settings.token_url == "https://auth.agentsync.io/oauth2/token"
    assert settings.api_base_url == "https://api.agentsync.io"


def test_flag_beats_environment_beats_file_beats_table(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text(
        'api_base_url = "https://file.example.com"\n'
        'scope = "from-file"\n'
        "refresh_margin = 120\n"
        'listen = "127.0.0.1:9000"\n'
    )
    environ = {
        **BASE_ENV,
        "AGENTSYNC_PROXY_CONFIG": str(config),
        "AGENTSYNC_SCOPE": "from-env",
        "AGENTSYNC_PROXY_LISTEN": "127.0.0.1:9001",
    }
    settings = load_settings({"listen": "127.0.0.1:9002"}, environ)
    assert str(settings.listen) == "127.0.0.1:9002"  # flag
    assert settings.scope == "from-env"  # environment over file
    assert settings.api_base_url == "https://file.example.com"  # file over table
    assert settings.refresh_margin == 120.0  # file over default
    assert settings.token_url == "https://auth.sandbox.agentsync.io/oauth2/token"  # table


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        {"listen": "nowhere", "environment": "staging", "refresh_margin": "soon"},
        {"AGENTSYNC_PROXY_WORKERS": "0", "AGENTSYNC_CLIENT_AUTH": "digest"},
    )
    joined = "\n".join(found)
    for expected in (
        "--listen",
        "unknown environment 'staging'",
        "--refresh-margin",
        "AGENTSYNC_PROXY_WORKERS",
        "AGENTSYNC_CLIENT_AUTH",
        "AGENTSYNC_CLIENT_ID: required",
        "AGENTSYNC_CLIENT_SECRET: required",
    ):
        assert expected in joined
    assert len(found) == 7


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"AGENTSYNC_ENVIRONMENT": "development"}, "required for the development environment"),
        ({"AGENTSYNC_API_BASE_URL": "ftp://api.example.com"}, "not an http:// or https:// URL"),
        ({"AGENTSYNC_API_BASE_URL": "http://api.example.com"}, "must use https://"),
        ({"AGENTSYNC_TOKEN_URL": "http://auth.example.com/t"}, "must use https://"),
        ({"AGENTSYNC_API_BASE_URL": "https://auth.agentsync.io"}, "is an auth.* host"),
        ({"AGENTSYNC_API_BASE_URL": "not a url"}, "AGENTSYNC_API_BASE_URL"),
        ({"AGENTSYNC_PROXY_LISTEN": "0.0.0.0:8080"}, "--allowed-clients CIDR,... is required"),
        ({"AGENTSYNC_PROXY_ALLOWED_CLIENTS": "10.0.0.0/33"}, "not an address or CIDR"),
        ({"AGENTSYNC_PROXY_ALLOWED_ORIGINS": "app.example.com"}, "not an origin"),
        ({"AGENTSYNC_PROXY_CA_BUNDLE": "/nonexistent/ca.pem"}, "cannot read"),
        ({"AGENTSYNC_PROXY_MAX_BODY_SIZE": "-1"}, "AGENTSYNC_PROXY_MAX_BODY_SIZE"),
    ],
)
def test_bad_settings_are_named_with_what_to_do(environ: dict[str, str], expected: str) -> None:
    found = problems({}, {**BASE_ENV, **environ})
    assert len(found) == 1
    assert expected in found[0]


DURATIONS = (
    "refresh_margin",
    "token_timeout",
    "default_token_lifetime",
    "connect_timeout",
    "upstream_timeout",
    "shutdown_timeout",
)


@pytest.mark.parametrize("name", DURATIONS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
def test_durations_must_be_finite(name: str, value: str) -> None:
    [problem] = problems({name: value}, BASE_ENV)
    assert problem == (
        f"--{name.replace('_', '-')}: {value!r} is not a finite number of seconds (for example 30)"
    )


@pytest.mark.parametrize("name", DURATIONS)
def test_a_duration_beyond_what_a_float_holds_is_too_large(name: str) -> None:
    [problem] = problems({name: "1e400"}, BASE_ENV)
    assert problem == f"--{name.replace('_', '-')}: '1e400' is too large (for example 30)"


def test_a_duration_from_the_file_must_be_finite_too(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text("token_timeout = inf\n")
    [problem] = problems({"config": str(config)}, BASE_ENV)
    assert (
        problem
        == f"{config}: token_timeout: inf is not a finite number of seconds (for example 30)"
    )


@pytest.mark.parametrize("port", ["²", "65536", "٨٠", "x", "-1"])
def test_a_listen_port_that_is_not_0_to_65535_says_so(port: str) -> None:
    [problem] = problems({"listen": f"127.0.0.1:{port}"}, BASE_ENV)
    assert problem == (
        f"--listen: {port!r} is not a port: give a number from 1 to 65535, or 0 for any free"
        " port (for example 127.0.0.1:8080)"
    )


def test_listen_port_0_takes_any_free_port_as_test_harnesses_do() -> None:
    assert load_settings({"listen": "127.0.0.1:0"}, BASE_ENV).listen.port == 0


def test_workers_on_port_0_are_refused_as_they_would_not_share_a_port() -> None:
    [problem] = problems({"listen": "127.0.0.1:0", "workers": "2"}, BASE_ENV)
    assert problem == (
        "--workers: 2 workers must share one port, and --listen 127.0.0.1:0 would give each its"
        " own: name the port"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_body_size", "١٢"),  # Arabic-Indic digits: int() reads them, isdigit() says yes
        ("workers", "²"),  # isdigit() says yes, int() refuses
        ("connect_timeout", "١٢"),  # float() reads them too
        ("refresh_margin", "²"),
    ],
)
def test_numbers_are_ascii_digits_only(name: str, value: str) -> None:
    [problem] = problems({name: value}, BASE_ENV)
    assert problem.startswith(f"--{name.replace('_', '-')}: {value!r} is not a ")


def test_a_number_too_large_for_any_setting_is_one_clear_line() -> None:
    [problem] = problems({"max_body_size": "9" * 5000}, BASE_ENV)
    assert problem.startswith("--max-body-size: ") and problem.endswith(" is too large")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("environment", "bogus", "unknown environment 'bogus'"),
        ("api_base_url", "http://api.example.com", "must use https://"),
        ("token_url", "http://auth.example.com/t", "must use https://"),
        ("ca_bundle", "/nonexistent/ca.pem", "cannot read"),
        ("client_secret_file", "/nonexistent/secret", "cannot read"),
    ],
)
def test_a_problem_is_labelled_with_where_the_value_came_from(
    name: str, value: str, expected: str, tmp_path: Path
) -> None:
    env_name = "AGENTSYNC_" + ("PROXY_" * (name == "ca_bundle")) + name.upper()
    environ = {"AGENTSYNC_CLIENT_ID": "id"}
    if name != "client_secret_file":
        environ["AGENTSYNC_CLIENT_SECRET"] = "s"
    config = tmp_path / "proxy.toml"
    config.write_text(f"{name} = {value!r}\n".replace("'", '"'))
    sources: list[tuple[dict[str, object], dict[str, str], str]] = [
        ({name: value}, {}, "--" + name.replace("_", "-")),
        ({}, {env_name: value}, env_name),
        ({"config": str(config)}, {}, f"{config}: {name}"),
    ]
    for flags, env, label in sources:
        [problem] = problems(flags, {**environ, **env})
        assert problem.startswith(f"{label}: ") and expected in problem


def test_a_ca_bundle_of_pem_certificates_is_accepted(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    settings = load_settings({"ca_bundle": str(bundle)}, BASE_ENV)
    assert settings.ca_bundle == bundle


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "is a directory"),
        ("a host name\n", "holds no PEM certificate"),
        (
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
            "is not valid PEM",
        ),
    ],
)
def test_a_ca_bundle_that_is_not_pem_certificates_is_one_line(
    content: str | None, expected: str, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    if content is None:
        bundle.mkdir()
    else:
        bundle.write_text(content)
    [problem] = problems({"ca_bundle": str(bundle)}, BASE_ENV)
    assert problem.startswith(f"--ca-bundle: {bundle} {expected}")
    assert problem.endswith("(give a file of PEM CA certificates)")


@pytest.mark.parametrize("name", ["api_base_url", "token_url"])
@pytest.mark.parametrize(
    "url",
    [
        "http://u:hunter2@127.0.0.1:9/",
        "https://u:hunter2@auth.example.com/oauth2/token",
        "https://:hunter2@api.example.com",
        "https://hunter2@api.example.com",
        "ftp://u:hunter2@api.example.com",
        "https://u:hunter2@[bad/",
        "https://u:hunter2/x@api.example.com/",
        "//u:hunter2@api.example.com",
        "u:hunter2@api.example.com",
        "https:u:hunter2@api.example.com",
        "https://u:hunter2@api.example.com/#x",
    ],
)
def test_a_url_with_a_user_or_password_is_refused_without_showing_it(name: str, url: str) -> None:
    [problem] = problems({name: url}, BASE_ENV)
    assert problem.startswith(f"--{name.replace('_', '-')}: ")
    assert "hunter2" not in problem
    assert "u:" not in problem.partition(": ")[2]  # nor the user name


@pytest.mark.parametrize("name", ["api_base_url", "token_url"])
def test_a_url_with_a_user_or_password_says_where_credentials_go(name: str) -> None:
    [problem] = problems({name: "https://u:hunter2@api.example.com/"}, BASE_ENV)
    assert problem == (
        f"--{name.replace('_', '-')}: https://***@api.example.com/ must not hold a user name or"
        " password (give the client id and secret in their own settings: --client-id, and"
        " AGENTSYNC_CLIENT_SECRET or --client-secret-file)"
    )


def test_an_origin_with_a_user_or_password_is_refused_without_showing_it() -> None:
    [problem] = problems({"allowed_origins": "https://u:hunter2@app.example.com"}, BASE_ENV)
    assert problem == (
        "--allowed-origins: 'https://***@app.example.com' is not an origin such as"
        " https://app.example.com"
    )


def test_every_bad_item_of_a_list_is_reported() -> None:
    found = problems(
        {
            "allowed_clients": "10.0.0.0/33,192.168.0.0/16,abc",
            "allowed_origins": "app.example.com,https://ok.example.com,ftp://x",
        },
        BASE_ENV,
    )
    assert found == [
        "--allowed-clients: '10.0.0.0/33' is not an address or CIDR block",
        "--allowed-clients: 'abc' is not an address or CIDR block",
        "--allowed-origins: 'app.example.com' is not an origin such as https://app.example.com",
        "--allowed-origins: 'ftp://x' is not an origin such as https://app.example.com",
    ]


def test_more_workers_than_token_requests_a_minute_is_refused() -> None:
    # Each worker keeps its own token and a share of the cap: at least one request a minute.
    [problem] = problems({"workers": "30"}, BASE_ENV)
    assert problem == (
        "--workers: 30 workers need --token-requests-per-minute of at least 30 (one token"
        " request a minute each), not 20: lower --workers or raise the cap"
    )


def test_as_many_workers_as_token_requests_a_minute_is_fine() -> None:
    settings = load_settings({"workers": "4", "token_requests_per_minute": "4"}, BASE_ENV)
    assert (settings.workers, settings.token_requests_per_minute) == (4, 4)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8090", "http://localhost:8090/api", "http://[::1]:8090"]
)
def test_plain_http_is_allowed_for_loopback(url: str) -> None:
    settings = load_settings({"api_base_url": url, "token_url": url + "/oauth2/token"}, BASE_ENV)
    assert settings.api_base_url == url


def test_unreadable_secret_file_is_a_problem() -> None:
    found = problems({}, {"AGENTSYNC_CLIENT_ID": "id", "AGENTSYNC_CLIENT_SECRET_FILE": "/no/such"})
    assert found == [
        "AGENTSYNC_CLIENT_SECRET_FILE: cannot read /no/such (No such file or directory)"
    ]


def test_both_secret_and_secret_file_is_a_problem(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s")
    found = problems({}, {**BASE_ENV, "AGENTSYNC_CLIENT_SECRET_FILE": str(secret)})
    assert found == [
        "AGENTSYNC_CLIENT_SECRET and AGENTSYNC_CLIENT_SECRET_FILE are both set: keep one"
    ]


def test_secret_file_readable_by_others_gets_a_warning(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s\n")
    secret.chmod(0o644)
    settings = load_settings({"client_secret_file": str(secret)}, {"AGENTSYNC_CLIENT_ID": "id"})
    assert settings.client_secret.read().reveal() == "s"
    assert any("readable by other users" in w for w in settings.warnings)


def test_bad_toml_file_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text("listen = [unclosed\n")
    found = problems({"config": str(config)}, BASE_ENV)
    assert len(found) == 1 and "not valid TOML" in found[0]


def test_unknown_and_secret_keys_in_the_file_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text('client_secret = "x"\nlisten_port = 1\n')
    found = problems({"config": str(config)}, BASE_ENV)
    assert any("'client_secret'" in p and "AGENTSYNC_CLIENT_SECRET" in p for p in found)
    assert any("'listen_port'" in p for p in found)


def test_the_example_config_file_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "config" / "agentsync-proxy.example.toml"
    secret = tmp_path / "secret"
    secret.write_text("s")
    secret.chmod(0o600)
    settings = load_settings({"config": str(example), "client_secret_file": str(secret)}, {})
    assert isinstance(settings, Settings)
    assert settings.client_id == "your-client-id"
    assert settings.warnings == ()


def test_secret_never_shows_in_settings_repr() -> None:
    settings = load_settings({}, BASE_ENV)
    assert "env-secret-value" not in repr(settings)
    assert "env-secret-value" not in str(settings.client_secret)


def test_cli_reports_problems_one_per_line_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["serve", "--listen", "bad"], {"AGENTSYNC_ENVIRONMENT": "nope"})
    err = capsys.readouterr().err
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 4  # listen, environment, client id, client secret
    assert all(line.startswith("agentsync-proxy: ") for line in lines)
    assert "Traceback" not in err


def test_rate_limit_link_and_fleet_defaults() -> None:
    settings = load_settings({}, BASE_ENV)
    assert (settings.pacing, settings.api_requests_per_minute) == ("auto", None)
    assert settings.rate_limit_wait == 30.0
    assert (settings.rewrite_links, settings.link_origins) == (True, ())
    assert (settings.max_connections, settings.redis_url) == (100, None)


@pytest.mark.parametrize(
    ("text", "expected"), [("auto", ("auto", None)), ("off", ("off", None)), ("120", ("auto", 120))]
)
def test_api_requests_per_minute_is_auto_off_or_a_cap(
    text: str, expected: tuple[str, int | None]
) -> None:
    settings = load_settings({"api_requests_per_minute": text}, BASE_ENV)
    assert (settings.pacing, settings.api_requests_per_minute) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [(" AUTO ", ("auto", None)), ("300", ("auto", 300)), ("1", ("auto", 1))],
)
def test_api_requests_per_minute_reads_any_case_and_spacing(
    text: str, expected: tuple[str, int | None]
) -> None:
    settings = load_settings({"api_requests_per_minute": text}, BASE_ENV)
    assert (settings.pacing, settings.api_requests_per_minute) == expected


@pytest.mark.parametrize("text", ["", "0", "-5", "1.5", "on", "\u0663", "9" * 30])
def test_api_requests_per_minute_refuses_anything_else(text: str) -> None:
    [problem] = problems({"api_requests_per_minute": text}, BASE_ENV)
    assert problem.endswith("is not auto, off or a whole number of at least 1")


def test_rate_limit_settings_report_each_bad_value_on_its_own_line() -> None:
    environ = {
        **BASE_ENV,
        "AGENTSYNC_PROXY_API_REQUESTS_PER_MINUTE": "-5",
        "AGENTSYNC_PROXY_RATE_LIMIT_WAIT": "soon",
        "AGENTSYNC_PROXY_REWRITE_LINKS": "maybe",
        "AGENTSYNC_PROXY_MAX_CONNECTIONS": "0",
    }
    assert problems({}, environ) == [
        "AGENTSYNC_PROXY_MAX_CONNECTIONS: '0' is not a whole number of at least 1",
        "AGENTSYNC_PROXY_API_REQUESTS_PER_MINUTE: '-5' is not auto, off or a whole number"
        " of at least 1",
        "AGENTSYNC_PROXY_RATE_LIMIT_WAIT: 'soon' is not a number of seconds",
        "AGENTSYNC_PROXY_REWRITE_LINKS: 'maybe' is not on or off",
    ]


def test_a_redis_url_is_kept_secret_and_checked() -> None:
    url = "rediss://:hunter2@redis.internal:6380/0"
    settings = load_settings({"redis_url": url}, BASE_ENV)
    assert settings.redis_url is not None and settings.redis_url.reveal() == url
    assert "hunter2" not in repr(settings)
    [problem] = problems({"redis_url": "http://:hunter2@redis.internal"}, BASE_ENV)
    assert problem.startswith("--redis-url: 'http://***@redis.internal' is not a redis://")
    for url in ("http://redis.internal/0?password=hunter2", "http://u:hun?ter2@redis.internal"):
        [problem] = problems({"redis_url": url}, BASE_ENV)
        assert "hunter2" not in problem and "hun" not in problem


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("/one", "/one"),
        ("/0/1", "/0/1"),
        ("/-1", "/-1"),
        ("/1234567890123456789", "/1234567890123456789"),
        ("/?db=2", "/"),
        ("/0?password=hunter3", "/0"),  # redis-py would read a password there: never shown
    ],
)
def test_a_redis_url_names_a_database_by_number_or_not_at_all(path: str, shown: str) -> None:
    url = f"redis://:hunter2@redis.internal{path}"
    [problem] = problems({"redis_url": url}, BASE_ENV)
    assert problem == (
        f"--redis-url: 'redis://***@redis.internal{shown}' is not a redis:// or rediss:// URL"
        " with a database number or nothing as its path, and no query (for example"
        " rediss://redis.internal:6380/0)"
    )
    for good in ("redis://redis.internal", "redis://redis.internal/", "redis://h/15"):
        assert load_settings({"redis_url": good}, BASE_ENV).redis_url is not None


@pytest.mark.parametrize("value", ["proxy.internal:3128", "socks5://proxy.internal:1080"])
async def test_egress_proxy_without_scheme_is_refused_at_start(value: str) -> None:
    result = await run_cli("serve", env={**BASE_ENV, "HTTPS_PROXY": value})
    assert result.status == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"agentsync-proxy: HTTPS_PROXY: {value!r} is not an http:// or https://")
