"""Pieces of the scenarios' own work that every engine shares (stdlib only: peers import it)."""

import functools

YIELD_EVERY = 64
"""The streaming producer yields to the scheduler every this many events (in every engine)."""


@functools.cache
def expected(event_type: type, n: int) -> list[type]:
    """The fan-in's `[Done] * n`, built once per size instead of on every `collect_events` call.

    Building it per call makes a fan-out of n events cost O(n^2) in the benchmark itself. The
    list is shared: the engines only read it.
    """
    return [event_type] * n
