"""Sub-workflows: child runs inside a step, parallel joins, cascading control, memoized resume."""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing
from _family_workflow import FAMILY
from hypothesis import given, settings

import blazen_trio as bz
from blazen_trio.testing import PausePoint, check_pause_resume, pause_plans

TESTS = pathlib.Path(__file__).parent

GUARD = 3600


class Item(bz.Event):
    n: int


Calls = Counter[str]


def child(name: str, calls: Calls, *, seconds: float = 5.0, fail: bool = False) -> bz.Workflow:
    """A 3-step child: double -> wait `seconds` -> add one; counts each step's executions."""

    class Doubled(bz.Event, type_id=f"test.{name}.Doubled"):
        n: int

    class Waited(bz.Event, type_id=f"test.{name}.Waited"):
        n: int

    @bz.step
    async def double(ctx: bz.Context, ev: bz.StartEvent) -> Doubled:
        calls[f"{name}.double"] += 1
        ctx.emit_usage(bz.UsageEvent(total_tokens=1))
        ctx.write_event_to_stream(Item(n=ev.data))
        return Doubled(n=ev.data * 2)

    @bz.step
    async def wait(ctx: bz.Context, ev: Doubled) -> Waited:
        await trio.sleep(seconds)
        calls[f"{name}.wait"] += 1
        ctx.set("waited", ev.n)
        if fail:
            raise ValueError(f"{name} broke")
        return Waited(n=ev.n)

    @bz.step
    async def add(ctx: bz.Context, ev: Waited) -> bz.StopEvent:
        calls[f"{name}.add"] += 1
        return bz.StopEvent(result=ev.n + 1)

    return bz.Workflow(name, [double, wait, add])


def parent(calls: Calls, **options: Any) -> bz.Workflow:
    """start -> `one` (child a) -> `many` (children b, c, d in parallel, 2 at a time) -> sum."""
    a, b, c, d = (child(n, calls, seconds=s) for n, s in zip("abcd", (5, 3, 4, 6), strict=True))

    @bz.step
    async def one(ctx: bz.Context, ev: bz.StartEvent) -> Item:
        calls["parent.one"] += 1
        result = await ctx.run_workflow(a, ev.data)
        return Item(n=result.result)

    @bz.step
    async def many(ctx: bz.Context, ev: Item) -> bz.StopEvent:
        calls["parent.many"] += 1
        results = await ctx.run_workflows(
            [(b, ev.n), (c, ev.n + 1), (d, ev.n + 2)], max_concurrency=2
        )
        return bz.StopEvent(result=[r.result for r in results])

    return bz.Workflow("parent", [one, many], **options)


EXPECTED = [23, 25, 27]  # a: 5 -> 11; b, c, d: 11, 12, 13 -> 23, 25, 27


async def test_children_run_inside_steps_with_results_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: Calls = Counter()
    result = await parent(calls).run(5)
    assert result.result == EXPECTED
    assert result.usage.total_tokens == 4  # each child's usage counts in the parent's
    assert all(count == 1 for count in calls.values())
    assert len(calls) == 2 + 4 * 3


async def test_childrens_stream_events_reach_the_parent_tagged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with parent(Counter()).start(5) as handler:
        events = handler.stream_events()
        tagged = [e async for e in events if isinstance(e, bz.SubWorkflowEvent)]
    items = sorted((e.workflow, e.event.n) for e in tagged if isinstance(e.event, Item))
    assert items == [("a", 5), ("b", 11), ("c", 12), ("d", 13)]
    assert all(e.run_id != handler.run_id for e in tagged)


