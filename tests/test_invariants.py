"""The lossless-pause invariant, as properties: for several workflow shapes, pausing anywhere
(either mode, once or more, resumed in place or from JSON / MessagePack bytes) gives the same
result, final state and committed step executions as an uninterrupted run.

Sync tests on purpose: `check_pause_resume` runs its own `trio.run` with a `MockClock`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from typing import Annotated, Any, Literal

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import example, given, settings, strategies as st

import blazen_trio as bz
from blazen_trio._codec import decode_event, encode_event, known_event_types
from blazen_trio.testing import (
    PausePoint,
    RunRecord,
    check_pause_resume,
    events,
    pause_plans,
    state_values,
)

EXAMPLES = settings(max_examples=40, deadline=None)

# Plans every property also runs, whatever hypothesis draws: each mode, twice, both codecs.
DRAIN_THEN_CANCEL = [
    PausePoint(delay=0.5, cancel_in_flight=False, codec="json"),
    PausePoint(delay=1.0, cancel_in_flight=True, codec="msgpack"),
]
IN_PLACE_THEN_BYTES = [
    PausePoint(delay=1.5, cancel_in_flight=True, in_place=True),
    PausePoint(delay=0.0, checkpoints=3, cancel_in_flight=False, in_place=False, codec="json"),
    PausePoint(delay=2.0, cancel_in_flight=True, in_place=False),
]
AT_ONCE = [PausePoint()]


class Hop(bz.Event):
    index: int


class Item(bz.Event):
    index: int


class Done(bz.Event):
    index: int
    value: int


# -- shapes ----------------------------------------------------------------------------------


def chain_workflow() -> bz.Workflow:
    """start -> hop 0 -> ... -> hop 4 -> stop; each hop 1.5 s, accumulating a total."""

    @bz.step
    async def begin(ctx: bz.Context, ev: bz.StartEvent) -> Hop:
        ctx.set("total", 0)
        return Hop(index=0)

    @bz.step
    async def hop(ctx: bz.Context, ev: Hop) -> Hop | bz.StopEvent:
        # Not idempotent, and before the await: a cancelled attempt must be taken back.
        ctx.set("total", ctx.get("total") + ev.index)
        ctx.set(f"hop{ev.index}", "started")
        await trio.sleep(1.5)
        ctx.set(f"hop{ev.index}", "done")
        if ev.index == 4:
            return bz.StopEvent(result=ctx.get("total"))
        return Hop(index=ev.index + 1)

    return bz.Workflow("chain", [begin, hop])


def fan_workflow(name: str, n: int, *, limit: int | None = None) -> bz.Workflow:
    """n Items in parallel (1-3 s each, optionally at most `limit` at a time), joined."""

    @bz.step
    async def split(ev: bz.StartEvent) -> list[Item]:
        return [Item(index=i) for i in range(n)]

    @bz.step(max_concurrency=limit)
    async def work(ctx: bz.Context, ev: Item) -> Done:
        # One key per item (concurrent steps must not share a read-modify-write key: the
        # undo log leaves a write alone once another step overwrote it).
        ctx.set(f"item{ev.index}", ctx.get(f"item{ev.index}", 0) + 1)
        await trio.sleep(1 + ev.index % 3)
        return Done(index=ev.index, value=ev.index * ev.index)

    @bz.step
    async def join(ctx: bz.Context, ev: Done) -> bz.StopEvent | None:
        got = ctx.collect_events(ev, [Done] * n)
        if got is None:
            return None
        values = sorted(d.value for d in got if isinstance(d, Done))
        ctx.set("joined", values)
        return bz.StopEvent(result=values)

    return bz.Workflow(name, [split, work, join])


def retry_workflow() -> bz.Workflow:
    """Every Item fails its first attempt (after writing state, taken back), then succeeds."""
    policy = bz.RetryPolicy(max_attempts=3, initial_delay=2.0, jitter=0.0)

    @bz.step
    async def split(ev: bz.StartEvent) -> list[Item]:
        return [Item(index=i) for i in range(3)]

    @bz.step(retry=policy)
    async def flaky(ctx: bz.Context, ev: Item) -> Done:
        ctx.set(f"try{ev.index}", ctx.attempt)
        await trio.sleep(1 + ev.index)
        if ctx.attempt == 1:
            raise ConnectionError(f"item {ev.index}: first attempt fails")
        return Done(index=ev.index, value=ctx.attempt)

    @bz.step
    async def join(ctx: bz.Context, ev: Done) -> bz.StopEvent | None:
        got = ctx.collect_events(ev, [Done, Done, Done])
        if got is None:
            return None
        return bz.StopEvent(result=sorted((d.index, d.value) for d in got if isinstance(d, Done)))

    return bz.Workflow("retries", [split, flaky, join], history=True)


def hitl_workflow(**options: Any) -> bz.Workflow:
    """Three questions (ids from the input) and a 3 s branch; the answers and the branch join."""

    @bz.step
    async def ask(ev: bz.StartEvent) -> list[bz.InputRequestEvent | Item]:
        prefix = ev.data
        return [
            *(
                bz.InputRequestEvent(prompt=f"{prefix}{i}", request_id=f"{prefix}-{i}")
                for i in range(3)
            ),
            Item(index=0),
        ]

    @bz.step
    async def branch(ctx: bz.Context, ev: Item) -> Done:
        await trio.sleep(3)
        ctx.set("branch", "done")
        return Done(index=0, value=7)

    @bz.step
    async def note(ctx: bz.Context, ev: bz.InputResponseEvent) -> Hop:
        await trio.sleep(1)
        ctx.set(f"answer:{ev.request_id}", ev.response)
        return Hop(index=len(str(ev.response)))

    @bz.step
    async def join(ctx: bz.Context, ev: Hop | Done) -> bz.StopEvent | None:
        got = ctx.collect_events(ev, [Hop, Hop, Hop, Done])
        if got is None:
            return None
        return bz.StopEvent(result=sorted(e.index for e in got if isinstance(e, Hop)))

    return bz.Workflow("hitl", [ask, branch, note, join], **options)


async def answer_inline(request: bz.InputRequestEvent) -> str:
    await trio.sleep(2)
    return request.prompt * 2


def respond(request: bz.InputRequestEvent) -> str:
    return request.prompt.upper()


CHAIN = chain_workflow()
FAN = fan_workflow("fan", 5)
LIMITED = fan_workflow("limited", 6, limit=2)
RETRIES = retry_workflow()
HITL = hitl_workflow()
HITL_INLINE = hitl_workflow(input_handler=answer_inline)


def resumed(record: RunRecord, plan: list[PausePoint]) -> None:
    """A plan that resumes from bytes at least once did, unless the run ended first."""
    assert 0 <= record.resumes <= sum(not point.in_place for point in plan)


# -- properties ------------------------------------------------------------------------------


@EXAMPLES
@given(plan=pause_plans(max_delay=4.0))
@example(plan=DRAIN_THEN_CANCEL)
@example(plan=IN_PLACE_THEN_BYTES)
@example(plan=AT_ONCE)
def test_a_chain_survives_pauses(plan: list[PausePoint]) -> None:
    record = check_pause_resume(CHAIN, None, plan)
    assert record.result == 0 + 1 + 2 + 3 + 4
    resumed(record, plan)


@EXAMPLES
@given(plan=pause_plans(max_delay=2.0))
@example(plan=DRAIN_THEN_CANCEL)
@example(plan=IN_PLACE_THEN_BYTES)
@example(plan=AT_ONCE)
def test_fan_out_and_fan_in_survive_pauses(plan: list[PausePoint]) -> None:
    record = check_pause_resume(FAN, None, plan)
    assert record.result == [0, 1, 4, 9, 16]
    resumed(record, plan)


@EXAMPLES
@given(plan=pause_plans(max_delay=3.0))
@example(plan=DRAIN_THEN_CANCEL)
@example(plan=IN_PLACE_THEN_BYTES)
def test_max_concurrency_queues_survive_pauses(plan: list[PausePoint]) -> None:
    record = check_pause_resume(LIMITED, None, plan)
    assert record.result == [0, 1, 4, 9, 16, 25]


@EXAMPLES
@given(plan=pause_plans(max_delay=4.0))
@example(plan=DRAIN_THEN_CANCEL)
@example(plan=IN_PLACE_THEN_BYTES)
@example(plan=[PausePoint(delay=2.5, cancel_in_flight=True)])  # `flaky` 0 in its back-off
def test_retries_survive_pauses(plan: list[PausePoint]) -> None:
    record = check_pause_resume(RETRIES, None, plan)
    assert record.result == [(0, 2), (1, 2), (2, 2)]
    assert record.state == {"try0": 2, "try1": 2, "try2": 2}
    # Each item failed exactly once, at attempt 1 (a lost attempt count would fail it again).
    assert record.failures == Counter(
        {("flaky", 1, f"ConnectionError: item {i}: first attempt fails"): 1 for i in range(3)}
    )


@EXAMPLES
@given(plan=pause_plans(max_delay=2.5))
@example(plan=DRAIN_THEN_CANCEL)
@example(plan=IN_PLACE_THEN_BYTES)
@example(plan=AT_ONCE)
def test_human_input_survives_pauses(plan: list[PausePoint]) -> None:
    record = check_pause_resume(HITL, "q", plan, respond=respond)
    assert record.result == [2, 2, 2]
    assert record.state["answer:q-1"] == "Q1"


@EXAMPLES
@given(plan=pause_plans(max_delay=2.5))
@example(plan=DRAIN_THEN_CANCEL)
@example(plan=IN_PLACE_THEN_BYTES)
def test_an_inline_input_handler_survives_pauses(plan: list[PausePoint]) -> None:
    record = check_pause_resume(HITL_INLINE, "ab", plan)
    assert record.result == [6, 6, 6]


# -- the strategies, through real runs -------------------------------------------------------


class Payload(bz.StartEvent):
    """A start event with fields of many kinds, for `events()`."""

    count: int
    ratio: float
    name: str
    tags: list[str]
    maybe: int | None
    when: dt.datetime
    blob: bytes
    meta: dict[str, Any]
    ref: bz.SessionRef
    kind: Literal["a", "b"]
    pair: tuple[int, str]
    ids: frozenset[uuid.UUID]
    small: Annotated[int, msgspec.Meta(ge=0, le=10)]


def holding_workflow() -> bz.Workflow:
    """Keeps its start event and a state value 5 s, then returns both."""

    @bz.step
    async def hold(ctx: bz.Context, ev: Payload) -> bz.StopEvent:
        await trio.sleep(5)
        return bz.StopEvent(result=(ev, ctx.get("value", None)))

    @bz.step
    async def keep(ctx: bz.Context, ev: bz.StartEvent) -> None:
        ctx.set("value", ev.data)

    return bz.Workflow("holding", [keep, hold], validate=False)


HOLDING = holding_workflow()


def pause_and_resume(event: bz.Event, codec: str) -> Any:
    """Run HOLDING on `event`, pause it at 1 s (cancelling `hold`), resume it from bytes."""

    async def main() -> Any:
        async with HOLDING.start(event) as handler:
            await trio.sleep(1)
            await handler.pause(cancel_in_flight=True)
            snapshot = await handler.snapshot()
            await handler.abort()
        data = snapshot.to_json() if codec == "json" else snapshot.to_bytes()
        decode = (
            bz.WorkflowSnapshot.from_json if codec == "json" else bz.WorkflowSnapshot.from_bytes
        )
        return (await HOLDING.run(resume=decode(data))).result

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@EXAMPLES
@given(event=events(Payload), codec=st.sampled_from(["json", "msgpack"]))
def test_generated_events_survive_a_resume(event: Payload, codec: str) -> None:
    assert 0 <= event.small <= 10
    assert event.kind in ("a", "b")
    back, _ = pause_and_resume(event, codec)
    assert type(back) is Payload
    assert back == event


@EXAMPLES
@given(value=state_values(), codec=st.sampled_from(["json", "msgpack"]))
def test_generated_state_values_survive_a_resume(value: Any, codec: str) -> None:
    event = Payload(
        data=value,
        count=1,
        ratio=0.5,
        name="n",
        tags=[],
        maybe=None,
        when=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        blob=b"",
        meta={},
        ref=bz.SessionRef("k"),
        kind="a",
        pair=(1, "x"),
        ids=frozenset(),
        small=3,
    )
    back, stored = pause_and_resume(event, codec)
    assert stored == value
    assert type(stored) is type(value)
    assert back.data == value


BUILTIN_EVENTS: list[type[bz.Event]] = [
    bz.StartEvent,
    bz.StopEvent,
    bz.InputRequestEvent,
    bz.InputResponseEvent,
    bz.UsageEvent,
    bz.StepStarted,
    bz.StepCompleted,
    bz.StepErrored,
    bz.StreamLagged,
    bz.DynamicEvent,
]


@EXAMPLES
@given(data=st.data())
def test_generated_events_of_every_builtin_type_round_trip(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(BUILTIN_EVENTS))
    event = data.draw(events(cls))
    assert type(event) is cls
    wire = msgspec.msgpack.encode(encode_event(event))
    back = decode_event(msgspec.msgpack.decode(wire, type=bz.EncodedEvent), known_event_types([]))
    assert type(back) is cls
    assert back == event


def test_events_wants_an_event_class() -> None:
    with pytest.raises(TypeError, match="Event subclass"):
        events(int)  # type: ignore[type-var]  # the point of the test


# -- random control sequences ----------------------------------------------------------------

# (shape, input, expected result); `respond-i` controls answer the HITL shape's request q-i.
SHAPES: dict[str, tuple[bz.Workflow, Any, Any]] = {
    "chain": (CHAIN, None, 10),
    "fan": (FAN, None, [0, 1, 4, 9, 16]),
    "limited": (LIMITED, None, [0, 1, 4, 9, 16, 25]),
    "retries": (RETRIES, None, [(0, 2), (1, 2), (2, 2)]),
    "hitl": (HITL, "q", [2, 2, 2]),
    "inline": (HITL_INLINE, "ab", [6, 6, 6]),
}
CONTROLS = ["pause", "pause-cancel", "resume", "snapshot", "respond-0", "respond-1", "respond-2"]
GUARD = 10_000.0  # virtual seconds


async def control(handler: bz.WorkflowHandler, what: str, taken: list[bz.WorkflowSnapshot]) -> None:
    """One control call; refusals that a racing sequence makes legitimate are fine."""
    try:
        if what == "pause":
            await handler.pause()
        elif what == "pause-cancel":
            await handler.pause(cancel_in_flight=True)
        elif what == "resume":
            await handler.resume()
        elif what == "snapshot":
            taken.append(await handler.snapshot())
        else:
            index = what.rpartition("-")[2]
            await handler.respond_to_input(f"q-{index}", f"Q{index}")
    except (bz.RunFinished, bz.UnknownInputRequest):
        pass


async def finish(handler: bz.WorkflowHandler, answer: bool) -> Any:
    """Resume, answer what is asked (if `answer`), and return the result."""
    events = handler.stream_events(replay=True)

    async def answer_requests() -> None:
        async with events:
            async for event in events:
                if isinstance(event, bz.InputRequestEvent):
                    await control(handler, "respond-" + event.prompt[-1], [])

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            if answer:
                nursery.start_soon(answer_requests)
            await control(handler, "resume", [])
            result = await handler.result()
            nursery.cancel_scope.cancel()
    return result.result


@EXAMPLES
@given(
    shape=st.sampled_from(sorted(SHAPES)),
    controls=st.lists(
        st.tuples(st.sampled_from(CONTROLS), st.floats(0, 2), st.booleans()), max_size=8
    ),
)
# A resume right behind a cancelling pause, from another task (each a coin toss of Trio's
# scheduler, hence several): cancelled steps and input handler calls must start again.
@example(shape="fan", controls=[("pause-cancel", 1.0, True), ("resume", 0.0, False)])
@example(shape="limited", controls=[("pause-cancel", 1.5, True), ("resume", 0.0, False)])
@example(shape="chain", controls=[("pause-cancel", 0.5, True), ("resume", 0.0, True)])
@example(shape="inline", controls=[("pause", 1.0, True), ("resume", 0.0, False)])
@example(shape="inline", controls=[("pause-cancel", 1.0, True), ("resume", 0.0, True)])
def test_random_control_sequences_lose_nothing(
    shape: str, controls: list[tuple[str, float, bool]]
) -> None:
    """Pause, resume, snapshot and respond at random times, some from concurrent tasks: the
    run and every snapshot it gave (resumed in a fresh run) end with the expected result."""
    workflow, input, expected = SHAPES[shape]
    answer = shape == "hitl"

    async def main() -> None:
        taken: list[bz.WorkflowSnapshot] = []
        async with workflow.start(input) as handler:
            async with trio.open_nursery() as nursery:
                for what, delay, concurrently in controls:
                    await trio.sleep(delay)
                    if what.startswith("respond") and not answer:
                        continue
                    if concurrently:
                        nursery.start_soon(control, handler, what, taken)
                    else:
                        await control(handler, what, taken)
            assert await finish(handler, answer) == expected
        for index, snapshot in enumerate(taken):
            data = snapshot.to_json() if index % 2 else snapshot.to_bytes()
            decode = bz.WorkflowSnapshot.from_json if index % 2 else bz.WorkflowSnapshot.from_bytes
            async with workflow.start(resume=decode(data)) as resumed:
                assert await finish(resumed, answer) == expected

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
