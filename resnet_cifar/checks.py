"""Small checks every layer shares (the library, training, the Space): how an error echoes a value, and whole
numbers in a range. No torch, no Hub: importing this costs nothing."""

from __future__ import annotations

import math
import numbers
from typing import Any


def short(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters: errors echo what they got, never a whole payload."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def whole_number(value: Any, name: str, low: int, high: int) -> int:
    """`value` as an int in [low, high]; 3 and 3.0 pass, 2.5, True, "3", NaN and None do not (ValueError)."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
          and float(value).is_integer() and low <= value <= high)
    if not ok:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {short(value)}")
    return int(value)
