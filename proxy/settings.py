"""Every setting of the proxy: read from flags, environment, a TOML file and the environment
table (in that order of precedence), then validated, with every problem reported at once."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from functools import partial
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

from yarl import URL

from proxy.credentials import ClientSecret, Secret

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Parser = Callable[[object], Any]
T = TypeVar("T")
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
MAX_DIGITS = 18  # fits in 64 bits; int() refuses numbers of more than 4,300 digits anyway
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|//")  # in u:p@host, u: is no scheme
ENVIRONMENTS = "environments.toml"  # config/ in the source tree, inside the wheel's package


class ConfigError(Exception):
    """The configuration has problems; each is one line for the user."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]").rstrip(".").lower()
    try:
        return host in LOOPBACK_NAMES or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_auth_host(host: str) -> bool:
    return host.rstrip(".").lower().startswith("auth.")


def whole_number(text: str) -> int | None:
    """The number `text` spells in ASCII digits, or None: int() also reads other scripts' digits
    ('١٢' is 12), and '²' passes str.isdigit() but fails int()."""
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > MAX_DIGITS:
        return None
    return int(text)


# Parsers: each takes a flag/environment string or a TOML value and raises ValueError (a list:
# an ExceptionGroup of one ValueError for each bad item).
def _text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected text, got {type(value).__name__}")
    return str(value).strip()


def _nonempty(value: object) -> str:
    text = _text(value)
    if not text:
        raise ValueError("must not be empty")
    return text


def _seconds(value: object, *, allow_zero: bool = False) -> float:
    text = _text(value)
    try:
        if not text.isascii():  # float() reads other scripts' digits too
            raise ValueError(text)
        number = float(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a number of seconds") from None
    # float() also reads inf, nan and 1e400 (as inf): no timer can be set that far, aiohttp's
    # fails with OverflowError. Digits read as inf were meant as a number, only too large.
    spelled_out = not any(char.isdigit() for char in text)
    if math.isnan(number) or (math.isinf(number) and spelled_out):
        raise ValueError(f"{value!r} is not a finite number of seconds (for example 30)")
    if number < 0 or (number == 0 and not allow_zero):
        raise ValueError(f"{value!r} must be greater than 0")
    if math.isinf(number):
        raise ValueError(f"{value!r} is too large (for example 30)")
    return number


def _count(value: object) -> int:
    text = _text(value).replace("_", "")
    number = whole_number(text)
    if number is None and text.isascii() and text.isdigit():
        raise ValueError(f"a {len(text)}-digit number is too large")
    if number is None or number < 1:
        raise ValueError(f"{value!r} is not a whole number of at least 1")
    return number


def _choice(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _text(value).lower()
        if text not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return text

    return parse


def _bool(value: object, *, words: str = "true or false") -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"{value!r} is not {words}")


_seconds_or_zero = partial(_seconds, allow_zero=True)
_on_off = partial(_bool, words="on or off")


def _list_of(parse: Callable[[str], T]) -> Callable[[object], tuple[T, ...]]:
    """Comma-separated items (or a TOML array), each parsed; empty items are left out."""

    def parse_items(value: object) -> tuple[T, ...]:
        parts = value if isinstance(value, list) else _text(value).split(",")
        parsed: list[T] = []
        errors: list[ValueError] = []
        for item in filter(None, map(_text, parts)):
            try:
                parsed.append(parse(item))
            except ValueError as exc:
                errors.append(exc)
        if errors:
            raise ExceptionGroup("items that are wrong", errors)
        return tuple(parsed)

    return parse_items


def _network(item: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(item, strict=False)
    except ValueError:
        raise ValueError(f"{item!r} is not an address or CIDR block") from None


def _masked(text: str) -> str:
    """A URL fit to show in a message: what stands before an @, or in a query (redis-py reads
    ?password=), may be a password."""
    if "@" in text:
        scheme = _SCHEME.match(text)
        text = f"{scheme.group(0) if scheme else ''}***@{text.rpartition('@')[2]}"
    return text.partition("?")[0]


def _with_scheme(text: str, *schemes: str) -> URL | None:
    """The URL if it has one of `schemes` and a host, else None."""
    try:
        url = URL(text)
    except ValueError:
        return None
    return url if url.scheme in schemes and url.host else None


def _origin(item: str) -> str:
    url = _with_scheme(item, "http", "https")
    if url is None or "@" in (url.raw_authority or "") or url.raw_path not in ("", "/"):
        raise ValueError(f"{_masked(item)!r} is not an origin such as https://app.example.com")
    return str(url.origin())


def parse_listen(value: object) -> Listen:
    text = _text(value)
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:8080)")
    port = whole_number(port_text)
    if port is None or port > 65535:
        raise ValueError(
            f"{port_text!r} is not a port: give a number from 1 to 65535, or 0 for any free"
            " port (for example 127.0.0.1:8080)"
        )
    return Listen(host, port)


def _path(value: object) -> Path:
    return Path(_nonempty(value)).expanduser()


def _ca_bundle(value: object) -> Path:
    """Loaded as the clients will, into a context thrown away: a file TLS cannot use must stop
    start-up here, not fail once the proxy is running."""
    path = _path(value)
    hint = "(give a file of PEM CA certificates)"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:  # before OSError, its base class
        if exc.reason == "NO_CERTIFICATE_OR_CRL_FOUND":
            raise ValueError(f"{path} holds no PEM certificate {hint}") from None
        raise ValueError(f"{path} is not valid PEM {hint}") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory {hint}") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path} ({exc.strerror}) {hint}") from None
    return path


