"""A parent with sub-workflows that a test pauses in one process and another process resumes.

Both processes import it as `_family_workflow` (the tests directory on `sys.path`). Every step
counts its committed executions into state, and the children put their state in their result,
so the final result shows the final state of the parent and of every child.
"""

from __future__ import annotations

import trio

import blazen_trio as bz


class Doubled(bz.Event, type_id="family.Doubled"):
    n: int
    seconds: float


class Waited(bz.Event, type_id="family.Waited"):
    n: int


class Joined(bz.Event, type_id="family.Joined"):
    n: int


@bz.step
async def double(ctx: bz.Context, ev: bz.StartEvent) -> Doubled:
    ctx.set("double", ctx.get("double", 0) + 1)
    ctx.emit_usage(bz.UsageEvent(total_tokens=1))
    return Doubled(n=ev.data["n"] * 2, seconds=ev.data["seconds"])


@bz.step
async def wait(ctx: bz.Context, ev: Doubled) -> Waited:
    await trio.sleep(ev.seconds)
    ctx.set("wait", ctx.get("wait", 0) + 1)
    return Waited(n=ev.n)


@bz.step
async def add(ctx: bz.Context, ev: Waited) -> bz.StopEvent:
    ctx.set("add", ctx.get("add", 0) + 1)
    names = ctx.keys()  # Context.keys(): the state's keys (a Context is not a mapping)
    return bz.StopEvent(result={"n": ev.n + 1, "state": {k: ctx.get(k) for k in names}})


CHILD = bz.Workflow("family-child", [double, wait, add])


def _child_input(n: int, delay: float) -> dict[str, float]:
    return {"n": n, "seconds": delay}


@bz.step
async def first(ctx: bz.Context, ev: bz.StartEvent) -> Joined:
    ctx.set("first", ctx.get("first", 0) + 1)
    result = await ctx.run_workflow(CHILD, _child_input(ev.data, 5))
    return Joined(n=result.result["n"])


@bz.step
async def fan(ctx: bz.Context, ev: Joined) -> bz.StopEvent:
    ctx.set("fan", ctx.get("fan", 0) + 1)
    results = await ctx.run_workflows(
        [(CHILD, _child_input(ev.n + k, 3 + k)) for k in range(3)], max_concurrency=2
    )
    return bz.StopEvent(result=[r.result for r in results])


FAMILY = bz.Workflow("family", [first, fan])
