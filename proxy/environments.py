"""The table of AgentSync environments (config/environments.toml), shipped inside the wheel."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

TABLE_NAME = "environments.toml"


@dataclass(frozen=True)
class Environment:
    name: str
    token_url: str
    api_base_url: str | None


def table_text() -> str:
    """The table as installed in the package, or from the source tree's config/ folder."""
    packaged = resources.files("proxy").joinpath(TABLE_NAME)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    source_tree = Path(__file__).resolve().parent.parent / "config" / TABLE_NAME
    return source_tree.read_text(encoding="utf-8")


def load_environments() -> dict[str, Environment]:
    table = tomllib.loads(table_text())
    return {
        name: Environment(name, row["token_url"], row.get("api_base_url"))
        for name, row in table.items()
    }
