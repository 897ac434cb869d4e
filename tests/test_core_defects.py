"""Defects of the control channel and of cancellation, each pinned by the test that found it.

- A command's own failure (a warning made an error) goes to its caller, not out of the run.
- The idle check runs after every command and commit, whatever their interleaving.
- A step (or inline input handler) whose cleanup raises while it is cancelled is still
  cancelled: pause, abort and timeouts go on, and the run's one error says what happened.
- Time an inline input handler spends waiting for its answer is not active time.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

import blazen_trio as bz

GUARD = 3600  # virtual seconds after which a test fails instead of hanging


class Asked(bz.Event):
    pass


class Work(bz.Event):
    n: int


# -- a command's failure answers its caller ------------------------------------------------


def _ref_holding(policy: bz.SessionPausePolicy) -> tuple[bz.Workflow, trio.Event]:
    """A committed step holds a live ref while the next one works."""
    inserted = trio.Event()

    @bz.step
    async def hold(ctx: bz.Context, ev: bz.StartEvent) -> Work:
        ctx.refs.insert(object())
        return Work(n=1)

    @bz.step
    async def work(ev: Work) -> bz.StopEvent:
        inserted.set()
        await trio.sleep(10)
        return bz.StopEvent(result="done")

    return bz.Workflow("holder", [hold, work], session_pause_policy=policy), inserted


async def test_a_warning_raised_by_a_snapshot_goes_to_its_caller_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # pytest runs with filterwarnings=error: the WARN_DROP warning is raised as an error.
    wf, inserted = _ref_holding(bz.SessionPausePolicy.WARN_DROP)
    async with wf.start() as handler:
        await inserted.wait()
        with pytest.raises(RuntimeWarning, match="dropped from the snapshot"):
            await handler.snapshot()
        result = await handler.result()  # the run itself goes on
    assert result.result == "done"


async def test_the_users_own_exception_survives_a_failed_command(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wf, inserted = _ref_holding(bz.SessionPausePolicy.WARN_DROP)

    async def users_block() -> None:
        async with wf.start() as handler:
            await inserted.wait()
            try:
                await handler.snapshot()
            except RuntimeWarning:
                raise KeyError("mine") from None

    with pytest.raises(KeyError, match="mine"):
        await users_block()


async def test_a_snapshot_with_the_warning_allowed_still_works(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wf, inserted = _ref_holding(bz.SessionPausePolicy.WARN_DROP)
    async with wf.start() as handler:
        await inserted.wait()
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            snapshot = await handler.snapshot()
        await handler.abort()
    assert len(snapshot.metadata["__blazen_dropped_session_refs"]) == 1


# -- the idle check after every command and commit -----------------------------------------


def _gated(outcome: Callable[[], bz.Event | None]) -> tuple[bz.Workflow, trio.Event, trio.Event]:
    """One step that waits for `go`, then returns `outcome()`."""
    started, go = trio.Event(), trio.Event()

    @bz.step
    async def ask(ev: bz.StartEvent) -> bz.InputRequestEvent | None:
        started.set()
        await go.wait()
        return outcome()  # type: ignore[return-value]  # the request, or nothing

    @bz.step
    async def answer(ev: bz.InputResponseEvent) -> bz.StopEvent:
        return bz.StopEvent(result=ev.response)

    return bz.Workflow("gated", [ask, answer], timeout=100), started, go


async def _commit_between_commands(handler: bz.WorkflowHandler, go: trio.Event) -> None:
    """Queue a command, let the step complete, queue another, all in one scheduler batch.

    Trio runs a batch in an order it picks at random, so over the trials the commit lands
    between the two commands, ahead of both, and behind both.
    """

    async def snapshot() -> None:
        with contextlib.suppress(bz.RunFinished):  # the run may stall before it is applied
            await handler.snapshot()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(snapshot)
        go.set()
        nursery.start_soon(snapshot)


TRIALS = 24  # the interleaving that mattered comes up in about half of the trials


async def test_a_run_left_only_waiting_for_input_says_so_after_any_interleaving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    for _ in range(TRIALS):
        wf, started, go = _gated(lambda: bz.InputRequestEvent(prompt="?", request_id="q"))
        async with wf.start() as handler:
            await started.wait()
            await _commit_between_commands(handler, go)
            await trio.testing.wait_all_tasks_blocked()
            assert handler.status == bz.RunStatus.WAITING_FOR_INPUT
            await trio.sleep(1000)  # waiting for input is not active time: no timeout
            await handler.respond_to_input("q", 42)
            assert (await handler.result()).result == 42


async def test_a_run_left_with_nothing_to_do_stalls_after_any_interleaving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    for _ in range(TRIALS):
        wf, started, go = _gated(lambda: None)
        async with wf.start() as handler:
            await started.wait()
            await _commit_between_commands(handler, go)
            with trio.fail_after(1), pytest.raises(bz.WorkflowStalled):
                await handler.result()


# -- cancellation whose cleanup raises -------------------------------------------------------


async def _cleanup_in_a_child_task_raises() -> None:
    """Sleep forever in a nursery whose child task raises from `finally` when cancelled."""

    async def child() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise RuntimeError("child cleanup failed")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(child)
        await trio.sleep_forever()


async def _cleanup_raises() -> None:
    """Sleep forever; being cancelled, raise from `finally` (no nursery, no group)."""
    try:
        await trio.sleep_forever()
    finally:
        raise ConnectionError("closing the connection failed")


CLEANUPS = [
    pytest.param(_cleanup_in_a_child_task_raises, id="group-from-a-nursery"),
    pytest.param(_cleanup_raises, id="error-from-finally"),
]


def _stuck_beside_a_failure(stuck: Callable[[], Awaitable[None]]) -> bz.Workflow:
    @bz.step
    async def fan(ev: bz.StartEvent) -> list[Work]:
        return [Work(n=0), Work(n=1)]

    @bz.step
    async def work(ev: Work) -> bz.StopEvent:
        if ev.n == 0:
            await trio.sleep(1)
            raise ValueError("the real failure")
        await stuck()
        raise AssertionError("not reached")

    return bz.Workflow("beside", [fan, work])


@pytest.mark.parametrize("stuck", CLEANUPS)
async def test_the_real_step_failure_wins_over_a_cancelled_steps_cleanup(
    autojump_clock: trio.testing.MockClock, stuck: Callable[[], Awaitable[None]]
) -> None:
    with trio.fail_after(GUARD), pytest.raises(bz.StepFailed) as caught:
        await _stuck_beside_a_failure(stuck).run()
    assert isinstance(caught.value.__cause__, ValueError)


@pytest.mark.parametrize("stuck", CLEANUPS)
async def test_a_timed_out_run_is_a_workflow_timeout_noting_the_cleanup(
    autojump_clock: trio.testing.MockClock, stuck: Callable[[], Awaitable[None]]
) -> None:
    @bz.step
    async def hang(ev: bz.StartEvent) -> bz.StopEvent:
        await stuck()
        raise AssertionError("not reached")

    wf = bz.Workflow("hangs", [hang], timeout=5, history=True)
    with trio.fail_after(GUARD), pytest.raises(bz.WorkflowTimeout) as caught:
        await wf.run()
    notes = getattr(caught.value, "__notes__", [])
    assert any("raised while being cancelled" in note for note in notes), notes


@pytest.mark.parametrize("stuck", CLEANUPS)
async def test_a_step_timeout_whose_cleanup_raises_is_a_step_timeout(
    autojump_clock: trio.testing.MockClock, stuck: Callable[[], Awaitable[None]]
) -> None:
    @bz.step(timeout=2)
    async def hang(ev: bz.StartEvent) -> bz.StopEvent:
        await stuck()
        raise AssertionError("not reached")

    with trio.fail_after(GUARD), pytest.raises(bz.StepTimeout):
        await bz.Workflow("step-timeout", [hang]).run()


def _resumable(stuck: Callable[[], Awaitable[None]], attempts: list[int]) -> bz.Workflow:
    @bz.step(retry=bz.RetryPolicy(max_attempts=2, initial_delay=0.1))
    async def slow(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            await stuck()
        return bz.StopEvent(result="finished")

    return bz.Workflow("resumable", [slow], history=True)


@pytest.mark.parametrize("stuck", CLEANUPS)
async def test_a_cancelling_pause_goes_on_when_cleanup_raises(
    autojump_clock: trio.testing.MockClock, stuck: Callable[[], Awaitable[None]]
) -> None:
    attempts: list[int] = []
    async with _resumable(stuck, attempts).start() as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        assert handler.status == bz.RunStatus.PAUSED
        await handler.resume()
        result = await handler.result()
    assert result.result == "finished"
    assert attempts == [1, 1]  # the cancelled attempt used up no retry
    cancelled = [e for e in result.history or () if e.kind is bz.HistoryKind.STEP_CANCELLED]
    assert any("raised while being cancelled" in (e.detail or "") for e in cancelled)


@pytest.mark.parametrize("stuck", CLEANUPS)
async def test_abort_ends_in_workflow_aborted_when_cleanup_raises(
    autojump_clock: trio.testing.MockClock, stuck: Callable[[], Awaitable[None]]
) -> None:
    @bz.step
    async def hang(ev: bz.StartEvent) -> bz.StopEvent:
        await stuck()
        raise AssertionError("not reached")

    async with bz.Workflow("aborted", [hang]).start() as handler:
        await trio.sleep(1)
        await handler.abort()
        with pytest.raises(bz.WorkflowAborted):
            await handler.result()


@pytest.mark.parametrize("stuck", CLEANUPS)
async def test_an_inline_input_handler_whose_cleanup_raises_is_still_paused(
    autojump_clock: trio.testing.MockClock, stuck: Callable[[], Awaitable[None]]
) -> None:
    calls: list[str] = []

    async def human(request: bz.InputRequestEvent) -> Any:
        calls.append(request.request_id)
        if len(calls) == 1:
            await stuck()
        return "yes"

    @bz.step
    async def ask(ev: bz.StartEvent) -> bz.InputRequestEvent:
        return bz.InputRequestEvent(prompt="ok?", request_id="r")

    @bz.step
    async def answer(ev: bz.InputResponseEvent) -> bz.StopEvent:
        return bz.StopEvent(result=ev.response)

    wf = bz.Workflow("inline", [ask, answer], input_handler=human)
    async with wf.start() as handler:
        await trio.sleep(1)
        await handler.pause()
        assert handler.status == bz.RunStatus.PAUSED
        await handler.resume()
        result = await handler.result()
    assert (result.result, calls) == ("yes", ["r", "r"])


# -- an inline input handler waits for input -------------------------------------------------


async def test_an_inline_input_handler_waiting_is_not_active_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    answered = trio.Event()

    async def slow_human(request: bz.InputRequestEvent) -> Any:
        await answered.wait()
        return "late"

    @bz.step
    async def ask(ev: bz.StartEvent) -> bz.InputRequestEvent:
        return bz.InputRequestEvent(prompt="?", request_id="r")

    @bz.step
    async def answer(ev: bz.InputResponseEvent) -> bz.StopEvent:
        return bz.StopEvent(result=ev.response)

    wf = bz.Workflow("patient", [ask, answer], input_handler=slow_human, timeout=10)
    async with wf.start() as handler:
        await trio.testing.wait_all_tasks_blocked()
        assert handler.status == bz.RunStatus.WAITING_FOR_INPUT
        await trio.sleep(1000)  # a person at a prompt, far past the timeout
        answered.set()
        result = await handler.result()
    assert result.result == "late"


# -- KeyboardInterrupt inside a step ------------------------------------------------------------


def _interrupted() -> bz.Workflow:
    @bz.step
    async def press_ctrl_c(ev: bz.StartEvent) -> bz.StopEvent:
        raise KeyboardInterrupt

    return bz.Workflow("interrupted", [press_ctrl_c])


async def test_a_keyboard_interrupt_in_a_step_leaves_run_bare() -> None:
    with pytest.raises(KeyboardInterrupt):
        await _interrupted().run()


async def test_a_keyboard_interrupt_in_a_step_leaves_start_bare() -> None:
    async def block() -> None:
        async with _interrupted().start() as handler:
            await handler.result()

    with pytest.raises(KeyboardInterrupt):
        await block()
