"""Pause (drain and cancel), resume in place, snapshots of paused and running runs, resume.

Everything timed runs in virtual time (`autojump_clock`): a step "takes" 5 seconds by sleeping
them, and the test reaches a point inside that window by sleeping less.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import threading
import uuid
from collections import Counter
from typing import Any

import attrs
import msgspec
import pytest
import trio
import trio.testing

import blazen_trio as bz

GUARD = 3600  # virtual seconds after which a test fails instead of hanging
WORK_TIME = 5.0


class Item(bz.Event):
    index: int


class Done(bz.Event):
    index: int
    value: int


class Ready(bz.Event):
    pass


class Left(bz.Event):
    pass


class Right(bz.Event):
    pass


class Answer(bz.Event):
    pass


Log = list[tuple[str, int]]


def fan_workflow(n: int, log: Log, **options: Any) -> bz.Workflow:
    """start -> n Items -> `work` (5 s each, state written before and after) -> `join`.

    `join` collects the n `Done`s; the result is their values, sorted. `log` records
    ("start" | "finally" | "done" | "join", index).
    """

    @bz.step
    async def split(ev: bz.StartEvent) -> list[Item]:
        return [Item(index=i) for i in range(n)]

    @bz.step
    async def work(ctx: bz.Context, ev: Item) -> Done:
        log.append(("start", ev.index))
        ctx.set(f"work{ev.index}", "started")
        try:
            await trio.sleep(WORK_TIME)
        finally:
            log.append(("finally", ev.index))
        ctx.set(f"work{ev.index}", "done")
        log.append(("done", ev.index))
        return Done(index=ev.index, value=ev.index * 10)

    @bz.step
    async def join(ctx: bz.Context, ev: Done) -> bz.StopEvent | None:
        log.append(("join", ev.index))
        got = ctx.collect_events(ev, [Done] * n)
        if got is None:
            return None
        return bz.StopEvent(result=sorted(d.value for d in got if isinstance(d, Done)))

    return bz.Workflow("fan", [split, work, join], **options)


def kinds(log: Log, kind: str) -> list[int]:
    return sorted(index for what, index in log if what == kind)


def pending_summary(snapshot: bz.WorkflowSnapshot) -> list[tuple[str, str | None, str | None]]:
    """(type id, source step, target step) of each pending event, in order."""
    return [(p.event.type_id, p.source_step, p.target_step) for p in snapshot.pending_events]


# -- pause: drain ----------------------------------------------------------------------------


async def test_pause_drains_in_flight_steps(autojump_clock: trio.testing.MockClock) -> None:
    log: Log = []
    async with fan_workflow(3, log).start(3) as handler:
        await trio.sleep(1)
        assert kinds(log, "start") == [0, 1, 2]
        before = trio.current_time()
        await handler.pause()
        # The in-flight steps ran to completion: pause returned only once they had.
        assert trio.current_time() - before == pytest.approx(WORK_TIME - 1)
        assert handler.status == "paused"
        assert kinds(log, "done") == [0, 1, 2]
        # Their outputs are pending, not started.
        assert kinds(log, "join") == []
        snapshot = await handler.snapshot()
        assert snapshot.status == "paused"
        assert (
            sorted(pending_summary(snapshot))
            == [
                ("test_pause_resume.Done", "work", "join"),
            ]
            * 3
        )
        assert sorted(p.event.payload["index"] for p in snapshot.pending_events) == [0, 1, 2]
        assert snapshot.state == {"work0": "done", "work1": "done", "work2": "done"}
        # Staying paused starts nothing.
        await trio.sleep(100)
        assert kinds(log, "join") == []
        await handler.resume()
        result = await handler.result()
    assert result.result == [0, 10, 20]
    assert kinds(log, "join") == [0, 1, 2]


async def test_a_pause_right_after_start_holds_everything_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    async with fan_workflow(2, log).start(2) as handler:
        await handler.pause()
        assert handler.status == "paused"
        seen = list(log)
        await trio.sleep(100)
        assert log == seen  # nothing started while paused
        snapshot = await handler.snapshot()
        assert snapshot.pending_events  # the work is all there, waiting
        await handler.resume()
        assert (await handler.result()).result == [0, 10]


# -- pause: cancel in flight -----------------------------------------------------------------


async def test_pause_cancel_in_flight_cancels_and_puts_inputs_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    async with fan_workflow(3, log).start(3) as handler:
        await trio.sleep(1)
        before = trio.current_time()
        await handler.pause(cancel_in_flight=True)
        assert trio.current_time() == before  # nothing to wait for: cancelled at once
        assert handler.status == "paused"
        # Their `finally` ran; they did not complete.
        assert kinds(log, "finally") == [0, 1, 2]
        assert kinds(log, "done") == []
        snapshot = await handler.snapshot()
        # Their inputs are pending again, in commit order, owed to `work` only.
        assert pending_summary(snapshot) == [("test_pause_resume.Item", "split", "work")] * 3
        assert [p.event.payload["index"] for p in snapshot.pending_events] == [0, 1, 2]
        assert all(p.attempt == 1 for p in snapshot.pending_events)
        # The cancelled attempts' writes were undone.
        assert snapshot.state == {}
        await handler.resume()
        result = await handler.result()
    assert result.result == [0, 10, 20]
    # Each step committed once per input: started twice, done and joined once.
    assert Counter(i for what, i in log if what == "start") == Counter({0: 2, 1: 2, 2: 2})
    assert Counter(i for what, i in log if what == "done") == Counter({0: 1, 1: 1, 2: 1})
    assert Counter(i for what, i in log if what == "join") == Counter({0: 1, 1: 1, 2: 1})


async def test_cancelled_steps_resume_from_snapshot_without_duplicates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    workflow = fan_workflow(3, log)
    async with workflow.start(3) as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        data = (await handler.snapshot()).to_bytes()
        await handler.abort()
    log.clear()
    result = await workflow.run(resume=bz.WorkflowSnapshot.from_bytes(data))
    assert result.result == [0, 10, 20]
    assert Counter(i for what, i in log if what == "done") == Counter({0: 1, 1: 1, 2: 1})
    assert Counter(i for what, i in log if what == "join") == Counter({0: 1, 1: 1, 2: 1})


async def test_a_cancelled_write_does_not_undo_a_committed_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @bz.step
    async def start(ev: bz.StartEvent) -> list[Left | Right]:
        return [Left(), Right()]

    @bz.step
    async def fast(ctx: bz.Context, ev: Left) -> None:
        await trio.sleep(1)
        ctx.set("shared", "fast")  # written after `slow` wrote, and committed

    @bz.step
    async def slow(ctx: bz.Context, ev: Right) -> bz.StopEvent:
        ctx.set("shared", "slow")
        await trio.sleep(10)
        return bz.StopEvent(result=ctx.get("shared"))

    workflow = bz.Workflow("writes", [start, fast, slow])
    async with workflow.start() as handler:
        await trio.sleep(5)
        await handler.pause(cancel_in_flight=True)
        snapshot = await handler.snapshot()
        assert snapshot.state == {"shared": "fast"}
        await handler.resume()
        assert (await handler.result()).result == "slow"


# -- resume in place, twice, after the end -------------------------------------------------


async def test_pause_and_resume_twice(autojump_clock: trio.testing.MockClock) -> None:
    log: Log = []
    async with fan_workflow(3, log).start(3) as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        await handler.pause()  # already quiescent: returns at once
        assert handler.status == "paused"
        await handler.resume()
        await handler.resume()  # resuming a running run does nothing
        assert handler.status == "running"
        await trio.sleep(2)
        await handler.pause()  # drains the re-started steps
        assert kinds(log, "done") == [0, 1, 2]
        assert kinds(log, "join") == []
        await handler.resume()
        result = await handler.result()
    assert result.result == [0, 10, 20]
    assert Counter(i for what, i in log if what == "join") == Counter({0: 1, 1: 1, 2: 1})


async def test_two_callers_pausing_at_once_both_return_when_quiescent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    returned: list[float] = []
    async with fan_workflow(2, log).start(2) as handler:
        await trio.sleep(1)

        async def pause(cancel: bool) -> None:
            await handler.pause(cancel_in_flight=cancel)
            returned.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pause, False)
            nursery.start_soon(pause, False)
        assert len(returned) == 2
        assert kinds(log, "done") == [0, 1]
        await handler.resume()
        assert (await handler.result()).result == [0, 10]


async def test_resume_while_a_pause_is_draining_fails_that_pause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    async with fan_workflow(2, log).start(2) as handler:
        await trio.sleep(1)
        outcome: list[BaseException | None] = []

        async def pause() -> None:
            try:
                await handler.pause()
            except bz.RunFinished as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pause)
            await trio.testing.wait_all_tasks_blocked()
            await handler.resume()
        assert len(outcome) == 1
        assert isinstance(outcome[0], bz.RunFinished)
        assert (await handler.result()).result == [0, 10]


async def pause_then_resume_at_once(handler: bz.WorkflowHandler) -> str:
    """Send pause(cancel_in_flight=True), then resume right behind it, from two tasks."""
    sent = trio.Event()
    outcome: list[str] = []

    async def pause() -> None:
        sent.set()  # `handler.pause` sends its command before its first checkpoint
        try:
            await handler.pause(cancel_in_flight=True)
        except bz.RunFinished:
            outcome.append("resumed before quiescent")
        else:
            outcome.append("paused")

    async def resume() -> None:
        await sent.wait()
        await handler.resume()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pause)
        nursery.start_soon(resume)
    return outcome[0]


async def test_a_resume_right_behind_a_cancelling_pause_loses_no_work(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The resume may be applied while the cancelled steps are still unwinding; they must
    then start again rather than sit in their queues of a running run forever. Repeated,
    since which comes first is up to Trio's scheduler."""
    outcomes: Counter[str] = Counter()
    for _ in range(20):
        log: Log = []
        async with fan_workflow(3, log).start(3) as handler:
            await trio.sleep(1)
            outcomes[await pause_then_resume_at_once(handler)] += 1
            with trio.fail_after(GUARD):
                result = await handler.result()
        assert result.result == [0, 10, 20]
        assert kinds(log, "done") == [0, 1, 2]
    assert outcomes.keys() <= {"paused", "resumed before quiescent"}