def _url(value: object) -> str:
    text = _nonempty(value)
    try:
        url = URL(text, encoded=True)
    except ValueError:
        raise ValueError(f"{_masked(text)!r} is not a URL") from None
    # Credentials in a URL would be printed by check, logged at start and quoted in errors.
    if "@" in (url.raw_authority or ""):
        raise ValueError(
            f"{_masked(text)} must not hold a user name or password (give the client id and"
            " secret in their own settings: --client-id, and AGENTSYNC_CLIENT_SECRET or"
            " --client-secret-file)"
        )
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise ValueError(f"{_masked(text)!r} is not an http:// or https:// URL")
    if url.raw_fragment:
        raise ValueError(f"{_masked(text)!r} must not have a #fragment")
    if url.scheme == "http" and not is_loopback_host(url.raw_host):
        raise ValueError(
            f"{text} must use https:// (plain http:// is allowed only for loopback hosts)"
        )
    return text


def _api_url(value: object) -> str:
    """A URL that is no authorization server's and has no query, without its trailing /."""
    text = _url(value)
    url = URL(text, encoded=True)
    if is_auth_host(url.raw_host or ""):
        raise ValueError(
            f"{text} is an auth.* host: API traffic must go to the API base URL, never the"
            " authorization server"
        )
    if url.raw_query_string or text.endswith("?"):
        raise ValueError(f"{text} must not have a query string")
    return text.rstrip("/")


def _redis_url(value: object) -> Secret:
    """redis:// or rediss://; kept as a Secret, since it may hold a password."""
    text = _nonempty(value)
    url = _with_scheme(text, "redis", "rediss")
    db = "" if url is None else url.raw_path.strip("/")
    if url is None or (db and whole_number(db) is None) or "?" in text:
        raise ValueError(
            f"{_masked(text)!r} is not a redis:// or rediss:// URL with a database number or"
            " nothing as its path, and no query (for example rediss://redis.internal:6380/0)"
        )
    return Secret(text)


def _pacing(value: object) -> tuple[str, int | None]:
    """auto (paced by what the upstream announces), off, or auto with a cap of N a minute."""
    text = _text(value).lower()
    if text in ("auto", "off"):
        return text, None
    try:
        return "auto", _count(text)
    except ValueError:
        raise ValueError(f"{value!r} is not auto, off or a whole number of at least 1") from None


