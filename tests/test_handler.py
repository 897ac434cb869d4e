"""The handler: result, abort, status; the `start` block owns the run; errors come out whole."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable

import pytest
import trio
import trio.lowlevel
import trio.testing

import blazen_trio as bz


class Left(bz.Event):
    pass


class Right(bz.Event):
    pass


class Unrouted(bz.Event):
    pass


class UserError(Exception):
    pass


def blocked_workflow(started: trio.Event, log: list[str]) -> bz.Workflow:
    """One step that signals `started`, then waits forever and logs its `finally`."""

    @bz.step
    async def wait(ev: bz.StartEvent) -> bz.StopEvent:
        try:
            started.set()
            await trio.sleep_forever()
        finally:
            log.append("finally")

    return bz.Workflow("blocked", [wait])


def gated_workflow(gate: trio.Event) -> bz.Workflow:
    """One step that ends the run with "done" once `gate` is set."""

    @bz.step
    async def wait(ev: bz.StartEvent) -> bz.StopEvent:
        await gate.wait()
        return bz.StopEvent(result="done")

    return bz.Workflow("gated", [wait])


def failing_workflow() -> bz.Workflow:
    @bz.step
    async def explode(ev: bz.StartEvent) -> bz.StopEvent:
        raise ValueError("boom")

    return bz.Workflow("failing", [explode])


# -- result and status ---------------------------------------------------------------------


async def test_result_returns_the_run_result() -> None:
    gate = trio.Event()
    gate.set()
    async with gated_workflow(gate).start("input") as handler:
        result = await handler.result()
    assert result.result == "done"
    assert result.event == bz.StopEvent(result="done")
    assert result.run_id == handler.run_id


def status_of(handler: bz.WorkflowHandler) -> bz.RunStatus:
    """Read the status afresh (a type checker would narrow `handler.status` across awaits)."""
    return handler.status


async def test_status_goes_from_running_to_completed() -> None:
    gate = trio.Event()
    async with gated_workflow(gate).start() as handler:
        await trio.testing.wait_all_tasks_blocked()
        assert status_of(handler) is bz.RunStatus.RUNNING
        assert status_of(handler) == "running"
        gate.set()
        await handler.result()
        assert status_of(handler) is bz.RunStatus.COMPLETED
        assert status_of(handler) == "completed"


async def test_status_failed_after_a_failure() -> None:
    async with failing_workflow().start() as handler:
        with pytest.raises(bz.StepFailed):
            await handler.result()
        assert handler.status == "failed"


def test_status_names() -> None:
    assert [s.value for s in bz.RunStatus] == [
        "running",
        "paused",
        "waiting_for_input",
        "completed",
        "failed",
        "aborted",
    ]


@bz.step
async def stop_at_once(ev: bz.StartEvent) -> bz.StopEvent:
    return bz.StopEvent()


async def test_run_ids_are_distinct_per_run() -> None:
    gate = trio.Event()
    gate.set()
    wf = gated_workflow(gate)
    first = await wf.run()
    second = await wf.run()
    assert first.run_id != second.run_id


async def test_run_ids_are_canonical_uuid4_strings() -> None:
    wf = bz.Workflow("ids", [stop_at_once])
    ids = [(await wf.run()).run_id for _ in range(200)]
    assert len(set(ids)) == len(ids)
    for run_id in ids:
        parsed = uuid.UUID(run_id)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == run_id  # lower-case hex, dashes where a UUID has them


async def test_many_awaiters_get_the_same_result() -> None:
    gate = trio.Event()
    results: list[bz.WorkflowResult] = []

    async def wait_for(handler: bz.WorkflowHandler) -> None:
        results.append(await handler.result())

    async with gated_workflow(gate).start() as handler, trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(wait_for, handler)
        await trio.testing.wait_all_tasks_blocked()
        assert results == []
        gate.set()
    assert len(results) == 10
    assert all(r is results[0] for r in results)
    assert results[0].result == "done"


async def test_many_awaiters_get_the_same_error() -> None:
    errors: list[BaseException] = []

    async def wait_for(handler: bz.WorkflowHandler) -> None:
        try:
            await handler.result()
        except bz.StepFailed as exc:
            errors.append(exc)

    async with failing_workflow().start() as handler, trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(wait_for, handler)
    assert len(errors) == 5
    first = errors[0]
    assert all(type(e) is type(first) and str(e) == str(first) for e in errors)
    assert all(e.__cause__ is first.__cause__ for e in errors)
    assert isinstance(first.__cause__, ValueError)


async def test_result_is_available_after_the_block() -> None:
    gate = trio.Event()
    gate.set()
    async with gated_workflow(gate).start() as handler:
        await handler.result()
    assert handler.status == "completed"
    assert (await handler.result()).result == "done"


# -- abort ---------------------------------------------------------------------------------


async def test_abort_returns_after_every_task_exited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started = trio.Event()
    cleaned: list[float] = []

    @bz.step
    async def slow_cleanup(ev: bz.StartEvent) -> bz.StopEvent:
        try:
            started.set()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(3)  # cleanup that takes time, and abort must wait for
            cleaned.append(trio.current_time())

    async with bz.Workflow("cleanup", [slow_cleanup]).start() as handler:
        await started.wait()
        aborted_at = trio.current_time()
        await handler.abort()
        assert cleaned == [pytest.approx(aborted_at + 3)]
        assert trio.current_time() == pytest.approx(aborted_at + 3)
        assert handler.status == bz.RunStatus.ABORTED
        with pytest.raises(bz.WorkflowAborted):
            await handler.result()


async def test_abort_wakes_result_awaiters_with_workflow_aborted() -> None:
    started = trio.Event()
    log: list[str] = []
    outcomes: list[BaseException] = []

    async def wait_for(handler: bz.WorkflowHandler) -> None:
        try:
            await handler.result()
        except bz.WorkflowAborted as exc:
            outcomes.append(exc)

    async with blocked_workflow(started, log).start() as handler, trio.open_nursery() as nursery:
        nursery.start_soon(wait_for, handler)
        nursery.start_soon(wait_for, handler)
        await started.wait()
        await handler.abort()
    assert len(outcomes) == 2
    assert log == ["finally"]


async def test_abort_during_retry_backoff(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[int] = []
    first_failed = trio.Event()

    @bz.step(retry=bz.RetryPolicy(max_attempts=3, initial_delay=100, jitter=0))
    async def flaky(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        attempts.append(ctx.attempt)
        first_failed.set()
        raise ConnectionError("down")

    async with bz.Workflow("backoff", [flaky]).start() as handler:
        await first_failed.wait()
        before = trio.current_time()
        await handler.abort()
        assert trio.current_time() == before  # no waiting out the 100 s backoff
    assert attempts == [1]
    assert handler.status == "aborted"


@pytest.mark.parametrize("ending", ["completed", "failed", "aborted"])
async def test_abort_on_a_finished_run_is_run_finished(ending: str) -> None:
    gate = trio.Event()
    gate.set()
    wf = failing_workflow() if ending == "failed" else gated_workflow(gate)
    async with wf.start() as handler:
        if ending == "aborted":
            await handler.abort()
        else:
            expect_error = ending == "failed"
            with pytest.raises(bz.StepFailed) if expect_error else contextlib.nullcontext():
                await handler.result()
        assert handler.status == ending
        with pytest.raises(bz.RunFinished):
            await handler.abort()
        assert handler.status == ending


@pytest.mark.parametrize("method", ["pause", "resume", "snapshot", "respond_to_input", "abort"])
async def test_a_control_call_on_a_finished_run_names_the_public_method(method: str) -> None:
    gate = trio.Event()
    gate.set()
    async with gated_workflow(gate).start() as handler:
        await handler.result()
        arguments = ("request", "answer") if method == "respond_to_input" else ()
        with pytest.raises(bz.RunFinished, match=f"^{method}: run "):
            await getattr(handler, method)(*arguments)


# -- the start block owns the run ----------------------------------------------------------


async def test_leaving_the_block_aborts_a_running_run() -> None:
    started = trio.Event()
    log: list[str] = []
    async with blocked_workflow(started, log).start() as handler:
        await started.wait()
    assert log == ["finally"]  # nothing outlives the block
    assert handler.status == bz.RunStatus.ABORTED
    with pytest.raises(bz.WorkflowAborted):
        await handler.result()


# Engine bug (blazen_trio/_run.py, Run.begin/spawn and _attempt): the first step's task is
# spawned before the block's body runs, and a task spawned into a cancelled scope still runs
# its step body up to its first checkpoint, so a run aborted before it started has side effects.
async def test_a_run_aborted_at_once_never_starts_a_step() -> None:
    ran: list[str] = []

    @bz.step
    async def effect(ev: bz.StartEvent) -> bz.StopEvent:
        ran.append("effect")
        await trio.lowlevel.checkpoint()
        return bz.StopEvent()

    async with bz.Workflow("at_once", [effect]).start() as handler:
        pass
    assert handler.status == "aborted"
    assert ran == []


async def test_a_user_exception_in_the_block_propagates_unwrapped() -> None:
    started = trio.Event()
    log: list[str] = []
    handlers: list[bz.WorkflowHandler] = []

    async def raise_inside() -> None:
        async with blocked_workflow(started, log).start() as handler:
            handlers.append(handler)
            await started.wait()
            raise UserError("mine")

    with pytest.raises(UserError, match="mine") as caught:
        await raise_inside()
    assert type(caught.value) is UserError
    assert log == ["finally"]
    assert handlers[0].status == "aborted"


async def test_a_user_exception_wins_over_the_run_error() -> None:
    handlers: list[bz.WorkflowHandler] = []

    async def raise_after_failure() -> None:
        async with failing_workflow().start() as handler:
            handlers.append(handler)
            with pytest.raises(bz.StepFailed):
                await handler.result()
            raise UserError("after the failure")

    with pytest.raises(UserError, match="after the failure"):
        await raise_after_failure()
    assert handlers[0].status == "failed"


async def test_an_outer_cancel_scope_cancels_run_cleanly() -> None:
    started = trio.Event()
    log: list[str] = []
    wf = blocked_workflow(started, log)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_when_started() -> None:
                await started.wait()
                scope.cancel()

            nursery.start_soon(cancel_when_started)
            await wf.run()
    assert scope.cancelled_caught
    assert log == ["finally"]


async def test_an_outer_cancel_aborts_a_started_run() -> None:
    started = trio.Event()
    log: list[str] = []
    with trio.CancelScope() as scope:
        async with blocked_workflow(started, log).start() as handler:
            await started.wait()
            scope.cancel()
            await handler.result()
    assert scope.cancelled_caught
    assert handler.status == "aborted"
    assert log == ["finally"]


# -- one error, never a group --------------------------------------------------------------


def _no_handler() -> bz.Workflow:
    @bz.step
    async def stray(ev: bz.StartEvent) -> bz.Event:
        return Unrouted()

    return bz.Workflow("stray", [stray])


def _stalled() -> bz.Workflow:
    @bz.step
    async def nothing(ev: bz.StartEvent) -> bz.StopEvent | None:
        return None

    return bz.Workflow("idle", [nothing])


def _step_timeout() -> bz.Workflow:
    @bz.step(timeout=1)
    async def stuck(ev: bz.StartEvent) -> bz.StopEvent:
        await trio.sleep_forever()

    return bz.Workflow("stuck", [stuck])


def _workflow_timeout() -> bz.Workflow:
    @bz.step
    async def stuck(ev: bz.StartEvent) -> bz.StopEvent:
        await trio.sleep_forever()

    return bz.Workflow("stuck", [stuck], timeout=1)


def _two_failures() -> bz.Workflow:
    @bz.step
    async def fan_out(ev: bz.StartEvent) -> list[Left | Right]:
        return [Left(), Right()]

    @bz.step
    async def left(ev: Left) -> bz.StopEvent:
        raise ValueError("left")

    @bz.step
    async def right(ev: Right) -> bz.StopEvent:
        raise ValueError("right")

    return bz.Workflow("two", [fan_out, left, right])


def _nursery_in_step() -> bz.Workflow:
    @bz.step
    async def spawner(ev: bz.StartEvent) -> bz.StopEvent:
        async def fail(n: int) -> None:
            raise ValueError(n)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail, 1)
            nursery.start_soon(fail, 2)
        return bz.StopEvent()

    return bz.Workflow("spawner", [spawner])


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (failing_workflow, bz.StepFailed),
        (_no_handler, bz.NoHandler),
        (_stalled, bz.WorkflowStalled),
        (_step_timeout, bz.StepTimeout),
        (_workflow_timeout, bz.WorkflowTimeout),
        (_two_failures, bz.StepFailed),
        (_nursery_in_step, bz.StepFailed),
    ],
)
async def test_run_errors_are_never_exception_groups(
    autojump_clock: trio.testing.MockClock,
    make: Callable[[], bz.Workflow],
    error: type[bz.WorkflowError],
) -> None:
    with trio.fail_after(60), pytest.raises(error) as from_run:  # a hang fails at once
        await make().run()
    assert type(from_run.value) is error
    async with make().start() as handler:
        with trio.fail_after(60), pytest.raises(error) as from_result:
            await handler.result()
    assert type(from_result.value) is error


async def test_an_exception_group_raised_by_a_step_is_the_cause() -> None:
    with pytest.raises(bz.StepFailed) as caught:
        await _nursery_in_step().run()
    cause = caught.value.__cause__
    assert isinstance(cause, ExceptionGroup)
    assert sorted(e.args[0] for e in cause.exceptions) == [1, 2]


# (That each awaiter gets its own copy of the error, so one awaiter's handled exception never
# becomes another's `__context__`, is pinned in tests/test_behaviour_guards.py.)
