"""`max_concurrency`: the exact bound, FIFO queueing; and many runs of one workflow at once."""

from __future__ import annotations

import math
from typing import cast

import pytest
import trio
import trio.lowlevel
import trio.testing

import blazen_trio as bz
from blazen_trio._run import IDLE_WORKERS


class Item(bz.Event):
    index: int


class Done(bz.Event):
    index: int


class Other(bz.Event):
    index: int


class Value(bz.Event):
    value: int


def collect_all(count: int) -> bz.StepSpec:
    """A fan-in step that ends the run once `count` Done events arrived."""

    @bz.step
    async def collect(ctx: bz.Context, ev: Done) -> bz.StopEvent | None:
        done = ctx.collect_events(ev, [Done] * count)
        if done is None:
            return None
        return bz.StopEvent(result=sorted(cast(Done, d).index for d in done))

    return collect


@pytest.mark.parametrize("limit", [1, 2, 3, 5, None])
async def test_peak_concurrency_is_exactly_the_limit(
    autojump_clock: trio.testing.MockClock, limit: int | None
) -> None:
    items = 10
    active = 0
    peak = 0

    @bz.step
    async def fan_out(ev: bz.StartEvent) -> list[Item]:
        return [Item(index=i) for i in range(items)]

    @bz.step(max_concurrency=limit)
    async def work(ev: Item) -> Done:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await trio.sleep(1)
        finally:
            active -= 1
        return Done(index=ev.index)

    start = trio.current_time()
    result = await bz.Workflow("peak", [fan_out, work, collect_all(items)]).run()
    assert result.result == list(range(items))
    assert peak == (limit or items)
    # The limit is used fully: ceil(items / limit) rounds of one second each.
    assert trio.current_time() - start == pytest.approx(math.ceil(items / (limit or items)))


async def test_queued_invocations_run_in_fifo_order() -> None:
    order: list[int] = []

    @bz.step
    async def fan_out(ev: bz.StartEvent) -> list[Item]:
        return [Item(index=i) for i in range(8)]

    @bz.step(max_concurrency=1)
    async def work(ev: Item) -> Done:
        order.append(ev.index)
        await trio.lowlevel.checkpoint()
        return Done(index=ev.index)

    result = await bz.Workflow("fifo", [fan_out, work, collect_all(8)]).run()
    assert result.result == list(range(8))
    assert order == list(range(8))


async def test_queue_order_is_commit_order_across_steps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    order: list[int] = []

    @bz.step
    async def fan_out(ev: bz.StartEvent) -> list[Item | Other]:
        return [Other(index=0), Item(index=0)]

    @bz.step
    async def later(ev: Other) -> list[Item]:
        await trio.sleep(1)  # commits its items after `early` did
        return [Item(index=i) for i in (4, 5, 6)]

    @bz.step
    async def early(ev: Item) -> list[Item] | None:
        if ev.index == 0:
            return [Item(index=i) for i in (1, 2, 3)]
        return None

    @bz.step(max_concurrency=1)
    async def work(ev: Item) -> Done:
        order.append(ev.index)
        await trio.sleep(10)  # everything is queued long before the first one finishes
        return Done(index=ev.index)

    await bz.Workflow("commit_order", [fan_out, later, early, work, collect_all(7)]).run()
    assert order == [0, 1, 2, 3, 4, 5, 6]


async def test_limits_are_per_step(autojump_clock: trio.testing.MockClock) -> None:
    active = 0
    peak = 0

    @bz.step
    async def fan_out(ev: bz.StartEvent) -> list[Item | Other]:
        return [Item(index=0), Item(index=1), Other(index=2), Other(index=3)]

    async def busy(index: int) -> Done:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await trio.sleep(1)
        active -= 1
        return Done(index=index)

    @bz.step(max_concurrency=1)
    async def items(ev: Item) -> Done:
        return await busy(ev.index)

    @bz.step(max_concurrency=1)
    async def others(ev: Other) -> Done:
        return await busy(ev.index)

    result = await bz.Workflow("per_step", [fan_out, items, others, collect_all(4)]).run()
    assert result.result == [0, 1, 2, 3]
    assert peak == 2


async def test_limits_are_per_run(autojump_clock: trio.testing.MockClock) -> None:
    inside = 0
    both_inside = trio.Event()

    @bz.step(max_concurrency=1)
    async def gate(ev: bz.StartEvent) -> bz.StopEvent:
        nonlocal inside
        inside += 1
        if inside == 2:
            both_inside.set()
        await both_inside.wait()  # would never return if the runs shared one limiter
        return bz.StopEvent(result=ev.data)

    wf = bz.Workflow("per_run", [gate])
    results: dict[int, object] = {}

    async def run_one(n: int) -> None:
        results[n] = (await wf.run(n)).result

    with trio.fail_after(10):  # virtual time: a deadlock fails fast
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_one, 1)
            nursery.start_soon(run_one, 2)
    assert results == {1: 1, 2: 2}


