"""Settings of one simulated AgentSync client: its credentials, grant and token policy."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SimulatorConfig:
    """The one client the simulator knows; the secret stays out of `repr`."""

    client_id: str = "demo-client"
    client_secret: str = field(default="demo-secret", repr=False)
    # No delete scope by default, so the demo can show a scope refusal.
    scopes: tuple[str, ...] = ("rino_api_agency_read", "rino_api_agency_write")
    token_lifetime: float = 3600.0
    token_requests_per_minute: int = 200

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
        if problems:
            raise ValueError("; ".join(problems))
