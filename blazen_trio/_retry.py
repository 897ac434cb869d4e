"""Retry policy: how often a failing step is re-run and how long to wait in between."""

from __future__ import annotations

import math
import random
import typing
from typing import final

import attrs

from ._checks import is_count, is_number_within
from ._errors import ValidationError


def _as_tuple(value: object) -> tuple[type[BaseException], ...]:
    """`retry_on` as a tuple; `RetryPolicy` then checks what it holds, with its other options."""
    items = tuple(value) if isinstance(value, tuple | list | set | frozenset) else (value,)
    return typing.cast(tuple[type[BaseException], ...], items)


def _are_exception_types(types: tuple[object, ...]) -> bool:
    return bool(types) and all(isinstance(t, type) and issubclass(t, Exception) for t in types)


@final
@attrs.frozen
class RetryPolicy:
    """Exponential backoff with jitter; delays use `trio.sleep`, so virtual clocks apply.

    `max_attempts` counts every attempt, the first included: 3 means up to 2 retries.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.25
    retry_on: tuple[type[BaseException], ...] = attrs.field(
        default=(Exception,), converter=_as_tuple
    )

    def __attrs_post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValidationError(f"RetryPolicy: {problem}" for problem in problems)

    def _problems(self) -> list[str]:
        """Every bad option, so one `ValidationError` lists them all."""
        problems = []
        if not is_count(self.max_attempts, 1):
            problems.append(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        for name, delay in (("initial_delay", self.initial_delay), ("max_delay", self.max_delay)):
            if not is_number_within(delay, 0, math.inf):
                problems.append(f"{name} must be a finite number >= 0, got {delay!r}")
        if not is_number_within(self.multiplier, 1, math.inf):
            problems.append(f"multiplier must be a finite number >= 1, got {self.multiplier!r}")
        if not is_number_within(self.jitter, 0, 1):
            problems.append(f"jitter must be a number within [0, 1], got {self.jitter!r}")
        if not _are_exception_types(self.retry_on):
            problems.append(f"retry_on must be Exception subclasses, got {self.retry_on!r}")
        return problems

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether the failed `attempt` (1-based) is followed by another."""
        return attempt < self.max_attempts and isinstance(error, self.retry_on)

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before `attempt` (2-based: the first retry is attempt 2)."""
        base = min(self.initial_delay * self.multiplier ** (attempt - 2), self.max_delay)
        spread = base * self.jitter
        return max(0.0, base + random.uniform(-spread, spread))
