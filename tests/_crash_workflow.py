"""A durable workflow a child process runs until the test kills it with SIGKILL.

Fan-out, a bounded step, collect fan-in, a retried step, state, a session ref under
PICKLE_OR_ERROR and an input request. Every step execution appends its idempotency key to an
effects file (real side effects), so the test sees which executions ran more than once.
Imported as `_crash_workflow` by both processes (the tests directory on `sys.path`).
"""

from __future__ import annotations

from typing import Any

import trio

import blazen_trio as bz

STEP_SECONDS = 0.02
REQUEST_ID = "approve"
EXPECTED = {"squares": [0, 1, 4, 9], "answer": "yes", "ref": "kept", "attempts": 2}


class Item(bz.Event, type_id="crash.Item"):
    n: int


class Done(bz.Event, type_id="crash.Done"):
    n: int


class Holder:
    """Picklable: a live object the run keeps as a session ref across the crash."""

    def __init__(self, label: str) -> None:
        self.label = label


async def effect(ctx: bz.Context) -> None:
    """Record one real side effect of this execution, keyed as the engine keys it."""
    async with await trio.Path(ctx.get("effects")).open("a") as log:
        await log.write(f"{ctx.idempotency_key}\n")


@bz.step
async def fan(ctx: bz.Context, ev: bz.StartEvent) -> list[Item]:
    ctx.set("effects", ev.data["effects"])
    await effect(ctx)
    ctx.set("holder", ctx.refs.insert(Holder("kept"), lifetime=bz.RefLifetime.UNTIL_RUN_END).key)
    return [Item(n=n) for n in range(4)]


@bz.step(max_concurrency=2)
async def work(ctx: bz.Context, ev: Item) -> Done:
    await trio.sleep(STEP_SECONDS)
    await effect(ctx)
    ctx.set(f"square{ev.n}", ev.n * ev.n)
    return Done(n=ev.n)


@bz.step
async def join(ctx: bz.Context, ev: Done) -> bz.InputRequestEvent | None:
    await effect(ctx)
    if ctx.collect_events(ev, [Done] * 4) is None:
        return None
    return bz.InputRequestEvent(prompt="ship it?", request_id=REQUEST_ID)


@bz.step(retry=bz.RetryPolicy(max_attempts=3, initial_delay=STEP_SECONDS, jitter=0))
async def finish(ctx: bz.Context, ev: bz.InputResponseEvent) -> bz.StopEvent:
    await trio.sleep(STEP_SECONDS)
    await effect(ctx)
    if ctx.attempt == 1:
        raise ConnectionError("the first attempt always fails")
    squares = [ctx.get(f"square{n}") for n in range(4)]
    holder = ctx.refs.get(ctx.get("holder"))
    return bz.StopEvent(
        result={
            "squares": squares,
            "answer": ev.response,
            "ref": holder.label,
            "attempts": ctx.attempt,
        }
    )


def workflow(store: bz.CheckpointStore) -> bz.Workflow:
    return bz.Workflow("crash", [fan, work, join, finish], checkpoint_store=store)


async def run_to_the_end(
    store: bz.CheckpointStore, run_id: str, effects: str, on_commit: Any = None
) -> bz.WorkflowResult:
    """Start or attach to `run_id`, answering its input request whenever it suspends."""
    wf = workflow(store)
    while True:
        try:
            return await wf.run({"effects": effects}, run_id=run_id, on_commit=on_commit)
        except bz.RunSuspended:
            await store.respond(run_id, REQUEST_ID, "yes")
