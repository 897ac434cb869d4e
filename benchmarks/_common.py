"""Trio helpers shared by the floor and the engine scenarios, so both are driven identically."""

import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
import trio

from benchmarks._measure import Job, Metrics, TimedOut, remaining_s, rss_kib

T = TypeVar("T")

WARM_RUNS = 100
"""Runs done before the memory baseline, so one-time allocations are not charged per run."""


def run_trio(async_fn: Callable[..., Awaitable[T]], *args: object) -> T:
    """`trio.run(async_fn, *args)` cut off at the job's deadline (`TimedOut`).

    In-process jobs have no subprocess timeout, so this is what stops a quadratic engine.
    """
    limit = max(remaining_s(), 0.0)

    async def bounded() -> T:
        with trio.fail_after(limit):
            return await async_fn(*args)

    try:
        return trio.run(bounded)
    except trio.TooSlowError:
        raise TimedOut from None


def count(job: Job, name: str) -> int:
    """A job parameter that must be an int (the JSON job is untyped)."""
    value = job[name]
    if not isinstance(value, int):
        raise TypeError(f"job parameter {name!r} must be an int, got {value!r}")
    return value


def in_fresh_loop(async_fn: Callable[[], Awaitable[Metrics]]) -> Callable[[], Metrics]:
    """A round function running `async_fn` in its own `trio.run`, like one program run."""
    return lambda: run_trio(async_fn)


def timed(async_fn: Callable[[], Awaitable[object]]) -> Callable[[], Metrics]:
    """A round whose figure is the wall time of `async_fn`, loop start-up excluded."""

    async def one_round() -> Metrics:
        started = time.perf_counter()
        await async_fn()
        return {"time": time.perf_counter() - started}

    return in_fresh_loop(one_round)


@attrs.define(eq=False)
class Gate:
    """Where parked steps wait: `all_in` fires once `target` have arrived, `open` frees them."""

    target: int
    arrived: int = 0
    all_in: trio.Event = attrs.field(factory=trio.Event)
    open: trio.Event = attrs.field(factory=trio.Event)

    async def arrive_and_wait(self) -> None:
        self.arrived += 1
        if self.arrived == self.target:
            self.all_in.set()
        await self.open.wait()


async def idle_run_kib(
    n: int,
    warm: Callable[[int], Awaitable[object]],
    parked_run: Callable[[Gate], Callable[[], Awaitable[object]]],
) -> float:
    """RSS growth per run while `n` runs are parked in their step at once, in KiB.

    Run it first in a fresh process: other scenarios' garbage would blur the figure.
    """
    await warm(min(WARM_RUNS, n))
    gc.collect()
    baseline = rss_kib()
    gate = Gate(n)
    run = parked_run(gate)
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(run)
        await gate.all_in.wait()
        peak = rss_kib()
        gate.open.set()
    return (peak - baseline) / n


def runs_scenario(
    n: int,
    concurrent_runs: Callable[[int], Awaitable[object]],
    parked_run: Callable[[Gate], Callable[[], Awaitable[object]]],
) -> Callable[[], Metrics]:
    """Scenario 3 for one engine: memory probe first (fresh process), then timed rounds."""
    kib = run_trio(idle_run_kib, n, concurrent_runs, parked_run)
    timed_round = timed(lambda: concurrent_runs(n))
    return lambda: {**timed_round(), "kib_per_idle_run": kib}


def with_plain(
    trio_round: Callable[[], Metrics], plain: Callable[[], object]
) -> Callable[[], Metrics]:
    """A floor round that also times `plain`, the same work as a plain loop (`plain_time`)."""

    def one_round() -> Metrics:
        metrics = trio_round()
        started = time.perf_counter()
        plain()
        return {**metrics, "plain_time": time.perf_counter() - started}

    return one_round


CODEC_REPEATS = 7
"""Encode/decode pairs per round: one pair takes milliseconds, so a collection landing in it
would be most of the figure; each half is the median of these."""


def codec_metrics(
    name: str, encode: Callable[[], bytes], decode: Callable[[bytes], object]
) -> Metrics:
    """Encode then decode, `CODEC_REPEATS` times: the median time of each half, their sum,
    and the encoded size."""
    encodes, decodes = [], []
    for _ in range(CODEC_REPEATS):
        started = time.perf_counter()
        encoded = encode()
        encoded_at = time.perf_counter()
        decode(encoded)
        encodes.append(encoded_at - started)
        decodes.append(time.perf_counter() - encoded_at)
    encode_time, decode_time = statistics.median(encodes), statistics.median(decodes)
    return {
        f"{name}_enc": encode_time,
        f"{name}_dec": decode_time,
        f"{name}_time": encode_time + decode_time,
        f"{name}_bytes": float(len(encoded)),
    }
