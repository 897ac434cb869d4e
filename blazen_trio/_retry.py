"""Retry policy: how often a failing step is re-run and how long to wait in between."""

from __future__ import annotations

import random
import typing
from typing import final

import attrs

from ._errors import ValidationError


def _exception_types(value: object) -> tuple[type[BaseException], ...]:
    types: tuple[object, ...]
    if isinstance(value, type):
        types = (value,)
    elif isinstance(value, tuple | list | set | frozenset):
        types = tuple(value)
    else:
        types = ()
    if not types or not all(isinstance(t, type) and issubclass(t, Exception) for t in types):
        raise ValidationError([f"RetryPolicy.retry_on must be Exception subclasses, got {value!r}"])
    return typing.cast(tuple[type[BaseException], ...], types)


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
        default=(Exception,), converter=_exception_types
    )

    def __attrs_post_init__(self) -> None:
        problems = []
        if self.max_attempts < 1:
            problems.append(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_delay < 0 or self.max_delay < 0:
            problems.append("initial_delay and max_delay must be >= 0")
        if self.multiplier < 1:
            problems.append(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            problems.append(f"jitter must be within [0, 1], got {self.jitter}")
        if problems:
            raise ValidationError(f"RetryPolicy: {problem}" for problem in problems)

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether the failed `attempt` (1-based) is followed by another."""
        return attempt < self.max_attempts and isinstance(error, self.retry_on)

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before `attempt` (2-based: the first retry is attempt 2)."""
        base = min(self.initial_delay * self.multiplier ** (attempt - 2), self.max_delay)
        spread = base * self.jitter
        return max(0.0, base + random.uniform(-spread, spread))
