"""agentsync-proxy: an authenticating reverse proxy for AgentSync's APIs."""

__version__ = "0.1.0"
