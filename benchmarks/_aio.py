"""asyncio helpers for the peer drivers (stdlib only: they run in the peers' own venvs)."""

import asyncio
import importlib.metadata
import json
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from benchmarks._measure import Job, Metrics, Prepare, emit, measure_job


def timed(coro_fn: Callable[[], Coroutine[Any, Any, object]]) -> Callable[[], Metrics]:
    """A round that times one fresh event loop's run of `coro_fn` (loop setup excluded)."""

    async def one_round() -> Metrics:
        started = time.perf_counter()
        await coro_fn()
        return {"time": time.perf_counter() - started}

    return lambda: asyncio.run(one_round())


def answer(
    scenarios: dict[str, Prepare],
    distribution: str,
    unsupported: dict[str, str] | None = None,
    extra: Callable[[], dict[str, object]] | None = None,
) -> None:
    """A peer driver's `main`: measure the job given as `argv[1]`, print one JSON answer.

    The answer carries the installed version of `distribution` and whatever `extra()` adds
    once the job is measured (the settings a durable peer used); a scenario the peer has no
    equivalent for answers `unsupported` with the reason.
    """
    job: Job = json.loads(sys.argv[1])
    scenario = job["scenario"]
    reply: dict[str, object] = {"version": importlib.metadata.version(distribution)}
    if scenario in scenarios:
        reply.update(measure_job(scenarios[scenario], job, scenario))
    else:
        reply["unsupported"] = (unsupported or {}).get(scenario, f"no {scenario} scenario")
    if extra is not None:
        reply.update(extra())
    emit(reply)
