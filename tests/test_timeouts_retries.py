"""Workflow and step timeouts, retries with backoff in virtual time, and rollback on failure.

Every test that sleeps or times out uses `autojump_clock`: virtual time, exact and instant.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
import trio.testing

import blazen_trio as bz


class Work(bz.Event):
    pass


class Note(bz.Event):
    attempt: int


class Left(bz.Event):
    pass


class Right(bz.Event):
    pass


class LeftDone(bz.Event):
    pass


class RightDone(bz.Event):
    pass


# Virtual seconds after which a test that should have timed out fails instead of hanging.
GUARD = 3600


def no_jitter(max_attempts: int = 3, **options: Any) -> bz.RetryPolicy:
    return bz.RetryPolicy(max_attempts=max_attempts, jitter=0.0, **options)


# -- workflow timeout ----------------------------------------------------------------------


async def test_workflow_timeout_fails_the_run(autojump_clock: trio.testing.MockClock) -> None:
    finally_ran: list[float] = []
    start = trio.current_time()

    @bz.step
    async def forever(ev: bz.StartEvent) -> bz.StopEvent:
        try:
            await trio.sleep_forever()
        finally:
            finally_ran.append(trio.current_time() - start)

    with trio.fail_after(GUARD), pytest.raises(bz.WorkflowTimeout) as caught:
        await bz.Workflow("slow", [forever], timeout=5).run()
    assert type(caught.value) is bz.WorkflowTimeout
    assert caught.value.timeout == 5
    assert trio.current_time() - start == pytest.approx(5)
    assert finally_ran == [pytest.approx(5)]


async def test_workflow_timeout_spans_all_steps(autojump_clock: trio.testing.MockClock) -> None:
    reached: list[str] = []

    @bz.step
    async def first(ev: bz.StartEvent) -> Work:
        reached.append("first")
        await trio.sleep(3)
        return Work()

    @bz.step
    async def second(ev: Work) -> bz.StopEvent:
        reached.append("second")
        await trio.sleep(3)
        reached.append("second done")
        return bz.StopEvent()

    start = trio.current_time()
    with trio.fail_after(GUARD), pytest.raises(bz.WorkflowTimeout):
        await bz.Workflow("spans", [first, second], timeout=5).run()
    assert reached == ["first", "second"]
    assert trio.current_time() - start == pytest.approx(5)


async def test_a_run_inside_its_timeout_completes(autojump_clock: trio.testing.MockClock) -> None:
    @bz.step
    async def quick(ev: bz.StartEvent) -> bz.StopEvent:
        await trio.sleep(4.5)
        return bz.StopEvent(result="in time")

    result = await bz.Workflow("quick", [quick], timeout=5).run()
    assert result.result == "in time"


async def test_workflow_timeout_sets_status_failed(autojump_clock: trio.testing.MockClock) -> None:
    @bz.step
    async def forever(ev: bz.StartEvent) -> bz.StopEvent:
        await trio.sleep_forever()

    async with bz.Workflow("slow", [forever], timeout=1).start() as handler:
        with trio.fail_after(GUARD), pytest.raises(bz.WorkflowTimeout):
            await handler.result()
        assert handler.status == bz.RunStatus.FAILED


# -- step timeout --------------------------------------------------------------------------


async def test_step_timeout_is_step_timeout(autojump_clock: trio.testing.MockClock) -> None:
    finally_ran: list[str] = []

    @bz.step(timeout=2)
    async def stuck(ev: bz.StartEvent) -> bz.StopEvent:
        try:
            await trio.sleep_forever()
        finally:
            finally_ran.append("stuck")

    start = trio.current_time()
    with trio.fail_after(GUARD), pytest.raises(bz.StepTimeout) as caught:
        await bz.Workflow("stuck", [stuck]).run()
    assert isinstance(caught.value, bz.StepFailed)
    assert caught.value.step_name == "stuck"
    assert caught.value.timeout == 2
    assert trio.current_time() - start == pytest.approx(2)
    assert finally_ran == ["stuck"]


async def test_step_timeout_applies_to_each_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []
    start = trio.current_time()

    @bz.step(timeout=3, retry=no_jitter(initial_delay=1))
    async def slow_then_ok(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        starts.append(trio.current_time() - start)
        await trio.sleep(10 if ctx.attempt == 1 else 2)  # attempt 2 fits in its own 3 s
        return bz.StopEvent(result=ctx.attempt)

    result = await bz.Workflow("per_attempt", [slow_then_ok]).run()
    assert result.result == 2
    assert starts == pytest.approx([0, 4])
    assert trio.current_time() - start == pytest.approx(6)


async def test_step_timeouts_are_retried_until_exhausted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[int] = []

    @bz.step(timeout=2, retry=no_jitter(max_attempts=3, initial_delay=1))
    async def stuck(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        attempts.append(ctx.attempt)
        await trio.sleep_forever()

    start = trio.current_time()
    with trio.fail_after(GUARD), pytest.raises(bz.StepTimeout) as caught:
        await bz.Workflow("stuck", [stuck]).run()
    assert caught.value.step_name == "stuck"
    assert attempts == [1, 2, 3]
    # three 2 s attempts, with 1 s and 2 s of backoff in between
    assert trio.current_time() - start == pytest.approx(2 + 1 + 2 + 2 + 2)


async def test_timeouts_are_not_retried_when_retry_on_excludes_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[int] = []

    @bz.step(timeout=1, retry=no_jitter(retry_on=(ValueError,)))
    async def stuck(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        attempts.append(ctx.attempt)
        await trio.sleep_forever()

    with trio.fail_after(GUARD), pytest.raises(bz.StepTimeout):
        await bz.Workflow("stuck", [stuck]).run()
    assert attempts == [1]


async def test_retry_on_step_timeout_retries_only_timeouts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[int] = []

    @bz.step(timeout=1, retry=no_jitter(max_attempts=5, retry_on=bz.StepTimeout))
    async def stuck_then_broken(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            await trio.sleep_forever()
        raise ValueError("not a timeout")

    with pytest.raises(bz.StepFailed) as caught:
        await bz.Workflow("mixed", [stuck_then_broken]).run()
    assert attempts == [1, 2]
    assert type(caught.value) is bz.StepFailed
    assert isinstance(caught.value.__cause__, ValueError)


# -- retries -------------------------------------------------------------------------------


async def test_a_retry_succeeds_after_failures(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[int] = []

    @bz.step(retry=no_jitter(max_attempts=3))
    async def flaky(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt}")
        return bz.StopEvent(result="third time")

    result = await bz.Workflow("flaky", [flaky]).run()
    assert result.result == "third time"
    assert attempts == [1, 2, 3]


async def test_exhausted_retries_fail_with_the_last_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[int] = []

    @bz.step(retry=no_jitter(max_attempts=4))
    async def broken(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        attempts.append(ctx.attempt)
        raise ConnectionError(f"attempt {ctx.attempt}")

    with pytest.raises(bz.StepFailed) as caught:
        await bz.Workflow("broken", [broken]).run()
    assert attempts == [1, 2, 3, 4]
    assert caught.value.step_name == "broken"
    assert isinstance(caught.value.__cause__, ConnectionError)
    assert str(caught.value.__cause__) == "attempt 4"


async def test_max_attempts_one_means_no_retry() -> None:
    attempts: list[int] = []

    @bz.step(retry=bz.RetryPolicy(max_attempts=1))
    async def once(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        attempts.append(ctx.attempt)
        raise ConnectionError("once")

    with pytest.raises(bz.StepFailed):
        await bz.Workflow("once", [once]).run()
    assert attempts == [1]


async def test_no_policy_means_no_retry() -> None:
    attempts: list[int] = []

    @bz.step
    async def once(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        attempts.append(ctx.attempt)
        raise ConnectionError("once")

    with pytest.raises(bz.StepFailed):
        await bz.Workflow("once", [once]).run()
    assert attempts == [1]


@pytest.mark.parametrize(
    ("policy", "expected_starts"),
    [
        (no_jitter(4, initial_delay=1, multiplier=2), [0, 1, 3, 7]),
        (no_jitter(4, initial_delay=0.5, multiplier=3), [0, 0.5, 2, 6.5]),
        (no_jitter(5, initial_delay=1, multiplier=2, max_delay=3), [0, 1, 3, 6, 9]),
        (no_jitter(3, initial_delay=2, multiplier=1), [0, 2, 4]),
        (no_jitter(3, initial_delay=0), [0, 0, 0]),
    ],
)
async def test_backoff_delays_in_virtual_time(
    autojump_clock: trio.testing.MockClock, policy: bz.RetryPolicy, expected_starts: list[float]
) -> None:
    starts: list[float] = []
    start = trio.current_time()

    @bz.step(retry=policy)
    async def broken(ev: bz.StartEvent) -> bz.StopEvent:
        starts.append(trio.current_time() - start)
        raise ConnectionError("down")

    with pytest.raises(bz.StepFailed):
        await bz.Workflow("backoff", [broken]).run()
    assert starts == pytest.approx(expected_starts)


async def test_jittered_delays_stay_within_the_spread(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []
    policy = bz.RetryPolicy(max_attempts=6, initial_delay=2, multiplier=2, jitter=0.5)

    @bz.step(retry=policy)
    async def broken(ev: bz.StartEvent) -> bz.StopEvent:
        starts.append(trio.current_time())
        raise ConnectionError("down")

    with pytest.raises(bz.StepFailed):
        await bz.Workflow("jitter", [broken]).run()
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert len(gaps) == 5
    for attempt, gap in enumerate(gaps, start=2):
        base = min(2 * 2 ** (attempt - 2), policy.max_delay)
        assert base * 0.5 <= gap <= base * 1.5


async def test_retry_on_filters_which_errors_are_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[int] = []

    @bz.step(retry=no_jitter(max_attempts=5, retry_on=(ConnectionError, TimeoutError)))
    async def picky(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("retried")
        if ctx.attempt == 2:
            raise TimeoutError("retried")
        raise TypeError("not retried")

    with pytest.raises(bz.StepFailed) as caught:
        await bz.Workflow("picky", [picky]).run()
    assert attempts == [1, 2, 3]
    assert isinstance(caught.value.__cause__, TypeError)


async def test_retry_on_matches_subclasses(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[int] = []

    @bz.step(retry=no_jitter(retry_on=OSError))
    async def network(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionResetError("a subclass of OSError")
        return bz.StopEvent(result="ok")

    assert (await bz.Workflow("sub", [network]).run()).result == "ok"
    assert attempts == [1, 2]


async def test_the_workflow_retry_applies_to_steps_without_their_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[int] = []

    @bz.step
    async def flaky(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        attempts.append(ctx.attempt)
        if ctx.attempt < 2:
            raise ConnectionError("once")
        return bz.StopEvent(result=ctx.attempt)

    wf = bz.Workflow("wf_retry", [flaky], retry=no_jitter(max_attempts=2))
    assert (await wf.run()).result == 2
    assert attempts == [1, 2]


async def test_a_step_retry_overrides_the_workflow_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[int] = []

    @bz.step(retry=no_jitter(max_attempts=2))
    async def broken(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        attempts.append(ctx.attempt)
        raise ConnectionError("down")

    wf = bz.Workflow("override", [broken], retry=no_jitter(max_attempts=5))
    with pytest.raises(bz.StepFailed):
        await wf.run()
    assert attempts == [1, 2]


# -- RetryPolicy on its own ----------------------------------------------------------------


def test_policy_defaults() -> None:
    policy = bz.RetryPolicy()
    assert (policy.max_attempts, policy.initial_delay, policy.max_delay) == (3, 1.0, 30.0)
    assert (policy.multiplier, policy.jitter, policy.retry_on) == (2.0, 0.25, (Exception,))


@pytest.mark.parametrize(
    ("attempt", "delay"), [(2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 10.0), (9, 10.0)]
)
def test_delay_before_without_jitter(attempt: int, delay: float) -> None:
    policy = bz.RetryPolicy(initial_delay=1, multiplier=2, max_delay=10, jitter=0)
    assert policy.delay_before(attempt) == delay


def test_delay_before_with_jitter_spreads_around_the_base() -> None:
    policy = bz.RetryPolicy(initial_delay=4, multiplier=2, max_delay=100, jitter=0.25)
    samples = [policy.delay_before(3) for _ in range(200)]
    assert all(6.0 <= s <= 10.0 for s in samples)
    assert min(samples) < 8.0 < max(samples)  # jitter is applied, on both sides


def test_full_jitter_never_gives_a_negative_delay() -> None:
    policy = bz.RetryPolicy(initial_delay=1, jitter=1.0)
    assert all(0.0 <= policy.delay_before(2) <= 2.0 for _ in range(200))


def test_should_retry_counts_every_attempt() -> None:
    policy = bz.RetryPolicy(max_attempts=3, retry_on=ValueError)
    assert policy.should_retry(ValueError(), 1)
    assert policy.should_retry(ValueError(), 2)
    assert not policy.should_retry(ValueError(), 3)
    assert not policy.should_retry(TypeError(), 1)


def test_retry_on_accepts_a_single_type_or_a_collection() -> None:
    assert bz.RetryPolicy(retry_on=ValueError).retry_on == (ValueError,)
    assert bz.RetryPolicy(retry_on=[ValueError, KeyError]).retry_on == (ValueError, KeyError)


# -- rollback of a failed attempt ----------------------------------------------------------


async def test_a_failed_attempt_state_writes_are_rolled_back() -> None:
    seen_by_retry: list[dict[str, Any]] = []

    @bz.step
    async def seed(ctx: bz.Context, ev: bz.StartEvent) -> Work:
        ctx.set("kept", "original")
        ctx.set("doomed", "present")
        return Work()

    @bz.step(retry=no_jitter(initial_delay=0))
    async def flaky(ctx: bz.Context, ev: Work) -> bz.StopEvent:
        if ctx.attempt == 1:
            ctx.set("kept", "changed")
            ctx.set("kept", "changed twice")
            ctx.set("added", 1)
            ctx.delete("doomed")
            raise ConnectionError("rolled back")
        keys = ctx.keys()  # a list, not a dict view: Context is not iterable
        seen_by_retry.append({key: ctx.get(key) for key in keys})
        return bz.StopEvent()

    await bz.Workflow("rollback", [seed, flaky]).run()
    assert seen_by_retry == [{"kept": "original", "doomed": "present"}]


async def test_a_failed_attempt_sent_events_are_discarded() -> None:
    @bz.step(retry=no_jitter(initial_delay=0))
    async def flaky(ctx: bz.Context, ev: bz.StartEvent) -> Note | None:
        ctx.send_event(Note(attempt=ctx.attempt))
        if ctx.attempt == 1:
            raise ConnectionError("the note of attempt 1 must not be routed")
        return None

    @bz.step(max_concurrency=1)  # a leaked note would be handled first
    async def note(ev: Note) -> bz.StopEvent:
        return bz.StopEvent(result=ev.attempt)

    assert (await bz.Workflow("sent", [flaky, note]).run()).result == 2


async def test_a_failed_attempt_collect_is_rolled_back() -> None:
    calls: list[tuple[int, str, bool]] = []

    @bz.step
    async def fan_out(ev: bz.StartEvent) -> list[Left | Right]:
        return [Left(), Right()]

    @bz.step(max_concurrency=1, retry=no_jitter(initial_delay=0))
    async def join(ctx: bz.Context, ev: Left | Right) -> bz.StopEvent | None:
        got = ctx.collect_events(ev, [Left, Right])
        calls.append((ctx.attempt, type(ev).__name__, got is not None))
        if got is None:
            return None
        if ctx.attempt == 1:
            raise ConnectionError("the completed collect must be undone")
        return bz.StopEvent(result=[type(e).__name__ for e in got])

    result = await bz.Workflow("collect", [fan_out, join]).run()
    assert result.result == ["Left", "Right"]
    assert calls == [(1, "Left", False), (1, "Right", True), (2, "Right", True)]


async def test_rollback_keeps_a_later_write_of_another_step() -> None:
    x_wrote = trio.Event()
    y_wrote = trio.Event()

    @bz.step
    async def fan_out(ev: bz.StartEvent) -> list[Left | Right]:
        return [Left(), Right()]

    @bz.step(retry=no_jitter(max_attempts=2, initial_delay=0))
    async def x(ctx: bz.Context, ev: Left) -> LeftDone:
        if ctx.attempt == 1:
            ctx.set("k", "x")
            x_wrote.set()
            await y_wrote.wait()
            raise ConnectionError("x fails after y overwrote k")
        return LeftDone()

    @bz.step
    async def y(ctx: bz.Context, ev: Right) -> RightDone:
        await x_wrote.wait()
        ctx.set("k", "y")
        y_wrote.set()
        return RightDone()

    @bz.step
    async def join(ctx: bz.Context, ev: LeftDone | RightDone) -> bz.StopEvent | None:
        if ctx.collect_events(ev, [LeftDone, RightDone]) is None:
            return None
        return bz.StopEvent(result=ctx.get("k"))

    assert (await bz.Workflow("later", [fan_out, x, y, join]).run()).result == "y"


# Engine bug (blazen_trio/_state.py, _StateWrite.undo): each undo record restores its own
# `previous`, so when two attempts write one key in turn and both fail, undoing the later one
# restores the earlier failed attempt's value, which was already "rolled back".
async def test_interleaved_failed_attempts_leave_no_trace() -> None:
    x_wrote = trio.Event()
    y_wrote = trio.Event()
    x_failed = trio.Event()
    policy = no_jitter(max_attempts=2, initial_delay=0)

    @bz.step
    async def fan_out(ev: bz.StartEvent) -> list[Left | Right]:
        return [Left(), Right()]

    @bz.step(retry=policy)
    async def x(ctx: bz.Context, ev: Left) -> LeftDone:
        if ctx.attempt == 1:
            ctx.set("k", "from failed x")
            x_wrote.set()
            await y_wrote.wait()
            x_failed.set()
            raise ConnectionError("x")
        return LeftDone()

    @bz.step(retry=policy)
    async def y(ctx: bz.Context, ev: Right) -> RightDone:
        if ctx.attempt == 1:
            await x_wrote.wait()
            ctx.set("k", "from failed y")
            y_wrote.set()
            await x_failed.wait()
            raise ConnectionError("y")
        return RightDone()

    @bz.step
    async def join(ctx: bz.Context, ev: LeftDone | RightDone) -> bz.StopEvent | None:
        if ctx.collect_events(ev, [LeftDone, RightDone]) is None:
            return None
        return bz.StopEvent(result=ctx.get("k", "<missing>"))

    assert (await bz.Workflow("interleaved", [fan_out, x, y, join]).run()).result == "<missing>"
