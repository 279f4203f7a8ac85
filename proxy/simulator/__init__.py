"""A faithful in-process stand-in for AgentSync's token endpoint and APIs, for demos and tests."""

from .app import create_app
from .config import SimulatorConfig
from .state import SIMULATOR_STATE, SimulatorState

__all__ = ["SIMULATOR_STATE", "SimulatorConfig", "SimulatorState", "create_app"]
