"""A durable parent with sub-workflows that a child process runs until SIGKILL.

The parent runs child `a`, then children `b`, `c`, `d` two at a time; every step of every run
appends its idempotency key to an effects file. Imported by tests/crash_child.py and
tests/test_crash.py (the tests directory on `sys.path`).
"""

from __future__ import annotations

from typing import Any

import trio

import blazen_trio as bz

STEP_SECONDS = 0.02
EXPECTED = [23, 25, 27]


class Doubled(bz.Event, type_id="crashfamily.Doubled"):
    n: int


class Joined(bz.Event, type_id="crashfamily.Joined"):
    n: int


async def effect(ctx: bz.Context, path: str) -> None:
    async with await trio.Path(path).open("a") as log:
        await log.write(f"{ctx.idempotency_key}\n")


@bz.step
async def double(ctx: bz.Context, ev: bz.StartEvent) -> Doubled:
    ctx.set("effects", ev.data["effects"])
    await trio.sleep(STEP_SECONDS)
    await effect(ctx, ev.data["effects"])
    return Doubled(n=ev.data["n"] * 2)


@bz.step
async def add(ctx: bz.Context, ev: Doubled) -> bz.StopEvent:
    await trio.sleep(STEP_SECONDS)
    await effect(ctx, ctx.get("effects"))
    return bz.StopEvent(result=ev.n + 1)


CHILD = bz.Workflow("crash-child", [double, add])


@bz.step
async def first(ctx: bz.Context, ev: bz.StartEvent) -> Joined:
    effects = ev.data["effects"]
    ctx.set("effects", effects)
    await effect(ctx, effects)
    result = await ctx.run_workflow(CHILD, {"n": ev.data["n"], "effects": effects})
    return Joined(n=result.result)


@bz.step
async def fan(ctx: bz.Context, ev: Joined) -> bz.StopEvent:
    effects = ctx.get("effects")
    await effect(ctx, effects)
    inputs = [{"n": ev.n + k, "effects": effects} for k in range(3)]
    results = await ctx.run_workflows([(CHILD, i) for i in inputs], max_concurrency=2)
    return bz.StopEvent(result=[r.result for r in results])


def workflow(store: bz.CheckpointStore) -> bz.Workflow:
    return bz.Workflow("crash-family", [first, fan], checkpoint_store=store)


async def run_to_the_end(
    store: bz.CheckpointStore, run_id: str, effects: str, on_commit: Any = None
) -> bz.WorkflowResult:
    """Start or attach to `run_id` and run it to its end."""
    return await workflow(store).run(
        {"n": 5, "effects": effects}, run_id=run_id, on_commit=on_commit
    )
