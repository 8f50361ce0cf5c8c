"""Turning an exception into the one line a user reads."""

from __future__ import annotations


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of an exception's message, or its type's name when it has none (an EOFError, a
    bare RecursionError); cut to `limit` characters."""
    line = next((part.strip() for part in str(err).splitlines() if part.strip()), type(err).__name__)
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."