async def test_a_failing_child_fails_the_step_with_its_error_as_cause_and_cancels_siblings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: Calls = Counter()
    slow, broken = child("slow", calls, seconds=100), child("broken", calls, seconds=1, fail=True)

    @bz.step
    async def both(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        await ctx.run_workflows([(slow, 1), (broken, 2)])
        return bz.StopEvent()

    with trio.fail_after(50), pytest.raises(bz.StepFailed) as caught:
        await bz.Workflow("joined", [both]).run()
    cause = caught.value.__cause__
    assert isinstance(cause, bz.StepFailed)
    assert cause.step_name == "wait"
    assert isinstance(cause.__cause__, ValueError)
    assert calls["slow.wait"] == 0  # cancelled at once, long before its 100 s


async def test_abort_leaves_no_task_of_any_child(autojump_clock: trio.testing.MockClock) -> None:
    me = trio.lowlevel.current_task()
    async with parent(Counter()).start(5) as handler:
        await trio.sleep(7)  # `many` runs two children
        # The run, its worker, and a task per child (each child works in its own task).
        assert len(_tasks(me)) >= 5
        await handler.abort()
        assert _tasks(me) == [me]  # every task of the run and of its children has exited
        with pytest.raises(bz.WorkflowAborted):
            await handler.result()


def _tasks(task: trio.lowlevel.Task) -> list[trio.lowlevel.Task]:
    found = [task]
    for nursery in task.child_nurseries:
        for child_task in nursery.child_tasks:
            found.extend(_tasks(child_task))
    return found


@pytest.mark.parametrize("cancel_in_flight", [False, True])
@pytest.mark.parametrize("at", [2.0, 7.0, 12.0])
async def test_a_pause_reaches_the_children_and_a_snapshot_resumes_them(
    autojump_clock: trio.testing.MockClock, cancel_in_flight: bool, at: float
) -> None:
    calls: Calls = Counter()
    async with parent(calls).start(5) as handler:
        await trio.sleep(at)
        await handler.pause(cancel_in_flight=cancel_in_flight)
        assert handler.status == bz.RunStatus.PAUSED
        frozen = dict(calls)
        await trio.sleep(100)  # nothing moves while paused, children included
        assert dict(calls) == frozen
        data = (await handler.snapshot()).to_json()
        await handler.abort()
    result = await parent(calls).run(resume=bz.WorkflowSnapshot.from_json(data))
    assert result.result == EXPECTED
    # Finished children and committed child steps never ran twice.
    assert all(calls[f"{name}.double"] == 1 for name in "abcd")
    assert all(calls[f"{name}.add"] == 1 for name in "abcd")


async def test_a_pause_in_place_resumes_the_children(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: Calls = Counter()
    async with parent(calls).start(5) as handler:
        await trio.sleep(7)
        await handler.pause()
        await handler.resume()
        assert (await handler.result()).result == EXPECTED
    assert all(count == 1 for count in calls.values())


async def test_recursion_past_the_depth_limit_fails_clearly() -> None:
    @bz.step
    async def again(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        await ctx.run_workflow(endless, ev.data)
        return bz.StopEvent()

    endless = bz.Workflow("endless", [again])
    with pytest.raises(bz.StepFailed) as caught:
        await endless.run()
    error: BaseException | None = caught.value
    while error is not None and not isinstance(error, RecursionError):
        error = error.__cause__
    assert isinstance(error, RecursionError)
    assert "nest at most 16 deep" in str(error)


async def test_run_workflow_refuses_what_is_not_a_workflow() -> None:
    @bz.step
    async def wrong(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        await ctx.run_workflow("not a workflow")
        return bz.StopEvent()

    with pytest.raises(bz.StepFailed, match="run_workflow takes a Workflow"):
        await bz.Workflow("wrong", [wrong]).run()


async def test_children_share_the_parents_session_refs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Handle(bz.Event):
        ref: bz.SessionRef

    @bz.step
    async def use(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        return bz.StopEvent(result=ctx.refs.get(ev.data))

    user = bz.Workflow("user", [use])

    @bz.step
    async def lend(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        ref = ctx.refs.insert(object(), lifetime=bz.RefLifetime.UNTIL_PARENT_FINISH)
        result = await ctx.run_workflow(user, ref)
        return bz.StopEvent(result=result.result is ctx.refs.get(ref))

    assert (await bz.Workflow("lender", [lend]).run()).result is True


async def test_a_durable_parent_does_not_rerun_a_finished_child_after_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = bz.MemoryCheckpointStore()
    calls: Calls = Counter()
    with trio.move_on_after(12):  # `a` finished, `b` and `c` on their way
        await parent(calls, checkpoint_store=store).run(5, run_id="p")
    assert calls["a.add"] == 1
    stored = await store.load("p")
    assert stored is not None
    (many,) = [p for p in stored.pending_events if p.target_step == "many"]
    # `b` and `c` finished: their results are in the parent's journal, under `many`.
    assert sorted(memo.index for memo in many.children if memo.result) == [0, 1]
    outcomes = await parent(calls, checkpoint_store=store).recover()
    result = outcomes["p"]
    assert isinstance(result, bz.WorkflowResult)
    assert result.result == EXPECTED
    assert calls["a.double"] == calls["a.add"] == 1  # never re-run
    assert all(calls[f"{name}.add"] == 1 for name in "bcd")
    assert list(outcomes) == ["p"]  # the children went on inside their parent


# -- pauses anywhere in a family of runs ---------------------------------------------------------

FAMILY_RESULT = [
    {"n": 23, "state": {"double": 1, "wait": 1, "add": 1}},
    {"n": 25, "state": {"double": 1, "wait": 1, "add": 1}},
    {"n": 27, "state": {"double": 1, "wait": 1, "add": 1}},
]


@given(plan=pause_plans(max_pauses=3, max_delay=12.0))
@settings(max_examples=25)
def test_pauses_anywhere_in_a_family_lose_and_repeat_nothing(plan: list[PausePoint]) -> None:
    record = check_pause_resume(FAMILY, 5, plan)
    assert record.result == FAMILY_RESULT
    # Each committed step execution, parent's and children's, happened exactly once.
    assert all(count == 1 for count in record.executions.values())
    assert dict(record.state) == {"first": 1, "fan": 1}


@pytest.mark.parametrize("cancel_in_flight", [False, True])
async def test_a_family_paused_inside_a_child_resumes_in_another_process(
    autojump_clock: trio.testing.MockClock, tmp_path: pathlib.Path, cancel_in_flight: bool
) -> None:
    async with FAMILY.start(5) as handler:
        await trio.sleep(6.5)  # the fan-out's first two children are in their `wait` steps
        await handler.pause(cancel_in_flight=cancel_in_flight)
        snapshot = await handler.snapshot()
        await handler.abort()
    children = [c for p in snapshot.pending_events for c in p.children]
    assert sum(c.snapshot is not None for c in children) == 2  # two children going on
    assert sum(c.result is not None for c in children) == 0
    path = tmp_path / "family.snapshot"
    path.write_bytes(snapshot.to_bytes())
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    done = await trio.run_process(
        [sys.executable, str(TESTS / "family_child.py"), str(path)],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
    )
    report = json.loads(done.stdout)
    assert report["result"] == FAMILY_RESULT
    assert report["tokens"] == 4


# -- timeouts and retries reach the children -----------------------------------------------------


async def test_a_step_timeout_cancels_the_child_inside(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: Calls = Counter()
    slow = child("slow", calls, seconds=100)

    @bz.step(timeout=10)
    async def bounded(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        await ctx.run_workflow(slow, 1)
        return bz.StopEvent()

    with pytest.raises(bz.StepTimeout):
        await bz.Workflow("bounded", [bounded]).run()
    assert calls["slow.wait"] == 0
    assert trio.current_time() == pytest.approx(10)


async def test_the_run_timeout_counts_the_childrens_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow = child("slow", Counter(), seconds=100)

    @bz.step
    async def waits(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        await ctx.run_workflow(slow, 1)
        return bz.StopEvent()

    with pytest.raises(bz.WorkflowTimeout):
        await bz.Workflow("slow-parent", [waits], timeout=20).run()
    assert trio.current_time() == pytest.approx(20)


async def test_a_retry_of_the_parent_step_runs_the_child_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: Calls = Counter()
    once = child("once", calls, seconds=1)

    @bz.step(retry=bz.RetryPolicy(max_attempts=2, initial_delay=1))
    async def flaky(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        result = await ctx.run_workflow(once, 1)
        if ctx.attempt == 1:
            raise ConnectionError("after the child")
        return bz.StopEvent(result=result.result)

    assert (await bz.Workflow("retrying", [flaky]).run()).result == 3
    assert calls["once.add"] == 2


async def test_refs_a_child_inserts_live_until_the_parent_finishes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @bz.step
    async def make(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        ref = ctx.refs.insert(["made by the child"], lifetime=bz.RefLifetime.UNTIL_PARENT_FINISH)
        return bz.StopEvent(result=ref)

    maker = bz.Workflow("maker", [make])

    @bz.step
    async def borrow(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        made = await ctx.run_workflow(maker)
        return bz.StopEvent(result=ctx.refs.get(made.result))  # the child has ended

    result = await bz.Workflow("borrower", [borrow]).run()
    assert result.result == ["made by the child"]
    assert result.session_refs == {}  # released when the parent finished