@dataclass(frozen=True)
class Option:
    """One input: its environment variable and, unless `flag` is false, --NAME and TOML key NAME."""

    name: str
    env: str
    parse: Parser
    help: str
    metavar: str | None = None
    flag: bool = True

    @property
    def flag_name(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def switch(self) -> bool:
        """A flag given without a value (--log-query), for a setting that is true or false."""
        return self.parse is _bool


def setting(
    default: Any, parse: Parser, metavar: str | None = None, env: str = "", *, help: str
) -> Any:
    """A Settings field that is an Option too, read from AGENTSYNC_PROXY_NAME unless `env`."""
    metadata = {"parse": parse, "metavar": metavar, "env": env, "help": help}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting of the proxy; each field declared with setting() is in OPTIONS too."""

    listen: Listen = setting(
        Listen("127.0.0.1", 8080), parse_listen, "HOST:PORT", help="address to listen on"
    )
    environment: str = setting(
        "sandbox", _nonempty, "NAME", "AGENTSYNC_ENVIRONMENT", help="AgentSync environment"
    )
    api_base_url: str = setting(
        MISSING, _api_url, "URL", "AGENTSYNC_API_BASE_URL", help="API base URL"
    )
    token_url: str = setting(
        MISSING, _url, "URL", "AGENTSYNC_TOKEN_URL", help="OAuth 2.0 token endpoint"
    )
    client_id: str = setting(
        MISSING, _nonempty, "ID", "AGENTSYNC_CLIENT_ID", help="OAuth client id"
    )
    client_secret: ClientSecret  # from the inputs client_secret or client_secret_file, below
    scope: str | None = setting(
        None, _text, '"A B"', "AGENTSYNC_SCOPE", help="space-separated scopes to request"
    )
    client_auth: str = setting(
        "post",
        _choice("post", "basic"),
        "post|basic",
        "AGENTSYNC_CLIENT_AUTH",
        help="client credentials in the token request's form body (post) or as HTTP Basic",
    )
    log_format: str | None = setting(
        None, _choice("json", "console"), "json|console", help="console on a terminal, else json"
    )
    log_level: str = setting(
        "info", _choice("debug", "info", "warning", "error", "critical"), "LEVEL", help="log level"
    )
    log_query: bool = setting(False, _bool, help="log query values unmasked")
    log_probes: bool = setting(False, _bool, help="log /-/ probe requests")
    refresh_margin: float = setting(
        300.0, _seconds_or_zero, "SECONDS", help="renew the token this long before it expires"
    )
    token_requests_per_minute: int = setting(
        20, _count, "N", help="cap on token requests per minute"
    )
    token_timeout: float = setting(
        30.0, _seconds, "SECONDS", help="longest a request waits for a token"
    )
    default_token_lifetime: float = setting(
        3600.0,
        _seconds,
        "SECONDS",
        help="token lifetime assumed when expires_in is missing or malformed",
    )
    connect_timeout: float = setting(10.0, _seconds, "SECONDS", help="connect timeout")
    upstream_timeout: float = setting(
        60.0, _seconds, "SECONDS", help="no response or no bytes for this long"
    )
    client_timeout: float = setting(
        60.0, _seconds, "SECONDS", help="no byte of a request body from the client for this long"
    )
    max_body_size: int = setting(1 << 30, _count, "BYTES", help="largest request body")
    spool_threshold: int = setting(
        1 << 20, _count, "BYTES", help="request bodies above this size are kept in a temporary file"
    )
    allowed_clients: tuple[IPNetwork, ...] = setting(
        (), _list_of(_network), "CIDR,...", help="client CIDR blocks"
    )
    allowed_hosts: tuple[str, ...] = setting(
        (), _list_of(str), "NAME,...", help="Host names accepted"
    )
    allowed_origins: tuple[str, ...] = setting(
        (), _list_of(_origin), "ORIGIN,...", help="web origins allowed (CORS)"
    )
    ca_bundle: Path | None = setting(None, _ca_bundle, "PATH", help="extra CA bundle")
    shutdown_timeout: float = setting(
        25.0, _seconds, "SECONDS", help="time in-flight requests get on SIGTERM"
    )
    workers: int = setting(1, _count, "N", help="processes sharing the port")
    max_connections: int = setting(100, _count, "N", help="upstream connections open at once")
    # Read with its mode, which _complete keeps in `pacing`.
    api_requests_per_minute: int | None = setting(
        None,
        _pacing,
        "auto|N|off",
        help="pace API requests: auto (by the upstream's ratelimit headers), N (auto and a cap"
        " of N a minute) or off",
    )
    pacing: str = "auto"
    rate_limit_wait: float = setting(
        30.0, _seconds_or_zero, "SECONDS", help="longest a request may be held for the rate limit"
    )
    rewrite_links: bool = setting(
        True,
        _on_off,
        "on|off",
        help="rewrite the API's absolute links in JSON answers to the proxy",
    )
    link_origins: tuple[str, ...] = setting(
        (),
        _list_of(_origin),
        "URL,...",
        help="more origins whose links come back through the proxy",
    )
    redis_url: Secret | None = setting(
        None, _redis_url, "URL", help="Redis shared by a fleet of proxies"
    )
    redis_password_file: Path | None = setting(
        None, _path, "PATH", help="file holding the Redis password"
    )
    warnings: tuple[str, ...] = field(default=(), compare=False)


def _option(
    name: str, parse: Parser, metavar: str | None = None, env: str = "", *, help: str
) -> Option:
    env = env or "AGENTSYNC_PROXY_" + name.upper()
    return Option(name, env, parse, help, metavar, flag=name != "client_secret")


OPTIONS = (
    # The inputs that are no field: where more settings are read from, and the client secret's
    # two sources, which _complete makes into Settings.client_secret.
    _option("config", _path, "FILE", help="TOML configuration file"),
    _option("client_secret", _nonempty, env="AGENTSYNC_CLIENT_SECRET", help="client secret"),
    _option(
        "client_secret_file",
        _path,
        "PATH",
        "AGENTSYNC_CLIENT_SECRET_FILE",
        help="file holding the client secret, re-read at every token request",
    ),
    *(_option(spec.name, **spec.metadata) for spec in fields(Settings) if spec.metadata),
)
OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}
_TOML_KEYS = {option.name for option in OPTIONS if option.flag and option.name != "config"}


def load_settings(flags: Mapping[str, object], environ: Mapping[str, str]) -> Settings:
    """Merge flags > environment > TOML file > environment table > defaults; raise ConfigError."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}  # the flag, variable or file key each value came from

    def take(option: Option, raw: object, source: str) -> None:
        sources[option.name] = source
        try:
            values[option.name] = option.parse(raw)
        except* ValueError as group:
            problems.extend(f"{source}: {exc}" for exc in group.exceptions)

    for option in OPTIONS:
        if flags.get(option.name) is not None:
            take(option, flags[option.name], option.flag_name)
        elif environ.get(option.env, "") != "":
            take(option, environ[option.env], option.env)
    if (path := values.pop("config", None)) is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            problems.append(f"--config {path}: cannot read the file ({exc.strerror})")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            problems.append(f"--config {path}: not valid TOML ({exc})")
        else:
            for key in sorted(set(data) - _TOML_KEYS):
                hint = " (give the secret in AGENTSYNC_CLIENT_SECRET or client_secret_file)"
                problems.append(
                    f"--config {path}: unknown setting {key!r}{hint * (key == 'client_secret')}"
                )
            for key, raw in data.items():
                if key in _TOML_KEYS and key not in values:
                    take(OPTIONS_BY_NAME[key], raw, f"{path}: {key}")
    # An egress proxy in HTTP(S)_PROXY must be a URL the HTTP client can use: without a scheme
    # it would be ignored, and the client speaks no SOCKS, so requests would go direct.
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        text = environ.get(name, "").strip()
        if text and _with_scheme(text, "http", "https") is None:
            problems.append(
                f"{name}: {_masked(text)!r} is not an http:// or https:// proxy URL (for example"
                " http://proxy.internal:3128; SOCKS proxies are not supported)"
            )
    warnings = _complete(values, sources, problems)
    if problems:
        raise ConfigError(problems)
    return Settings(**values, warnings=tuple(warnings))


def load_environments() -> dict[str, dict[str, str]]:
    """The table of AgentSync environments as installed in the package, or from config/."""
    table: Traversable = resources.files("proxy") / ENVIRONMENTS
    if not table.is_file():
        table = Path(__file__).resolve().parent.parent / "config" / ENVIRONMENTS
    return tomllib.loads(table.read_text(encoding="utf-8"))


def _complete(values: dict[str, Any], sources: Mapping[str, str], problems: list[str]) -> list[str]:
    """Fill in the environment table and the fields made of several inputs, check what depends on
    more than one setting (`sources` names where a value with a problem came from); the warnings."""
    environments = load_environments()
    name = values.setdefault("environment", Settings.environment)
    environment = environments.get(name)
    if environment is None:
        known = ", ".join(environments)
        problems.append(f"{sources['environment']}: unknown environment {name!r} (one of {known})")
    else:
        values.setdefault("token_url", environment["token_url"])
        if environment.get("api_base_url"):
            values.setdefault("api_base_url", environment["api_base_url"])
        elif "api_base_url" not in values:
            problems.append(
                f"AGENTSYNC_API_BASE_URL: required for the {name} environment, whose API base"
                " URL is not documented (give --api-base-url)"
            )

    if "client_id" not in values:
        problems.append("AGENTSYNC_CLIENT_ID: required (the OAuth client id AgentSync gave you)")
    warnings: list[str] = []
    secret = values.pop("client_secret", None)
    secret_file: Path | None = values.pop("client_secret_file", None)
    if secret is not None and secret_file is not None:
        problems.append(
            "AGENTSYNC_CLIENT_SECRET and AGENTSYNC_CLIENT_SECRET_FILE are both set: keep one"
        )
    elif secret_file is not None:
        label = sources["client_secret_file"]
        try:
            if not secret_file.read_text(encoding="utf-8").strip():
                problems.append(f"{label}: {secret_file} is empty")
            elif os.stat(secret_file).st_mode & (stat.S_IRGRP | stat.S_IROTH):
                warnings.append(f"{label}: {secret_file} is readable by other users (chmod 600 it)")
        except OSError as exc:
            problems.append(f"{label}: cannot read {secret_file} ({exc.strerror})")
        except UnicodeDecodeError:
            problems.append(f"{label}: {secret_file} is not UTF-8 text")
    elif secret is None:
        problems.append(
            "AGENTSYNC_CLIENT_SECRET: required, or AGENTSYNC_CLIENT_SECRET_FILE"
            " (there is no flag: a secret on a command line is visible to every user)"
        )
    values["client_secret"] = ClientSecret(
        Secret(secret) if secret is not None else None, secret_file
    )

    listen: Listen = values.get("listen", Settings.listen)
    if not is_loopback_host(listen.host) and not values.get("allowed_clients"):
        problems.append(
            f"--listen {listen}: not a loopback address, so --allowed-clients CIDR,... is"
            " required (the proxy lends its credentials to whoever can reach it)"
        )
    workers: int = values.get("workers", Settings.workers)
    if workers > 1 and listen.port == 0:
        problems.append(
            f"{sources['workers']}: {workers} workers must share one port, and --listen"
            f" {listen} would give each its own: name the port"
        )
    cap: int = values.get("token_requests_per_minute", Settings.token_requests_per_minute)
    cap_refused = "token_requests_per_minute" in sources.keys() - values.keys()
    # Each worker holds its own token under cap // workers requests a minute: with more
    # workers than the cap, their shares would add up to more than the cap.
    if workers > cap and not cap_refused:
        problems.append(
            f"{sources['workers']}: {workers} workers need --token-requests-per-minute of at"
            f" least {workers} (one token request a minute each), not {cap}: lower --workers or"
            " raise the cap"
        )
    # One option, two fields: whether API requests are paced at all, and a cap on top of auto.
    values["pacing"], values["api_requests_per_minute"] = values.get(
        "api_requests_per_minute", ("auto", None)
    )
    return warnings
