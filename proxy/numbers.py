"""Whole numbers read from text (settings, headers, variables): ASCII digits only, as int() also
reads other scripts' digits ('١٢' is 12), and '²' passes str.isdigit() but fails int()."""

from __future__ import annotations

MAX_DIGITS = 18  # fits in 64 bits; int() refuses numbers of more than 4,300 digits anyway


def whole_number(text: str) -> int | None:
    """The number `text` spells in ASCII digits, or None."""
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > MAX_DIGITS:
        return None
    return int(text)
