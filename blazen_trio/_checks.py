"""Argument checks shared by every definition-time validation."""

from __future__ import annotations

import math


def is_count(value: object, minimum: int) -> bool:
    """An int (not a bool) of at least `minimum`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_optional_duration(value: object) -> bool:
    """None, or a number of seconds > 0."""
    if value is None:
        return True
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def is_number_within(value: object, low: float, high: float) -> bool:
    """A finite int or float (not a bool) with `low <= value <= high`: NaN and inf never pass."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return math.isfinite(value) and low <= value <= high
