"""Settings of one simulated AgentSync client: its credentials, grant, token and API policy."""

from __future__ import annotations

from dataclasses import dataclass, field

from yarl import URL

DEFAULT_API_REQUESTS_PER_MINUTE = 300


def public_url_problem(text: str) -> str | None:
    """Why `text` cannot be the simulator's public URL, or None when it can."""
    if "@" in text:
        # Not echoed: what precedes the '@' may be a real password.
        return "the URL must not carry a user name or password"
    try:
        # Links are built by appending to this text, so it must already be a clean URL.
        url = URL(text) if text.isascii() and text.isprintable() and " " not in text else None
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        return f"{text!r} is not an http:// or https:// URL with a host"
    if "?" in text or "#" in text:
        return f"{text!r} must not have a query or a fragment"
    return None


@dataclass(frozen=True)
class SimulatorConfig:
    """The one client the simulator knows; the secret stays out of `repr`."""

    client_id: str = "demo-client"
    client_secret: str = field(default="demo-secret", repr=False)
    # No delete scope by default, so the demo can show a scope refusal.
    scopes: tuple[str, ...] = ("rino_api_agency_read", "rino_api_agency_write")
    token_lifetime: float = 3600.0
    token_requests_per_minute: int = 200
    api_requests_per_minute: int = DEFAULT_API_REQUESTS_PER_MINUTE
    # The origin (and optional base path) absolute links point at; None: the address the
    # request came in on, which is the simulator's own listening address.
    public_url: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if not self.client_id:
            problems.append("client_id must not be empty")
        if not self.client_secret:
            problems.append("client_secret must not be empty")
        if self.token_lifetime <= 0:
            problems.append("token_lifetime must be positive")
        if self.token_requests_per_minute < 1:
            problems.append("token_requests_per_minute must be at least 1")
        if self.api_requests_per_minute < 1:
            problems.append("api_requests_per_minute must be at least 1")
        if self.public_url is not None and (problem := public_url_problem(self.public_url)):
            problems.append(f"public_url: {problem}")
        if problems:
            raise ValueError("; ".join(problems))
