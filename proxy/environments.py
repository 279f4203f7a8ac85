"""The table of AgentSync environments (config/environments.toml), shipped inside the wheel."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

TABLE_NAME = "environments.toml"


@dataclass(frozen=True)
class Environment:
    token_url: str
    api_base_url: str | None


def load_environments() -> dict[str, Environment]:
    """The table as installed in the package, or from the source tree's config/ folder."""
    table: Traversable = resources.files("proxy") / TABLE_NAME
    if not table.is_file():
        table = Path(__file__).resolve().parent.parent / "config" / TABLE_NAME
    rows = tomllib.loads(table.read_text(encoding="utf-8"))
    return {
        name: Environment(row["token_url"], row.get("api_base_url")) for name, row in rows.items()
    }