async def test_a_thousand_concurrent_runs_each_get_their_own_result() -> None:
    @bz.step
    async def parse(ctx: bz.Context, ev: bz.StartEvent) -> Value:
        ctx.set("input", ev.data)
        await trio.lowlevel.checkpoint()
        return Value(value=ev.data * 3)

    @bz.step(max_concurrency=2)
    async def add(ctx: bz.Context, ev: Value) -> bz.StopEvent:
        await trio.lowlevel.checkpoint()
        return bz.StopEvent(result=(ctx.get("input"), ev.value + 1, ctx.run_id))

    wf = bz.Workflow("many", [parse, add])
    results: dict[int, tuple[int, int, str]] = {}

    async def run_one(n: int) -> None:
        result = await wf.run(n)
        assert result.result[2] == result.run_id
        results[n] = result.result

    async with trio.open_nursery() as nursery:
        for n in range(1000):
            nursery.start_soon(run_one, n)

    assert sorted(results) == list(range(1000))
    assert all(results[n][:2] == (n, n * 3 + 1) for n in range(1000))
    assert len({run_id for _, _, run_id in results.values()}) == 1000


@pytest.mark.parametrize("blocking_first", [True, False])
async def test_a_stop_from_one_start_step_cancels_the_other_wherever_it_runs(
    blocking_first: bool, autojump_clock: trio.testing.MockClock
) -> None:
    """The run's own task works on the first ready invocation; a StopEvent from a worker
    task must still cancel it (and the other way round)."""
    cancelled = trio.Event()

    @bz.step
    async def blocks(ev: bz.StartEvent) -> bz.StopEvent:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    @bz.step
    async def stops(ev: bz.StartEvent) -> bz.StopEvent:
        await trio.sleep(1)
        return bz.StopEvent(result="stopped")

    steps = [blocks, stops] if blocking_first else [stops, blocks]
    with trio.fail_after(60):
        result = await bz.Workflow("two-starts", steps).run()
    assert result.result == "stopped"
    assert cancelled.is_set()


async def test_a_bounded_steps_items_reuse_a_pool_of_workers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """100 items at max_concurrency=4 are worked by a few tasks, not a task each."""
    items, workers = 100, set()

    @bz.step
    async def fan_out(ev: bz.StartEvent) -> list[Item]:
        return [Item(index=i) for i in range(items)]

    @bz.step(max_concurrency=4)
    async def work(ev: Item) -> Done:
        workers.add(trio.lowlevel.current_task())
        await trio.sleep(1)
        return Done(index=ev.index)

    result = await bz.Workflow("pool", [fan_out, work, collect_all(items)]).run()
    assert result.result == list(range(items))
    assert len(workers) <= 5  # the four at work, and one that also fanned in


async def test_at_most_a_few_workers_stay_idle(autojump_clock: trio.testing.MockClock) -> None:
    """After 100 parallel invocations end, the run keeps only IDLE_WORKERS of their tasks."""
    items = 100
    last = trio.Event()
    tasks_left: list[int] = []

    @bz.step
    async def fan_out(ev: bz.StartEvent) -> list[Item | Other]:
        return [*(Item(index=i) for i in range(items)), Other(index=0)]

    @bz.step
    async def work(ev: Item) -> Done:
        await trio.sleep(1)
        return Done(index=ev.index)

    @bz.step
    async def count_tasks(ev: Done) -> Value | None:
        return Value(value=0) if ev.index == items - 1 else None

    @bz.step
    async def watch(ev: Value) -> None:
        last.set()

    @bz.step
    async def stop_later(ev: Other) -> bz.StopEvent:
        await last.wait()
        await trio.testing.wait_all_tasks_blocked()
        nursery = trio.lowlevel.current_task().parent_nursery
        assert nursery is not None
        tasks_left.append(len(nursery.child_tasks))
        return bz.StopEvent()

    steps = [fan_out, work, count_tasks, watch, stop_later]
    await bz.Workflow("idle", steps).run()
    # This step's own task and the idle workers (the run's own task may be one of them).
    assert len(tasks_left) == 1
    assert IDLE_WORKERS <= tasks_left[0] <= IDLE_WORKERS + 1


async def test_idle_workers_take_the_next_wave_of_work(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A second wave of parallel invocations runs on the tasks the first wave left idle."""
    first_wave: set[trio.lowlevel.Task] = set()
    second_wave: set[trio.lowlevel.Task] = set()

    @bz.step
    async def fan_out(ev: bz.StartEvent) -> list[Item]:
        return [Item(index=i) for i in range(8)]

    @bz.step
    async def work(ev: Item) -> Done:
        first_wave.add(trio.lowlevel.current_task())
        await trio.sleep(1)
        return Done(index=ev.index)

    @bz.step
    async def fan_again(ctx: bz.Context, ev: Done) -> list[Value] | None:
        if ctx.collect_events(ev, [Done] * 8) is None:
            return None
        return [Value(value=i) for i in range(8)]

    @bz.step
    async def again(ev: Value) -> Other:
        second_wave.add(trio.lowlevel.current_task())
        await trio.sleep(1)
        return Other(index=ev.value)

    @bz.step
    async def finish(ctx: bz.Context, ev: Other) -> bz.StopEvent | None:
        return None if ctx.collect_events(ev, [Other] * 8) is None else bz.StopEvent()

    await bz.Workflow("waves", [fan_out, work, fan_again, again, finish]).run()
    assert len(second_wave) == 8
    assert second_wave <= first_wave
