"""`RetryPolicy` refuses bad options with one `ValidationError`, like every definition option."""

from __future__ import annotations

import math
from typing import Any

import pytest

import blazen_trio as bz

BAD_OPTIONS = [
    ("max_attempts", "3"),
    ("max_attempts", None),
    ("max_attempts", 2.5),
    ("max_attempts", True),
    ("max_attempts", 0),
    ("initial_delay", math.nan),
    ("initial_delay", math.inf),
    ("initial_delay", -1.0),
    ("initial_delay", "1"),
    ("initial_delay", None),
    ("max_delay", math.nan),
    ("max_delay", math.inf),
    ("max_delay", -0.5),
    ("multiplier", math.nan),
    ("multiplier", math.inf),
    ("multiplier", 0.5),
    ("multiplier", -2),
    ("multiplier", "2"),
    ("jitter", math.nan),
    ("jitter", math.inf),
    ("jitter", -0.1),
    ("jitter", 1.5),
    ("jitter", None),
    ("retry_on", "ValueError"),
    ("retry_on", ()),
    ("retry_on", (ValueError, 3)),
    ("retry_on", KeyboardInterrupt),
    ("retry_on", int),
]


@pytest.mark.parametrize(("field", "value"), BAD_OPTIONS)
def test_a_bad_option_is_a_validation_error_naming_it(field: str, value: Any) -> None:
    options: dict[str, Any] = {field: value}
    with pytest.raises(bz.ValidationError) as caught:
        bz.RetryPolicy(**options)
    [problem] = caught.value.problems
    assert problem.startswith(f"RetryPolicy: {field} must be ")
    assert repr(value) in problem


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(bz.ValidationError) as caught:
        bz.RetryPolicy(
            max_attempts="3",  # type: ignore[arg-type]  # the point of the test
            initial_delay=math.nan,
            max_delay=-1,
            multiplier=math.inf,
            jitter=2,
            retry_on="ValueError",
        )
    fields = [problem.split()[1] for problem in caught.value.problems]
    assert fields == [
        "max_attempts",
        "initial_delay",
        "max_delay",
        "multiplier",
        "jitter",
        "retry_on",
    ]


def test_the_edges_of_every_range_are_accepted() -> None:
    policy = bz.RetryPolicy(
        max_attempts=1, initial_delay=0, max_delay=0, multiplier=1, jitter=1, retry_on=[KeyError]
    )
    assert policy.retry_on == (KeyError,)
    assert policy.delay_before(2) == 0.0
    assert bz.RetryPolicy(jitter=0.0).jitter == 0.0
