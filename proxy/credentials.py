"""Values that must never be printed: the client secret and access tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class Secret:
    """A string that shows as asterisks in `repr`, `str` and f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class ClientSecret:
    """The client secret, given directly or as a file that is re-read at every token request."""

    value: Secret | None = None
    file: Path | None = None

    def read(self) -> Secret:
        if self.file is None:
            assert self.value is not None
            return self.value
        return Secret(self.file.read_text(encoding="utf-8").strip())