async def test_abort_while_a_pause_drains_fails_the_pause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    async with fan_workflow(2, log).start(2) as handler:
        await trio.sleep(1)
        failed: list[bz.RunFinished] = []

        async def pause() -> None:
            with pytest.raises(bz.RunFinished) as caught:
                await handler.pause()
            failed.append(caught.value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pause)
            await trio.testing.wait_all_tasks_blocked()
            await handler.abort()
        assert len(failed) == 1
        with pytest.raises(bz.WorkflowAborted):
            await handler.result()
    assert kinds(log, "finally") == [0, 1]
    assert kinds(log, "done") == []


async def test_a_paused_run_can_be_aborted(autojump_clock: trio.testing.MockClock) -> None:
    log: Log = []
    async with fan_workflow(2, log).start(2) as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        await handler.abort()
        assert handler.status == "aborted"
        with pytest.raises(bz.WorkflowAborted):
            await handler.result()


async def test_control_calls_on_a_finished_run_raise_run_finished(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    async with fan_workflow(1, log).start(1) as handler:
        await handler.abort()
        with pytest.raises(bz.RunFinished):
            await handler.pause()
        with pytest.raises(bz.RunFinished):
            await handler.pause(cancel_in_flight=True)
        with pytest.raises(bz.RunFinished):
            await handler.resume()
        with pytest.raises(bz.RunFinished):
            await handler.snapshot()
        assert handler.status == "aborted"


async def test_pause_after_completion_raises_run_finished(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    async with fan_workflow(2, log).start(2) as handler:
        result = await handler.result()
        assert result.result == [0, 10]
        with pytest.raises(bz.RunFinished):
            await handler.pause()
        with pytest.raises(bz.RunFinished):
            await handler.snapshot()
        assert handler.status == "completed"


async def test_run_ending_while_a_pause_drains_fails_the_pause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @bz.step
    async def only(ev: bz.StartEvent) -> bz.StopEvent:
        await trio.sleep(5)
        return bz.StopEvent(result="done")

    async with bz.Workflow("one", [only]).start() as handler:
        await trio.sleep(1)
        with pytest.raises(bz.RunFinished):
            await handler.pause()  # the draining step's StopEvent ends the run
        assert (await handler.result()).result == "done"


# -- active time -------------------------------------------------------------------------------


def two_phase_workflow(**options: Any) -> bz.Workflow:
    """Two steps of 4 virtual seconds each: 8 s of active time."""

    @bz.step
    async def first(ev: bz.StartEvent) -> Ready:
        await trio.sleep(4)
        return Ready()

    @bz.step
    async def second(ev: Ready) -> bz.StopEvent:
        await trio.sleep(4)
        return bz.StopEvent(result="finished")

    return bz.Workflow("two-phase", [first, second], **options)


async def test_paused_time_does_not_count_toward_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    workflow = two_phase_workflow(timeout=10)
    with trio.fail_after(GUARD):
        async with workflow.start() as handler:
            await trio.sleep(2)
            await handler.pause()  # drains `first`: 4 s used
            await trio.sleep(100)  # far longer than the timeout
            snapshot = await handler.snapshot()
            assert snapshot.active_time == pytest.approx(4)
            await handler.resume()
            result = await handler.result()
    assert result.result == "finished"


async def test_paused_time_with_cancel_does_not_count_either(
    autojump_clock: trio.testing.MockClock,
) -> None:
    workflow = two_phase_workflow(timeout=10)
    with trio.fail_after(GUARD):
        async with workflow.start() as handler:
            await trio.sleep(1)
            await handler.pause(cancel_in_flight=True)  # 1 s used; `first` re-runs (4 s)
            await trio.sleep(1000)
            await handler.resume()
            result = await handler.result()
    assert result.result == "finished"


async def test_the_timeout_still_fires_on_active_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    workflow = two_phase_workflow(timeout=10)
    with trio.fail_after(GUARD):
        async with workflow.start() as handler:
            await trio.sleep(3)
            await handler.pause(cancel_in_flight=True)  # 3 s of active time lost
            await trio.sleep(50)
            start = trio.current_time()
            await handler.resume()
            with pytest.raises(bz.WorkflowTimeout):
                await handler.result()
    # 3 s were used before the pause; 7 s more after it (4 for `first`, 3 into `second`).
    assert trio.current_time() - start == pytest.approx(7)


async def test_the_timeout_still_fires_while_a_pause_drains_a_hung_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Draining steps are running steps: their time is active, so the timeout bounds it."""

    @bz.step
    async def hang(ev: bz.StartEvent) -> bz.StopEvent:
        await trio.sleep_forever()

    start = trio.current_time()
    async with bz.Workflow("hung", [hang], timeout=10).start() as handler:
        await trio.sleep(1)
        with trio.fail_after(GUARD), pytest.raises(bz.RunFinished):
            await handler.pause()  # waits for `hang`, which never finishes
        with pytest.raises(bz.WorkflowTimeout):
            await handler.result()
    assert trio.current_time() - start == pytest.approx(10)


async def test_active_time_carries_over_to_a_resumed_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    workflow = two_phase_workflow(timeout=7)
    async with workflow.start() as handler:
        await trio.sleep(1)
        await handler.pause()  # 4 s used
        snapshot = await handler.snapshot()
        await handler.abort()
    await trio.sleep(1000)
    start = trio.current_time()
    with trio.fail_after(GUARD), pytest.raises(bz.WorkflowTimeout):
        await workflow.run(resume=snapshot)
    assert trio.current_time() - start == pytest.approx(3)  # 7 - 4 left
    assert (await two_phase_workflow(timeout=8.5).run(resume=snapshot)).result == "finished"


# -- retries -----------------------------------------------------------------------------------


def flaky_workflow(attempts: list[int], *, max_attempts: int, fail_always: bool) -> bz.Workflow:
    policy = bz.RetryPolicy(max_attempts=max_attempts, initial_delay=10.0, jitter=0.0)

    @bz.step(retry=policy)
    async def flaky(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        attempts.append(ctx.attempt)
        ctx.set(f"attempt{ctx.attempt}", True)
        if fail_always or ctx.attempt == 1:
            raise RuntimeError(f"attempt {ctx.attempt} fails")
        return bz.StopEvent(result=ctx.attempt)

    return bz.Workflow("flaky", [flaky])


async def test_a_step_cancelled_in_retry_backoff_keeps_its_attempt_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[int] = []
    async with flaky_workflow(attempts, max_attempts=3, fail_always=False).start() as handler:
        await trio.sleep(5)  # attempt 1 failed at 0; the back-off lasts until 10
        await handler.pause(cancel_in_flight=True)
        snapshot = await handler.snapshot()
        assert [(p.target_step, p.attempt) for p in snapshot.pending_events] == [("flaky", 2)]
        assert snapshot.state == {}
        await handler.resume()
        result = await handler.result()
    assert result.result == 2
    assert attempts == [1, 2]


async def test_the_attempt_count_survives_a_snapshot_and_bounds_retries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[int] = []
    workflow = flaky_workflow(attempts, max_attempts=2, fail_always=True)
    async with workflow.start() as handler:
        await trio.sleep(5)
        await handler.pause(cancel_in_flight=True)
        data = (await handler.snapshot()).to_json()
        await handler.abort()
    with pytest.raises(bz.StepFailed, match="attempt 2 fails"):
        await workflow.run(resume=bz.WorkflowSnapshot.from_json(data))
    # attempt 2 was the last: the resumed run did not start counting again
    assert attempts == [1, 2]


# -- snapshots -------------------------------------------------------------------------------


def rich_workflow(**options: Any) -> bz.Workflow:
    """A start that fans out to a fast and a slow branch joined by `collect_events`, asks for
    input, writes state and reports usage; the answer and the join both feed `finish`."""

    @bz.step
    async def start(
        ctx: bz.Context, ev: bz.StartEvent
    ) -> list[Left | Right | bz.InputRequestEvent]:
        ctx.set("input", ev.data)
        ctx.emit_usage(bz.UsageEvent(prompt_tokens=3, completion_tokens=4, total_tokens=7))
        return [Left(), Right(), bz.InputRequestEvent(prompt="ok?", request_id="confirm")]

    @bz.step
    async def left(ctx: bz.Context, ev: Left) -> Done:
        ctx.set("left", "ran")
        return Done(index=0, value=1)

    @bz.step
    async def right(ctx: bz.Context, ev: Right) -> Done:
        await trio.sleep(5)
        ctx.set("right", "ran")
        ctx.emit_usage(bz.UsageEvent(prompt_tokens=1, total_tokens=1, cost_usd=0.5))
        return Done(index=1, value=2)

    @bz.step
    async def join(ctx: bz.Context, ev: Done | bz.InputResponseEvent) -> bz.StopEvent | None:
        got = ctx.collect_events(ev, [Done, Done, bz.InputResponseEvent])
        if got is None:
            return None
        total = sum(d.value for d in got if isinstance(d, Done))
        answer = got[2]
        assert isinstance(answer, bz.InputResponseEvent)
        return bz.StopEvent(result={"total": total, "answer": answer.response})

    return bz.Workflow("rich", [start, left, right, join], history=True, **options)


async def test_a_paused_snapshot_is_exact(autojump_clock: trio.testing.MockClock) -> None:
    async with rich_workflow().start({"n": 1}) as handler:
        await trio.sleep(1)  # `left` committed and was joined; `right` sleeps
        await handler.pause()  # drains `right`: its Done waits for `join`
        snapshot = await handler.snapshot()
        await handler.abort()

    assert snapshot.workflow_name == "rich"
    assert snapshot.run_id == handler.run_id
    assert snapshot.status == "paused"
    assert snapshot.created_at.tzinfo is not None
    assert snapshot.state == {"input": {"n": 1}, "left": "ran", "right": "ran"}
    assert pending_summary(snapshot) == [("test_pause_resume.Done", "right", "join")]
    assert list(snapshot.collect_buffers) == ["join"]
    assert [e.type_id for e in snapshot.collect_buffers["join"]] == ["test_pause_resume.Done"]
    assert snapshot.collect_buffers["join"][0].payload == {"index": 0, "value": 1}
    assert [e.type_id for e in snapshot.input_requests] == ["blazen.InputRequestEvent"]
    assert snapshot.input_requests[0].payload["request_id"] == "confirm"
    assert snapshot.usage.prompt_tokens == 4
    assert snapshot.usage.completion_tokens == 4
    assert snapshot.usage.total_tokens == 8
    assert snapshot.usage.cost_usd == 0.5
    kinds_seen = [entry.kind for entry in snapshot.history]
    assert kinds_seen[0] == bz.HistoryKind.RUN_STARTED
    assert bz.HistoryKind.PAUSED in kinds_seen
    assert bz.HistoryKind.INPUT_REQUESTED in kinds_seen
    sequences = [entry.sequence for entry in snapshot.history]
    assert sequences == sorted(set(sequences))
    # Both formats carry it exactly.
    assert bz.WorkflowSnapshot.from_bytes(snapshot.to_bytes()) == snapshot
    assert bz.WorkflowSnapshot.from_json(snapshot.to_json()) == snapshot


async def test_resuming_a_paused_snapshot_finishes_with_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    workflow = rich_workflow()
    async with workflow.start({"n": 1}) as handler:
        await trio.sleep(1)
        await handler.pause()
        snapshot = bz.WorkflowSnapshot.from_bytes((await handler.snapshot()).to_bytes())
        before = handler.history
        await handler.abort()
    assert before is not None

    async with workflow.start(resume=snapshot) as resumed:
        assert resumed.run_id == handler.run_id
        assert [r.request_id for r in resumed.pending_input_requests] == ["confirm"]
        assert resumed.usage == bz.Usage(prompt_tokens=4, completion_tokens=4, total_tokens=8)
        await resumed.respond_to_input("confirm", "yes")
        result = await resumed.result()
    assert result.result == {"total": 3, "answer": "yes"}
    assert result.run_id == handler.run_id
    # Usage totals and history survived and went on.
    assert result.usage == bz.Usage(prompt_tokens=4, completion_tokens=4, total_tokens=8)
    assert result.cost_usd == 0.5
    assert result.history is not None
    assert result.history[: len(snapshot.history)] == tuple(snapshot.history)
    assert bz.HistoryKind.RUN_RESUMED in [e.kind for e in result.history]
    assert result.history[-1].kind == bz.HistoryKind.COMPLETED
    sequences = [entry.sequence for entry in result.history]
    assert sequences == sorted(set(sequences))


async def test_snapshot_of_a_running_run_is_consistent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    workflow = fan_workflow(3, log)
    async with workflow.start(3) as handler:
        await trio.sleep(1)
        snapshot = await handler.snapshot()  # no pause: `work` is in flight
        assert handler.status == "running"
        # In-flight steps are recorded as pending work; their writes are not in the state.
        assert snapshot.status == "running"
        assert pending_summary(snapshot) == [("test_pause_resume.Item", "split", "work")] * 3
        assert snapshot.state == {}
        # The run itself was not disturbed.
        uninterrupted = await handler.result()
    assert kinds(log, "finally") == [0, 1, 2]  # they ran once, to completion
    assert kinds(log, "done") == [0, 1, 2]
    # Resuming re-runs the in-flight steps (at-least-once) and gives the same result.
    log.clear()
    resumed = await workflow.run(resume=bz.WorkflowSnapshot.from_json(snapshot.to_json()))
    assert resumed.result == uninterrupted.result == [0, 10, 20]
    assert kinds(log, "done") == [0, 1, 2]
    assert kinds(log, "join") == [0, 1, 2]


async def test_snapshot_of_a_running_run_leaves_committed_writes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @bz.step
    async def first(ctx: bz.Context, ev: bz.StartEvent) -> Ready:
        ctx.set("committed", 1)
        return Ready()

    @bz.step
    async def second(ctx: bz.Context, ev: Ready) -> bz.StopEvent:
        ctx.set("committed", 2)  # uncommitted until `second` returns
        ctx.set("fresh", True)
        await trio.sleep(5)
        return bz.StopEvent(result=ctx.get("committed"))

    workflow = bz.Workflow("writes", [first, second])
    async with workflow.start() as handler:
        await trio.sleep(1)
        snapshot = await handler.snapshot()
        assert snapshot.state == {"committed": 1}
        assert (await handler.result()).result == 2
    assert (await workflow.run(resume=snapshot)).result == 2


async def test_resume_gives_the_same_result_as_an_uninterrupted_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    workflow = fan_workflow(4, log)
    expected = await workflow.run(4)
    for delay in (0, 1, 5, 6):
        for cancel in (False, True):
            async with workflow.start(4) as handler:
                await trio.sleep(delay)
                try:
                    await handler.pause(cancel_in_flight=cancel)
                except bz.RunFinished:
                    continue
                snapshot = await handler.snapshot()
                await handler.abort()
            resumed = await workflow.run(resume=bz.WorkflowSnapshot.from_bytes(snapshot.to_bytes()))
            assert resumed.result == expected.result, (delay, cancel)


async def test_a_snapshot_taken_while_a_pause_drains_is_consistent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    workflow = fan_workflow(3, log)
    async with workflow.start(3) as handler:
        await trio.sleep(1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handler.pause)  # drains until 5 s
            await trio.testing.wait_all_tasks_blocked()
            snapshot = await handler.snapshot()  # `work` still in flight
        assert pending_summary(snapshot) == [("test_pause_resume.Item", "split", "work")] * 3
        assert snapshot.state == {}
        await handler.resume()
        expected = (await handler.result()).result
    assert (await workflow.run(resume=snapshot)).result == expected == [0, 10, 20]


async def test_one_snapshot_resumes_any_number_of_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    workflow = fan_workflow(3, log)
    async with workflow.start(3) as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        snapshot = await handler.snapshot()
        await handler.abort()
    first = await workflow.run(resume=snapshot)
    async with trio.open_nursery() as nursery:
        for _ in range(2):  # concurrently, too
            nursery.start_soon(functools.partial(workflow.run, resume=snapshot))
    second = await workflow.run(resume=snapshot)
    assert first.result == second.result == [0, 10, 20]
    assert first.run_id == second.run_id == handler.run_id
    runs = 4
    assert Counter(i for what, i in log if what == "done") == Counter({0: runs, 1: runs, 2: runs})


async def test_a_snapshot_with_work_for_a_missing_step_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    async with fan_workflow(2, log).start(2) as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        snapshot = await handler.snapshot()  # Items owed to `work`
        await handler.abort()

    @bz.step
    async def split(ev: bz.StartEvent) -> bz.StopEvent:
        return bz.StopEvent()

    with pytest.raises(bz.SnapshotError, match="'work'"):
        await bz.Workflow("fan", [split]).run(resume=snapshot)


async def test_a_snapshot_of_another_workflow_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with two_phase_workflow().start() as handler:
        await handler.pause()
        snapshot = await handler.snapshot()
        await handler.abort()
    log: Log = []
    other = fan_workflow(1, log)
    with pytest.raises(bz.SnapshotError, match="two-phase"):
        await other.run(resume=snapshot)
    with pytest.raises(bz.SnapshotError, match="two-phase"):
        async with other.start(resume=snapshot):
            pass  # pragma: no cover
    assert log == []


async def test_passing_input_and_resume_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with two_phase_workflow().start() as handler:
        await handler.pause()
        snapshot = await handler.snapshot()
        await handler.abort()
    with pytest.raises(TypeError):
        await two_phase_workflow().run("input", resume=snapshot)


# -- unknown event types -----------------------------------------------------------------------


def joining_workflow(name: str) -> bz.Workflow:
    """v1: `join` collects a Left and a Right; Left arrives at once, Right after 5 s."""

    @bz.step
    async def start(ev: bz.StartEvent) -> list[Left | Ready]:
        return [Left(), Ready()]

    @bz.step
    async def slow(ev: Ready) -> Right:
        await trio.sleep(5)
        return Right()

    @bz.step
    async def join(ctx: bz.Context, ev: Left | Right) -> bz.StopEvent | None:
        got = ctx.collect_events(ev, [Left, Right])
        if got is None:
            return None
        return bz.StopEvent(result=[type(e).__name__ for e in got])

    return bz.Workflow(name, [start, slow, join])


def forgetful_workflow(name: str) -> bz.Workflow:
    """v2 of the same workflow: knows nothing of Left; its `join` takes what it does not know."""

    @bz.step
    async def start(ev: bz.StartEvent) -> Ready:
        return Ready()

    @bz.step
    async def slow(ev: Ready) -> Right:
        await trio.sleep(5)
        return Right()

    @bz.step
    async def join(ctx: bz.Context, ev: Right) -> bz.StopEvent | None:
        got = ctx.collect_events(ev, [bz.DynamicEvent, Right])
        if got is None:
            return None
        unknown = got[0]
        assert isinstance(unknown, bz.DynamicEvent)
        return bz.StopEvent(result=[unknown.type_id, unknown.data, type(got[1]).__name__])

    return bz.Workflow(name, [start, slow, join])


async def test_an_unknown_event_type_is_a_dynamic_event_in_the_buffer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with joining_workflow("versioned").start() as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        snapshot = bz.WorkflowSnapshot.from_json((await handler.snapshot()).to_json())
        await handler.abort()
    assert [e.type_id for e in snapshot.collect_buffers["join"]] == ["test_pause_resume.Left"]

    result = await forgetful_workflow("versioned").run(resume=snapshot)
    assert result.result == ["test_pause_resume.Left", {}, "Right"]


async def test_an_unknown_event_is_kept_and_retyped_by_a_workflow_that_knows_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with joining_workflow("versioned").start() as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        snapshot = await handler.snapshot()
        await handler.abort()
    # Through a workflow that does not know Left, snapshotted before it touched the buffer...
    async with forgetful_workflow("versioned").start(resume=snapshot) as middle:
        await middle.pause()
        again = bz.WorkflowSnapshot.from_bytes((await middle.snapshot()).to_bytes())
        await middle.abort()
    assert again.collect_buffers == snapshot.collect_buffers
    # ...and back to one that does: Left is a Left again.
    result = await joining_workflow("versioned").run(resume=again)
    assert result.result == ["Left", "Right"]


# -- state values ------------------------------------------------------------------------------


class Colour(enum.Enum):
    RED = 1
    BLUE = 2


@dataclasses.dataclass
class Point:
    x: int
    y: int


@attrs.define
class Account:
    owner: str
    balance: int
    tags: list[str]


class Measure(msgspec.Struct):
    name: str
    taken: dt.datetime
    reading: Any


STATE_VALUES: dict[str, Any] = {
    "dataclass": Point(1, 2),
    "attrs": Account("ada", 10, ["a", "b"]),
    "struct": Measure(
        name="t", taken=dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), reading=(1, {2})
    ),
    "datetime": dt.datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    "naive": dt.datetime(2024, 5, 6, 7, 8, 9),
    "date": dt.date(2024, 2, 29),
    "delta": dt.timedelta(days=1, seconds=2),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "enum": Colour.BLUE,
    "bytes": b"\x00\xffdata",
    "set": {1, 2, 3},
    "frozenset": frozenset({"a"}),
    "tuple": (1, "two", 3.0),
    "big": 2**100,
    "nested": {"points": [Point(0, 0), Point(3, 4)], "by_id": {1: {"x"}, (2, 3): [b"z"]}},
    "none": None,
}


def state_workflow(**options: Any) -> bz.Workflow:
    @bz.step
    async def write(ctx: bz.Context, ev: bz.StartEvent) -> Ready:
        for key, value in STATE_VALUES.items():
            ctx.set(key, value)
        return Ready()

    @bz.step
    async def read(ctx: bz.Context, ev: Ready) -> bz.StopEvent:
        await trio.sleep(5)
        keys = ctx.keys()
        return bz.StopEvent(result={key: ctx.get(key) for key in keys})

    return bz.Workflow("stateful", [write, read], **options)


@pytest.mark.parametrize("codec", ["msgpack", "json"])
async def test_state_values_of_many_kinds_survive_a_resume(
    autojump_clock: trio.testing.MockClock, codec: str
) -> None:
    workflow = state_workflow()
    async with workflow.start() as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        snapshot = await handler.snapshot()
        await handler.abort()
    decoded = (
        bz.WorkflowSnapshot.from_bytes(snapshot.to_bytes())
        if codec == "msgpack"
        else bz.WorkflowSnapshot.from_json(snapshot.to_json())
    )
    result = await workflow.run(resume=decoded)
    assert result.result == STATE_VALUES
    for key, value in STATE_VALUES.items():
        assert type(result.result[key]) is type(value), key
    assert type(result.result["nested"]["points"][1]) is Point
    assert type(result.result["struct"].reading) is tuple


async def test_an_unserializable_value_fails_the_snapshot_naming_its_key(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @bz.step
    async def write(ctx: bz.Context, ev: bz.StartEvent) -> Ready:
        ctx.set("fine", 1)
        ctx.set("lock", {"inner": [threading.Lock()]})
        return Ready()

    @bz.step
    async def finish(ctx: bz.Context, ev: Ready) -> bz.StopEvent:
        await trio.sleep(5)
        ctx.delete("lock")
        return bz.StopEvent(result="ok")

    async with bz.Workflow("locked", [write, finish]).start() as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        with pytest.raises(bz.SnapshotError, match=r"'lock'.*\['inner'\]\[0\].*lock"):
            await handler.snapshot()
        # A failed snapshot changes nothing: the run goes on.
        assert handler.status == "paused"
        await handler.resume()
        assert (await handler.result()).result == "ok"
