"""The run's stream: order, fan-out, lag notices, replay, the end of the stream, lifecycle events.

No real sleeps: ordering comes from `trio.Event` and `wait_all_tasks_blocked`; anything that
could hang runs under `autojump_clock` inside `trio.fail_after(GUARD)`, so a hang fails fast.
"""

from __future__ import annotations

import gc

import pytest
import trio
import trio.testing

import blazen_trio as bz

# Virtual seconds after which a test that should have ended fails instead of hanging.
GUARD = 3600


class Progress(bz.Event):
    i: int


class Middle(bz.Event):
    pass


class Last(bz.Event):
    pass


class Side(bz.Event):
    pass


async def drain(events: bz.EventStream) -> list[bz.Event]:
    """Everything a subscriber still gets, until its stream ends."""
    return [event async for event in events]


def progress(*indices: int) -> list[bz.Event]:
    return [Progress(i=i) for i in indices]


def writer(count: int, gate: trio.Event | None = None, result: object = "done") -> bz.Workflow:
    """One step writing `Progress(0..count-1)` before its first checkpoint, then (after the
    optional `gate`) ending the run with `result`."""

    @bz.step
    async def write(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        for i in range(count):
            ctx.write_event_to_stream(Progress(i=i))
        if gate is not None:
            await gate.wait()
        return bz.StopEvent(result=result)

    return bz.Workflow("writer", [write])


def two_phase(first: int, second: int, gate: trio.Event, *, stream_replay: int) -> bz.Workflow:
    """Writes `first` events, waits for `gate`, writes `second` more, then stops."""

    @bz.step
    async def write(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        for i in range(first):
            ctx.write_event_to_stream(Progress(i=i))
        await gate.wait()
        for i in range(first, first + second):
            ctx.write_event_to_stream(Progress(i=i))
        return bz.StopEvent(result="done")

    return bz.Workflow("two-phase", [write], stream_replay=stream_replay)


def count_tasks() -> int:
    """Every task alive in this `trio.run`, the root included."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(
            walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks
        )

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


# -- order and fan-out ---------------------------------------------------------------------


async def test_events_arrive_in_order_with_the_stop_event_last() -> None:
    async with writer(50).start() as handler:
        events = handler.stream_events()
        got = await drain(events)
        result = await handler.result()
    assert got == [*progress(*range(50)), bz.StopEvent(result="done")]
    assert got[-1] == result.event


async def test_order_is_kept_across_steps() -> None:
    @bz.step
    async def first(ctx: bz.Context, ev: bz.StartEvent) -> Middle:
        ctx.write_event_to_stream(Progress(i=0))
        await trio.lowlevel.checkpoint()
        ctx.write_event_to_stream(Progress(i=1))
        return Middle()

    @bz.step
    async def second(ctx: bz.Context, ev: Middle) -> bz.StopEvent:
        ctx.write_event_to_stream(Progress(i=2))
        await trio.lowlevel.checkpoint()
        ctx.write_event_to_stream(Progress(i=3))
        return bz.StopEvent(result="done")

    async with bz.Workflow("chain", [first, second]).start() as handler:
        events = handler.stream_events()
        got = await drain(events)
    assert got == [*progress(0, 1, 2, 3), bz.StopEvent(result="done")]


async def test_two_subscribers_see_the_same_events() -> None:
    gate = trio.Event()
    seen: dict[str, list[bz.Event]] = {}

    async def consume(name: str, events: bz.EventStream) -> None:
        seen[name] = await drain(events)

    async with writer(20, gate).start() as handler, trio.open_nursery() as nursery:
        nursery.start_soon(consume, "one", handler.stream_events())
        nursery.start_soon(consume, "two", handler.stream_events())
        await trio.testing.wait_all_tasks_blocked()
        assert handler.stream_statistics().subscribers == 2
        gate.set()
    expected = [*progress(*range(20)), bz.StopEvent(result="done")]
    assert seen == {"one": expected, "two": expected}


async def test_a_subscriber_created_first_in_the_block_sees_the_first_steps_events() -> None:
    # The step writes before its first checkpoint: nothing lies between `start` handing out
    # the handler and the step's first write except the subscription below.
    async with writer(3).start() as handler:
        events = handler.stream_events()
        first = await events.__anext__()
        assert first == Progress(i=0)
        assert events.last_sequence == 1
        rest = await drain(events)
    assert rest == [*progress(1, 2), bz.StopEvent(result="done")]
    assert events.last_sequence == 4


# -- lag: a slow or absent subscriber never stalls the run ---------------------------------


async def test_a_never_reading_subscriber_gets_one_lag_notice_then_the_newest_events() -> None:
    async with writer(10_000).start() as handler:
        events = handler.stream_events(buffer=8)
        result = await handler.result()  # the run finishes although nobody reads
        assert result.result == "done"
        assert handler.stream_statistics().published == 10_001  # 10,000 writes + StopEvent
        got = await drain(events)
    # 10,001 published, the newest 8 kept for this subscriber: 9,993 missed, said once, first.
    assert got == [bz.StreamLagged(missed=9_993), *progress(*range(9_993, 10_000)), result.event]
    lagged = [event for event in got if isinstance(event, bz.StreamLagged)]
    assert len(lagged) == 1
    assert lagged[0].missed + len(got) - 1 == 10_001  # loss is never silent
    assert events.last_sequence == 10_001


async def test_an_absent_subscriber_does_not_grow_memory() -> None:
    gate = trio.Event()
    async with two_phase(5_000, 5_000, gate, stream_replay=0).start() as handler:
        events = handler.stream_events(buffer=8)  # subscribed, then never read
        await trio.testing.wait_all_tasks_blocked()
        statistics = handler.stream_statistics()
        assert statistics.published == 5_000
        assert statistics.kept == 8
        gate.set()
        await handler.result()
        statistics = handler.stream_statistics()
        assert statistics.published == 10_001
        assert statistics.kept == 8
        del events


async def test_write_event_to_stream_never_blocks_with_a_slow_consumer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    read_one = trio.Event()
    may_go_on = trio.Event()
    got: list[bz.Event] = []

    async def slow(events: bz.EventStream) -> None:
        async for event in events:
            got.append(event)
            read_one.set()
            await may_go_on.wait()  # stuck until the run is over

    gate = trio.Event()
    with trio.fail_after(GUARD):
        async with (
            two_phase(1, 10_000, gate, stream_replay=0).start() as handler,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(slow, handler.stream_events(buffer=16))
            await read_one.wait()
            gate.set()  # now the step writes 10,000 events while the consumer is stuck
            result = await handler.result()
            assert got == [Progress(i=0)]
            may_go_on.set()
    # 10,001 events after the first one; the consumer holds 16: it missed 9,985 (told once).
    assert got == [
        Progress(i=0),
        bz.StreamLagged(missed=9_985),
        *progress(*range(9_986, 10_001)),
        result.event,
    ]


async def test_a_buffer_below_one_is_refused() -> None:
    async with writer(0).start() as handler:
        with pytest.raises(ValueError, match="buffer"):
            handler.stream_events(buffer=0)
        await handler.result()


# -- leaving a stream frees it at once -----------------------------------------------------


async def test_break_inside_async_with_unsubscribes_at_once() -> None:
    gate = trio.Event()
    async with two_phase(100, 0, gate, stream_replay=0).start() as handler:
        keeper = handler.stream_events(buffer=10)
        async with handler.stream_events(buffer=1_000) as events:
            await trio.testing.wait_all_tasks_blocked()
            assert handler.stream_statistics() == bz.StreamStatistics(
                subscribers=2, published=100, kept=100
            )
            async for event in events:
                assert event == Progress(i=0)
                break
        # Gone at once: not counted, and the ring shrank back to what the other one needs.
        assert handler.stream_statistics() == bz.StreamStatistics(
            subscribers=1, published=100, kept=10
        )
        await keeper.aclose()
        assert handler.stream_statistics().subscribers == 0
        assert handler.stream_statistics().kept == 0
        gate.set()
        await handler.result()


async def test_aclose_unsubscribes_at_once() -> None:
    gate = trio.Event()
    async with two_phase(100, 0, gate, stream_replay=0).start() as handler:
        events = handler.stream_events(buffer=1_000)
        await trio.testing.wait_all_tasks_blocked()
        assert handler.stream_statistics().subscribers == 1
        assert handler.stream_statistics().kept == 100
        assert await events.__anext__() == Progress(i=0)
        await events.aclose()
        assert handler.stream_statistics().subscribers == 0
        assert handler.stream_statistics().kept == 0
        assert await drain(events) == []  # a closed stream just ends
        gate.set()
        await handler.result()


async def test_a_dropped_stream_stops_holding_memory() -> None:
    # docs/architecture.md: "the stream object being dropped: the ring holds subscribers
    # weakly ... stops holding memory at once". The ring's size must follow.
    gate = trio.Event()
    async with two_phase(10, 1_000, gate, stream_replay=4).start() as handler:
        events = handler.stream_events(buffer=100_000)
        await trio.testing.wait_all_tasks_blocked()
        assert handler.stream_statistics().kept == 10
        del events
        gc.collect()
        assert handler.stream_statistics().subscribers == 0
        gate.set()
        await handler.result()
        # Only the replay window is kept once nobody holds the big buffer.
        assert handler.stream_statistics().kept == 4


# -- replay and sequence numbers -----------------------------------------------------------


async def test_replay_starts_from_the_oldest_kept_event() -> None:
    gate = trio.Event()
    async with two_phase(5, 2, gate, stream_replay=1_024).start() as handler:
        await trio.testing.wait_all_tasks_blocked()  # five events published, nobody listening
        late = handler.stream_events()
        replayed = handler.stream_events(replay=True)
        assert late.last_sequence == 5  # where it stands: after the 5th event
        gate.set()
        got_late = await drain(late)
        got_replayed = await drain(replayed)
    assert got_late == [*progress(5, 6), bz.StopEvent(result="done")]
    assert got_replayed == [*progress(*range(7)), bz.StopEvent(result="done")]
    assert late.last_sequence == replayed.last_sequence == 8


async def test_stream_replay_bounds_what_is_kept() -> None:
    gate = trio.Event()
    async with two_phase(10, 0, gate, stream_replay=3).start() as handler:
        await trio.testing.wait_all_tasks_blocked()
        assert handler.stream_statistics() == bz.StreamStatistics(
            subscribers=0, published=10, kept=3
        )
        events = handler.stream_events(replay=True)
        sequences: list[int] = []
        got: list[bz.Event] = []
        for _ in range(3):
            got.append(await events.__anext__())
            sequences.append(events.last_sequence)
        assert got == progress(7, 8, 9)
        assert sequences == [8, 9, 10]  # 1-based, run-wide
        gate.set()
        assert await drain(events) == [bz.StopEvent(result="done")]
        assert events.last_sequence == 11


async def test_replay_zero_keeps_nothing_for_late_subscribers() -> None:
    gate = trio.Event()
    async with two_phase(10, 1, gate, stream_replay=0).start() as handler:
        await trio.testing.wait_all_tasks_blocked()
        assert handler.stream_statistics().kept == 0
        events = handler.stream_events(replay=True)
        gate.set()
        assert await drain(events) == [Progress(i=10), bz.StopEvent(result="done")]


async def test_replay_is_bounded_by_the_subscribers_own_buffer() -> None:
    gate = trio.Event()
    async with two_phase(100, 0, gate, stream_replay=1_024).start() as handler:
        await trio.testing.wait_all_tasks_blocked()
        events = handler.stream_events(buffer=8, replay=True)
        gate.set()
        await handler.result()
        got = await drain(events)
    # 101 kept by the run, 8 for this subscriber: the lag is announced, not silent.
    assert got == [
        bz.StreamLagged(missed=93),
        *progress(*range(93, 100)),
        bz.StopEvent(result="done"),
    ]


async def test_last_sequence_follows_a_lagging_subscriber() -> None:
    async with writer(20).start() as handler:
        events = handler.stream_events(buffer=4)
        await handler.result()
        sequences: list[tuple[bz.Event, int]] = [
            (event, events.last_sequence) async for event in events
        ]
    assert sequences[0][0] == bz.StreamLagged(missed=17)
    assert [(e, s) for e, s in sequences[1:]] == [
        (Progress(i=17), 18),
        (Progress(i=18), 19),
        (Progress(i=19), 20),
        (bz.StopEvent(result="done"), 21),
    ]


# -- the end of the stream -----------------------------------------------------------------


async def test_the_stream_ends_without_stop_event_when_the_run_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @bz.step
    async def explode(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        ctx.write_event_to_stream(Progress(i=0))
        await trio.lowlevel.checkpoint()
        raise ValueError("boom")

    with trio.fail_after(GUARD):
        async with bz.Workflow("failing", [explode]).start() as handler:
            events = handler.stream_events()
            got = await drain(events)
            with pytest.raises(bz.StepFailed) as caught:
                await handler.result()
    assert got == [Progress(i=0)]
    assert isinstance(caught.value.__cause__, ValueError)
    assert handler.stream_statistics().subscribers == 0


async def test_the_stream_ends_without_stop_event_on_abort(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got: list[bz.Event] = []
    ended = trio.Event()

    async def consume(events: bz.EventStream) -> None:
        got.extend(await drain(events))
        ended.set()

    with trio.fail_after(GUARD):
        async with writer(2, trio.Event()).start() as handler, trio.open_nursery() as nursery:
            nursery.start_soon(consume, handler.stream_events())
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            await handler.abort()
            await ended.wait()
            with pytest.raises(bz.WorkflowAborted):
                await handler.result()
    assert got == progress(0, 1)


async def test_the_stream_ends_when_the_start_block_is_left(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got: list[bz.Event] = []
    with trio.fail_after(GUARD):
        # The consumer lives in the outer nursery; leaving the start block aborts the run and
        # the consumer's loop ends by itself.
        async with trio.open_nursery() as nursery, writer(2, trio.Event()).start() as handler:
            events = handler.stream_events()

            async def consume() -> None:
                got.extend(await drain(events))

            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
    assert got == progress(0, 1)
    with pytest.raises(bz.WorkflowAborted):
        await handler.result()


async def test_subscribing_after_the_run_finished_yields_nothing_and_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(GUARD):
        async with writer(3).start() as handler:
            await handler.result()
            inside = handler.stream_events()
            assert await drain(inside) == []
        after = handler.stream_events()
        assert await drain(after) == []
        async with handler.stream_events() as events:
            assert await drain(events) == []
    assert handler.stream_statistics().subscribers == 0


async def test_subscribing_after_a_failed_run_yields_nothing_and_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @bz.step
    async def explode(ev: bz.StartEvent) -> bz.StopEvent:
        raise ValueError("boom")

    with trio.fail_after(GUARD):
        async with bz.Workflow("failing", [explode]).start() as handler:
            with pytest.raises(bz.StepFailed):
                await handler.result()
        assert await drain(handler.stream_events()) == []


async def test_replay_after_the_run_finished_yields_the_kept_events_and_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(GUARD):
        async with writer(3).start() as handler:
            result = await handler.result()
        assert await drain(handler.stream_events(replay=True)) == [
            *progress(0, 1, 2),
            result.event,
        ]


async def test_the_stop_event_is_last_even_if_a_cancelled_step_writes_afterwards() -> None:
    side_started = trio.Event()

    @bz.step
    async def start(ctx: bz.Context, ev: bz.StartEvent) -> list[bz.Event]:
        return [Side(), Last()]

    @bz.step
    async def side(ctx: bz.Context, ev: Side) -> None:
        try:
            side_started.set()
            await trio.sleep_forever()
        finally:
            ctx.write_event_to_stream(Progress(i=99))  # after the run ended: not published

    @bz.step
    async def last(ctx: bz.Context, ev: Last) -> bz.StopEvent:
        await side_started.wait()
        return bz.StopEvent(result="done")

    async with bz.Workflow("racing", [start, side, last]).start() as handler:
        events = handler.stream_events()
        got = await drain(events)
        await handler.result()
    assert got == [bz.StopEvent(result="done")]


# -- events the run publishes by itself ----------------------------------------------------


async def test_input_requests_are_published() -> None:
    class Answer(bz.Event):
        pass

    @bz.step
    async def ask(ev: bz.StartEvent) -> bz.InputRequestEvent:
        return bz.InputRequestEvent(prompt="name?", request_id="r1")

    @bz.step
    async def finish(ev: bz.InputResponseEvent) -> bz.StopEvent:
        return bz.StopEvent(result=ev.response)

    async with bz.Workflow("hitl", [ask, finish]).start() as handler:
        events = handler.stream_events()
        request = await events.__anext__()
        assert request == bz.InputRequestEvent(prompt="name?", request_id="r1")
        assert handler.pending_input_requests == (request,)
        await handler.respond_to_input("r1", "Ada")
        rest = await drain(events)
    assert rest == [bz.StopEvent(result="Ada")]


async def test_usage_events_are_published() -> None:
    usage = bz.UsageEvent(provider="p", model="m", prompt_tokens=3, completion_tokens=4)

    @bz.step
    async def call_model(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        ctx.emit_usage(usage)
        ctx.write_event_to_stream(Progress(i=0))
        ctx.emit_usage(usage)
        return bz.StopEvent(result="done")

    async with bz.Workflow("usage", [call_model]).start() as handler:
        events = handler.stream_events()
        got = await drain(events)
    assert got == [usage, Progress(i=0), usage, bz.StopEvent(result="done")]


# -- lifecycle events ----------------------------------------------------------------------


async def test_lifecycle_events_of_a_three_step_chain(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[int] = []

    @bz.step
    async def first(ev: bz.StartEvent) -> Middle:
        return Middle()

    @bz.step
    async def second(ev: Middle) -> Last:
        await trio.sleep(2)
        return Last()

    @bz.step(retry=bz.RetryPolicy(max_attempts=2, initial_delay=1.0, jitter=0.0))
    async def third(ctx: bz.Context, ev: Last) -> bz.StopEvent:
        attempts.append(ctx.attempt)
        await trio.sleep(0.5)
        if ctx.attempt == 1:
            raise ValueError("flaky")
        return bz.StopEvent(result="done")

    wf = bz.Workflow("chain", [first, second, third], publish_lifecycle=True)
    with trio.fail_after(GUARD):
        async with wf.start() as handler:
            events = handler.stream_events()
            got = await drain(events)
            await handler.result()
    start, middle, last = (bz.event_type_id(t) for t in (bz.StartEvent, Middle, Last))
    assert attempts == [1, 2]
    assert got == [
        bz.StepStarted(step="first", event_type=start, attempt=1),
        bz.StepCompleted(step="first", duration=0.0),
        bz.StepStarted(step="second", event_type=middle, attempt=1),
        bz.StepCompleted(step="second", duration=2.0),  # virtual time: exact
        bz.StepStarted(step="third", event_type=last, attempt=1),
        bz.StepErrored(step="third", error="ValueError: flaky", attempt=1),
        bz.StepStarted(step="third", event_type=last, attempt=2),
        bz.StepCompleted(step="third", duration=0.5),
        bz.StopEvent(result="done"),
    ]


async def test_lifecycle_events_for_a_step_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @bz.step(timeout=3.0)
    async def slow(ev: bz.StartEvent) -> bz.StopEvent:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    wf = bz.Workflow("timeout", [slow], publish_lifecycle=True)
    with trio.fail_after(GUARD):
        async with wf.start() as handler:
            events = handler.stream_events()
            got = await drain(events)
            with pytest.raises(bz.StepTimeout):
                await handler.result()
    assert got == [
        bz.StepStarted(step="slow", event_type=bz.event_type_id(bz.StartEvent), attempt=1),
        bz.StepErrored(
            step="slow", error="StepTimeout: step 'slow' timed out after 3.0s", attempt=1
        ),
    ]


@pytest.mark.parametrize("history", [False, True])
async def test_lifecycle_events_are_off_by_default(history: bool) -> None:
    wf = writer(1)
    wf = bz.Workflow("quiet", wf.steps, history=history)
    async with wf.start() as handler:
        events = handler.stream_events()
        got = await drain(events)
    assert got == [Progress(i=0), bz.StopEvent(result="done")]


# -- cancellation --------------------------------------------------------------------------


async def test_move_on_after_around_the_loop_leaves_no_task_and_no_subscriber(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Event()
    before = count_tasks()
    with trio.fail_after(GUARD):
        async with writer(2, gate).start() as handler:
            await trio.testing.wait_all_tasks_blocked()
            with_run = count_tasks()
            got: list[bz.Event] = []
            with trio.move_on_after(10) as scope:
                async with handler.stream_events(replay=True) as events:
                    async for event in events:
                        got.append(event)
                        # a subscriber waiting for events is not a task of its own
                        assert count_tasks() == with_run
            assert scope.cancelled_caught
            assert got == progress(0, 1)
            assert handler.stream_statistics().subscribers == 0
            assert count_tasks() == with_run
            # the cancelled consumer subscribes again and sees the rest
            again = handler.stream_events()
            gate.set()
            assert await drain(again) == [bz.StopEvent(result="done")]
            assert handler.stream_statistics().subscribers == 0
    assert count_tasks() == before


async def test_a_consumer_cancelled_mid_wait_keeps_its_place(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Event()
    async with two_phase(1, 2, gate, stream_replay=0).start() as handler:
        events = handler.stream_events()
        assert await events.__anext__() == Progress(i=0)
        with trio.move_on_after(5) as scope:
            await events.__anext__()  # parked: nothing to read yet
        assert scope.cancelled_caught
        assert handler.stream_statistics().subscribers == 1
        gate.set()
        assert await drain(events) == [*progress(1, 2), bz.StopEvent(result="done")]


async def test_a_consumer_task_cancelled_mid_wait_can_subscribe_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Event()
    waiting = trio.Event()

    async def consume(events: bz.EventStream) -> None:
        async with events:
            waiting.set()
            async for _ in events:
                raise AssertionError("no event was published")

    with trio.fail_after(GUARD):
        async with two_phase(0, 1, gate, stream_replay=0).start() as handler:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume, handler.stream_events())
                await waiting.wait()
                await trio.testing.wait_all_tasks_blocked()
                assert handler.stream_statistics().subscribers == 1
                nursery.cancel_scope.cancel()
            assert handler.stream_statistics().subscribers == 0
            events = handler.stream_events()
            gate.set()
            assert await drain(events) == [Progress(i=0), bz.StopEvent(result="done")]


async def test_a_cancelled_read_loses_no_event() -> None:
    # Trio's rule: an operation that raises Cancelled did not happen. A read whose deadline
    # has already passed (`move_on_after(0)`, or a consumer that overran its deadline doing
    # work) must not consume an event; else the event is lost without a StreamLagged.
    async with writer(3).start() as handler:
        events = handler.stream_events()
        await handler.result()
        with trio.move_on_after(0) as scope:
            await events.__anext__()
        assert scope.cancelled_caught
        assert await drain(events) == [*progress(0, 1, 2), bz.StopEvent(result="done")]


async def test_a_cancelled_read_loses_no_lag_notice() -> None:
    async with writer(3).start() as handler:
        events = handler.stream_events(buffer=2)
        await handler.result()
        with trio.move_on_after(0) as scope:
            await events.__anext__()
        assert scope.cancelled_caught
        assert await drain(events) == [
            bz.StreamLagged(missed=2),
            Progress(i=2),
            bz.StopEvent(result="done"),
        ]


async def test_a_reader_with_a_backlog_still_yields_to_other_tasks() -> None:
    from blazen_trio._broadcast import YIELD_EVERY, Broadcast

    broadcast = Broadcast()
    stream = broadcast.subscribe(buffer=2048, replay=False)
    for n in range(1000):
        broadcast.publish(bz.StreamLagged(missed=n))
    broadcast.close()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.lowlevel.checkpoint()  # the ticker is running
        before = ticks
        read = [event async for event in stream]
        nursery.cancel_scope.cancel()
    assert len(read) == 1000
    assert ticks - before >= 1000 // YIELD_EVERY - 1


# -- batched reads: receive_nowait ---------------------------------------------------------


async def test_receive_nowait_reads_what_is_kept_then_would_block_until_more_comes() -> None:
    gate = trio.Event()
    async with writer(3, gate).start() as handler:
        events = handler.stream_events()
        await trio.testing.wait_all_tasks_blocked()  # three written, the step waits at the gate
        assert [events.receive_nowait() for _ in range(3)] == progress(0, 1, 2)
        assert events.last_sequence == 3
        with pytest.raises(trio.WouldBlock):
            events.receive_nowait()
        gate.set()
        await handler.result()
        assert events.receive_nowait() == bz.StopEvent(result="done")
        with pytest.raises(trio.EndOfChannel):
            events.receive_nowait()
        assert handler.stream_statistics().subscribers == 0  # an ended stream lets go


async def test_receive_nowait_tells_a_lagging_reader_what_it_missed() -> None:
    async with writer(5).start() as handler:
        events = handler.stream_events(buffer=2)
        await handler.result()
        read = [events.receive_nowait() for _ in range(3)]
        with pytest.raises(trio.EndOfChannel):
            events.receive_nowait()
    assert read == [bz.StreamLagged(missed=4), Progress(i=4), bz.StopEvent(result="done")]
    assert events.statistics().missed == 4


async def test_receive_nowait_on_a_closed_stream_is_the_end() -> None:
    gate = trio.Event()
    async with writer(3, gate).start() as handler:
        events = handler.stream_events()
        await trio.testing.wait_all_tasks_blocked()
        await events.aclose()
        with pytest.raises(trio.EndOfChannel):  # as `async for` just ends on a closed stream
            events.receive_nowait()
        gate.set()


async def test_a_batched_reader_gets_what_async_for_gets() -> None:
    # The batch drain of trio's channels: wait for one event, then take the backlog without
    # checkpoints. It must see every event once, in order, whatever the batches.
    async def batched(events: bz.EventStream) -> list[bz.Event]:
        got: list[bz.Event] = []
        async for first in events:
            got.append(first)
            try:
                while True:
                    got.append(events.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                pass
        return got

    gate = trio.Event()
    seen: list[bz.Event] = []

    async def consume(events: bz.EventStream) -> None:
        seen.extend(await batched(events))

    workflow = two_phase(40, 40, gate, stream_replay=0)
    async with workflow.start() as handler, trio.open_nursery() as nursery:
        nursery.start_soon(consume, handler.stream_events(buffer=100))
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert seen == [*progress(*range(80)), bz.StopEvent(result="done")]
