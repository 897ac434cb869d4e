"""Usage totals and history: computed by the run itself, exact whatever subscribers do.

Histories are checked entry by entry (kind, step, event type, attempt) in order, with the
sequence numbers 1..n: strictly increasing and complete. Durations use `autojump_clock`.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import blazen_trio as bz
from blazen_trio._history import History

# Virtual seconds after which a test that should have ended fails instead of hanging.
GUARD = 3600

K = bz.HistoryKind
START = bz.event_type_id(bz.StartEvent)
STOP = bz.event_type_id(bz.StopEvent)

# Exactly representable, so sums are exact.
CALL = bz.UsageEvent(
    provider="acme",
    model="m1",
    prompt_tokens=3,
    completion_tokens=4,
    total_tokens=7,
    cost_usd=0.125,
)


class Middle(bz.Event):
    pass


class Tick(bz.Event):
    n: int


class Branch(bz.Event):
    i: int


class Done(bz.Event):
    i: int


MIDDLE = bz.event_type_id(Middle)


def no_jitter(max_attempts: int) -> bz.RetryPolicy:
    return bz.RetryPolicy(max_attempts=max_attempts, initial_delay=1.0, jitter=0.0)


def shape(history: tuple[bz.HistoryEntry, ...] | None) -> list[tuple[Any, ...]]:
    """(kind, step, event type, attempt) of every entry, after checking the sequence."""
    assert history is not None
    assert [entry.sequence for entry in history] == list(range(1, len(history) + 1))
    return [(e.kind, e.step, e.event_type, e.attempt) for e in history]


def chain(**options: Any) -> bz.Workflow:
    """start -> first -> Middle -> second -> StopEvent("done"); `second` sleeps 2s."""

    @bz.step
    async def first(ev: bz.StartEvent) -> Middle:
        return Middle()

    @bz.step
    async def second(ev: Middle) -> bz.StopEvent:
        await trio.sleep(2)
        return bz.StopEvent(result="done")

    return bz.Workflow("chain", [first, second], **options)


def spender(calls: int, gate: trio.Event | None = None) -> bz.Workflow:
    """Emits `calls` usage events, waits for `gate`, emits `calls` more, stops."""

    @bz.step
    async def spend(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        for _ in range(calls):
            ctx.emit_usage(CALL)
        if gate is not None:
            await gate.wait()
            for _ in range(calls):
                ctx.emit_usage(CALL)
        return bz.StopEvent(result="spent")

    return bz.Workflow("spender", [spend])


def totals(calls: int) -> bz.Usage:
    return bz.Usage(prompt_tokens=3 * calls, completion_tokens=4 * calls, total_tokens=7 * calls)


# -- usage ---------------------------------------------------------------------------------


async def test_usage_is_live_on_the_handler_and_summed_in_the_result() -> None:
    gate = trio.Event()
    async with spender(10, gate).start() as handler:
        assert handler.usage == bz.Usage()
        assert handler.cost_usd == 0.0
        await trio.testing.wait_all_tasks_blocked()
        assert handler.usage == totals(10)
        assert handler.cost_usd == 1.25
        gate.set()
        result = await handler.result()
        assert handler.usage == totals(20)
        assert handler.cost_usd == 2.5
    assert result.usage == totals(20)
    assert result.cost_usd == 2.5


async def test_usage_is_exact_under_a_lagging_subscriber() -> None:
    gate = trio.Event()
    async with spender(5_000, gate).start() as handler:
        lagging = handler.stream_events(buffer=1)
        await trio.testing.wait_all_tasks_blocked()
        assert handler.usage == totals(5_000)
        assert handler.cost_usd == 625.0
        gate.set()
        result = await handler.result()
        got = [event async for event in lagging]
    assert result.usage == handler.usage == totals(10_000)
    assert result.cost_usd == handler.cost_usd == 1_250.0
    # 10,000 usage events + the StopEvent published; the subscriber kept only the last one.
    assert got == [bz.StreamLagged(missed=10_000), result.event]


async def test_usage_is_exact_with_a_slow_consumer_reading_along() -> None:
    read: list[bz.Event] = []
    turn = trio.Event()

    async def slow(events: bz.EventStream) -> None:
        async for event in events:
            read.append(event)
            await turn.wait()

    async with spender(1_000).start() as handler, trio.open_nursery() as nursery:
        nursery.start_soon(slow, handler.stream_events(buffer=1))
        result = await handler.result()
        turn.set()
    assert result.usage == totals(1_000)
    assert result.cost_usd == 125.0
    assert read[-1] == result.event
    lagged = [event for event in read if isinstance(event, bz.StreamLagged)]
    assert sum(event.missed for event in lagged) + len(read) - len(lagged) == 1_001


async def test_usage_of_concurrent_steps_adds_up() -> None:
    @bz.step
    async def fan_out(ev: bz.StartEvent) -> list[Branch]:
        return [Branch(i=i) for i in range(8)]

    @bz.step
    async def branch(ctx: bz.Context, ev: Branch) -> Done:
        for _ in range(ev.i + 1):
            ctx.emit_usage(CALL)
            await trio.lowlevel.checkpoint()
        return Done(i=ev.i)

    @bz.step
    async def join(ctx: bz.Context, ev: Done) -> bz.StopEvent | None:
        if ctx.collect_events(ev, [Done] * 8) is None:
            return None
        return bz.StopEvent(result="joined")

    result = await bz.Workflow("fan", [fan_out, branch, join]).run()
    assert result.usage == totals(36)  # 1 + 2 + ... + 8
    assert result.cost_usd == 4.5


async def test_usage_of_a_failed_attempt_counts_and_survives_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @bz.step(retry=no_jitter(2))
    async def spend(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        ctx.emit_usage(CALL)  # the tokens were spent, whatever happens next
        raise ValueError("model said no")

    with trio.fail_after(GUARD):
        async with bz.Workflow("spent", [spend]).start() as handler:
            with pytest.raises(bz.StepFailed):
                await handler.result()
    assert handler.usage == totals(2)
    assert handler.cost_usd == 0.25


async def test_emit_usage_takes_only_usage_events() -> None:
    errors: list[Exception] = []

    @bz.step
    async def misuse(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        try:
            ctx.emit_usage(Middle())  # type: ignore[arg-type]  # the mistake under test
        except TypeError as exc:
            errors.append(exc)
        return bz.StopEvent()

    result = await bz.Workflow("misuse", [misuse]).run()
    assert len(errors) == 1
    assert "UsageEvent" in str(errors[0])
    assert result.usage == bz.Usage()
    assert result.cost_usd == 0.0


# -- history: the whole story, in order ----------------------------------------------------


async def test_history_of_a_successful_run(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(GUARD):
        async with chain(history=True).start() as handler:
            result = await handler.result()
    assert shape(result.history) == [
        (K.RUN_STARTED, None, None, None),
        (K.EVENT_RECEIVED, None, START, None),
        (K.STEP_DISPATCHED, "first", START, 1),
        (K.STEP_COMPLETED, "first", None, None),
        (K.EVENT_RECEIVED, "first", MIDDLE, None),
        (K.STEP_DISPATCHED, "second", MIDDLE, 1),
        (K.STEP_COMPLETED, "second", None, None),
        (K.EVENT_RECEIVED, "second", STOP, None),
        (K.COMPLETED, None, None, None),
    ]
    assert result.history is not None
    durations = [e.duration for e in result.history if e.kind is K.STEP_COMPLETED]
    assert durations == [0.0, 2.0]  # virtual time: exact
    assert handler.history == result.history
    assert isinstance(result.history, tuple)


async def test_history_of_a_failed_run(autojump_clock: trio.testing.MockClock) -> None:
    @bz.step
    async def first(ev: bz.StartEvent) -> Middle:
        return Middle()

    @bz.step
    async def second(ev: Middle) -> bz.StopEvent:
        await trio.sleep(1.5)
        raise ValueError("boom")

    with trio.fail_after(GUARD):
        async with bz.Workflow("failing", [first, second], history=True).start() as handler:
            with pytest.raises(bz.StepFailed) as caught:
                await handler.result()
    history = handler.history
    assert shape(history) == [
        (K.RUN_STARTED, None, None, None),
        (K.EVENT_RECEIVED, None, START, None),
        (K.STEP_DISPATCHED, "first", START, 1),
        (K.STEP_COMPLETED, "first", None, None),
        (K.EVENT_RECEIVED, "first", MIDDLE, None),
        (K.STEP_DISPATCHED, "second", MIDDLE, 1),
        (K.STEP_FAILED, "second", None, 1),
        (K.FAILED, None, None, None),
    ]
    assert history is not None
    assert history[-2].detail == "ValueError: boom"
    assert history[-2].duration == 1.5
    assert history[-1].detail == str(caught.value)


async def test_history_records_retries(autojump_clock: trio.testing.MockClock) -> None:
    @bz.step(retry=no_jitter(3))
    async def flaky(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        if ctx.attempt < 3:
            raise ValueError(f"attempt {ctx.attempt}")
        return bz.StopEvent(result="third time")

    with trio.fail_after(GUARD):
        result = await bz.Workflow("flaky", [flaky], history=True).run()
    assert shape(result.history) == [
        (K.RUN_STARTED, None, None, None),
        (K.EVENT_RECEIVED, None, START, None),
        (K.STEP_DISPATCHED, "flaky", START, 1),
        (K.STEP_FAILED, "flaky", None, 1),
        (K.STEP_RETRIED, "flaky", None, 2),
        (K.STEP_DISPATCHED, "flaky", START, 2),
        (K.STEP_FAILED, "flaky", None, 2),
        (K.STEP_RETRIED, "flaky", None, 3),
        (K.STEP_DISPATCHED, "flaky", START, 3),
        (K.STEP_COMPLETED, "flaky", None, None),
        (K.EVENT_RECEIVED, "flaky", STOP, None),
        (K.COMPLETED, None, None, None),
    ]
    assert result.history is not None
    failures = [e.detail for e in result.history if e.kind is K.STEP_FAILED]
    assert failures == ["ValueError: attempt 1", "ValueError: attempt 2"]


async def test_history_of_a_workflow_timeout(autojump_clock: trio.testing.MockClock) -> None:
    @bz.step
    async def forever(ev: bz.StartEvent) -> bz.StopEvent:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    wf = bz.Workflow("slow", [forever], timeout=5.0, history=True)
    with trio.fail_after(GUARD):
        async with wf.start() as handler:
            with pytest.raises(bz.WorkflowTimeout) as caught:
                await handler.result()
    history = handler.history
    assert shape(history) == [
        (K.RUN_STARTED, None, None, None),
        (K.EVENT_RECEIVED, None, START, None),
        (K.STEP_DISPATCHED, "forever", START, 1),
        (K.TIMED_OUT, None, None, None),
    ]
    assert history is not None
    assert history[-1].detail == str(caught.value)


@pytest.mark.parametrize("how", ["abort", "leave the block"])
async def test_history_of_an_aborted_run(how: str) -> None:
    started = trio.Event()

    @bz.step
    async def forever(ev: bz.StartEvent) -> bz.StopEvent:
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with bz.Workflow("stuck", [forever], history=True).start() as handler:
        await started.wait()
        if how == "abort":
            await handler.abort()
    with pytest.raises(bz.WorkflowAborted):
        await handler.result()
    assert shape(handler.history) == [
        (K.RUN_STARTED, None, None, None),
        (K.EVENT_RECEIVED, None, START, None),
        (K.STEP_DISPATCHED, "forever", START, 1),
        (K.ABORTED, None, None, None),
    ]


async def test_history_of_pause_resume_and_input() -> None:
    @bz.step
    async def ask(ev: bz.StartEvent) -> bz.InputRequestEvent:
        return bz.InputRequestEvent(prompt="go?", request_id="r1")

    @bz.step
    async def answer(ev: bz.InputResponseEvent) -> bz.StopEvent:
        return bz.StopEvent(result=ev.response)

    async with bz.Workflow("hitl", [ask, answer], history=True).start() as handler:
        await trio.testing.wait_all_tasks_blocked()
        assert handler.status == bz.RunStatus.WAITING_FOR_INPUT
        await handler.pause()
        await handler.resume()
        await handler.respond_to_input("r1", "yes")
        result = await handler.result()
    response = bz.event_type_id(bz.InputResponseEvent)
    assert shape(result.history) == [
        (K.RUN_STARTED, None, None, None),
        (K.EVENT_RECEIVED, None, START, None),
        (K.STEP_DISPATCHED, "ask", START, 1),
        (K.STEP_COMPLETED, "ask", None, None),
        (K.EVENT_RECEIVED, "ask", bz.event_type_id(bz.InputRequestEvent), None),
        (K.INPUT_REQUESTED, "ask", None, None),
        (K.PAUSED, None, None, None),
        (K.RESUMED, None, None, None),
        (K.INPUT_RECEIVED, None, None, None),
        (K.EVENT_RECEIVED, "__human_input", response, None),
        (K.STEP_DISPATCHED, "answer", response, 1),
        (K.STEP_COMPLETED, "answer", None, None),
        (K.EVENT_RECEIVED, "answer", STOP, None),
        (K.COMPLETED, None, None, None),
    ]
    assert result.history is not None
    details = {e.kind: e.detail for e in result.history}
    assert details[K.INPUT_REQUESTED] == details[K.INPUT_RECEIVED] == "r1"
    assert details[K.PAUSED] == "drain"


async def test_history_sequence_is_complete_with_concurrent_steps() -> None:
    @bz.step
    async def fan_out(ev: bz.StartEvent) -> list[Branch]:
        return [Branch(i=i) for i in range(20)]

    @bz.step
    async def branch(ev: Branch) -> Done:
        for _ in range(ev.i % 3):
            await trio.lowlevel.checkpoint()
        return Done(i=ev.i)

    @bz.step
    async def join(ctx: bz.Context, ev: Done) -> bz.StopEvent | None:
        if ctx.collect_events(ev, [Done] * 20) is None:
            return None
        return bz.StopEvent(result="joined")

    result = await bz.Workflow("fan", [fan_out, branch, join], history=True).run()
    kinds = [kind for kind, *_ in shape(result.history)]
    # start: 4 entries; fan_out's 20 Branch: 20 received + 20 x (dispatched, completed);
    # 20 Done: 20 received + 20 x (dispatched, completed); the StopEvent: received, completed.
    assert len(kinds) == 4 + 60 + 60 + 2
    assert kinds.count(K.STEP_DISPATCHED) == kinds.count(K.STEP_COMPLETED) == 1 + 20 + 20
    assert kinds[-1] is K.COMPLETED


async def test_history_is_none_unless_enabled() -> None:
    gate = trio.Event()

    @bz.step
    async def wait(ev: bz.StartEvent) -> bz.StopEvent:
        await gate.wait()
        return bz.StopEvent()

    async with bz.Workflow("plain", [wait]).start() as handler:
        assert handler.history is None
        gate.set()
        result = await handler.result()
    assert result.history is None


async def test_handler_history_is_live() -> None:
    gate = trio.Event()

    @bz.step
    async def wait(ev: bz.StartEvent) -> bz.StopEvent:
        await gate.wait()
        return bz.StopEvent()

    async with bz.Workflow("live", [wait], history=True).start() as handler:
        await trio.testing.wait_all_tasks_blocked()
        assert shape(handler.history) == [
            (K.RUN_STARTED, None, None, None),
            (K.EVENT_RECEIVED, None, START, None),
            (K.STEP_DISPATCHED, "wait", START, 1),
        ]
        gate.set()
        result = await handler.result()
    assert handler.history == result.history
    assert result.history is not None
    assert len(result.history) == 6


# -- history memory is bounded -------------------------------------------------------------


async def test_history_limit_keeps_the_newest_entries() -> None:
    @bz.step
    async def kick_off(ev: bz.StartEvent) -> Tick:
        return Tick(n=0)

    @bz.step
    async def loop(ev: Tick) -> Tick | bz.StopEvent:
        return Tick(n=ev.n + 1) if ev.n < 999 else bz.StopEvent(result=ev.n)

    wf = bz.Workflow("loop", [kick_off, loop], history=True, history_limit=10)
    result = await wf.run()
    history = result.history
    assert history is not None
    assert len(history) == 10
    # started; 1,001 events each received, dispatched, completed; StopEvent received; completed.
    total = 1 + 3 * 1_001 + 2
    assert [e.sequence for e in history] == list(range(total - 9, total + 1))
    assert history[-1].kind is K.COMPLETED
    assert history[0].sequence - 1 == total - 10  # the entries let go, all counted


async def test_history_counts_what_it_drops() -> None:
    history = History(limit=3)
    for _ in range(10):
        history.record(K.EVENT_RECEIVED)
    assert [e.sequence for e in history.entries] == [8, 9, 10]
    assert history.dropped == 7
    assert len(history.entries) == 3


def test_history_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="history limit"):
        History(limit=0)
    with pytest.raises(bz.ValidationError, match="history_limit"):
        chain(history=True, history_limit=0)
