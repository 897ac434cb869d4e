"""A workflow that a test pauses in one process and `resume_child.py` resumes in another.

Both processes import it as `_process_workflow` (the tests directory on `sys.path`), so its
event type ids and its value classes resolve the same on both sides.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
from collections.abc import Awaitable, Callable

import blazen_trio as bz

PARTS = 3
WHEN = dt.datetime(2024, 6, 1, 12, 30, tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True)
class Budget:
    """A state value the codec stores by type (`module:QualName`)."""

    limit: decimal.Decimal
    tags: frozenset[str]


class Part(bz.Event):
    index: int


class PartDone(bz.Event):
    index: int
    value: int


class Progress(bz.Event):
    index: int


async def _no_hold(index: int) -> None:
    pass


hold: Callable[[int], Awaitable[None]] = _no_hold
"""Awaited by `work` before it works; the pausing test holds one part back with it."""


@bz.step
async def start(ctx: bz.Context, ev: bz.StartEvent) -> list[Part | bz.InputRequestEvent]:
    ctx.set("when", WHEN)
    ctx.set("budget", Budget(decimal.Decimal("12.50"), frozenset({"a", "b"})))
    ctx.set("seen", set())
    ctx.emit_usage(bz.UsageEvent(prompt_tokens=10, completion_tokens=5, total_tokens=15))
    parts: list[Part | bz.InputRequestEvent] = [Part(index=i) for i in range(PARTS)]
    return [*parts, bz.InputRequestEvent(prompt="approve?", request_id=f"approve-{ev.data}")]


@bz.step
async def work(ctx: bz.Context, ev: Part) -> PartDone:
    ctx.write_event_to_stream(Progress(index=ev.index))
    await hold(ev.index)
    ctx.set(f"part{ev.index}", ev.index * 10)
    return PartDone(index=ev.index, value=ev.index * 10)


@bz.step
async def join(ctx: bz.Context, ev: PartDone | bz.InputResponseEvent) -> bz.StopEvent | None:
    got = ctx.collect_events(ev, [*([PartDone] * PARTS), bz.InputResponseEvent])
    if got is None:
        return None
    answer = got[-1]
    assert isinstance(answer, bz.InputResponseEvent)
    budget = ctx.get("budget")
    return bz.StopEvent(
        result={
            "values": sorted(d.value for d in got if isinstance(d, PartDone)),
            "answer": answer.response,
            "when": ctx.get("when").isoformat(),
            "budget": [str(budget.limit), sorted(budget.tags), type(budget).__name__],
            "state": sorted(ctx.keys()),
        }
    )


WORKFLOW = bz.Workflow("cross-process", [start, work, join])
