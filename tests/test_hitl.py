"""Human in the loop: input requests, responses, inline input handlers, and snapshots between.

The last section is the regression test for LlamaIndex Workflows' lost-response bug: an answer
sent right before a snapshot must be in that snapshot.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import trio
import trio.testing

import blazen_trio as bz

GUARD = 3600  # virtual seconds after which a test fails instead of hanging


class Work(bz.Event):
    pass


class Note(bz.Event):
    text: str


def ask_workflow(
    received: list[bz.InputResponseEvent] | None = None,
    *,
    greet_time: float = 0.0,
    gate: trio.Event | None = None,
    **options: Any,
) -> bz.Workflow:
    """`ask` requests a name (request id "name"); `greet` answers with it.

    `greet` first sleeps `greet_time` and waits for `gate`, if given.
    """

    @bz.step
    async def ask(ev: bz.StartEvent) -> bz.InputRequestEvent:
        return bz.InputRequestEvent(prompt="name?", request_id="name", metadata={"n": ev.data})

    @bz.step
    async def greet(ev: bz.InputResponseEvent) -> bz.StopEvent:
        if greet_time:
            await trio.sleep(greet_time)
        if gate is not None:
            await gate.wait()
        if received is not None:
            received.append(ev)
        return bz.StopEvent(result=f"Hello, {ev.response}!")

    return bz.Workflow("ask", [ask, greet], **options)


def two_questions_workflow() -> bz.Workflow:
    """Two requests ("a", "b"); the run ends once both are answered."""

    @bz.step
    async def ask(ev: bz.StartEvent) -> list[bz.InputRequestEvent]:
        return [
            bz.InputRequestEvent(prompt="a?", request_id="a"),
            bz.InputRequestEvent(prompt="b?", request_id="b"),
        ]

    @bz.step
    async def join(ctx: bz.Context, ev: bz.InputResponseEvent) -> bz.StopEvent | None:
        got = ctx.collect_events(ev, [bz.InputResponseEvent, bz.InputResponseEvent])
        if got is None:
            return None
        answers = {e.request_id: e.response for e in got if isinstance(e, bz.InputResponseEvent)}
        return bz.StopEvent(result=answers)

    return bz.Workflow("two-questions", [ask, join])


def branching_workflow(**options: Any) -> bz.Workflow:
    """A request and a 5 s branch in parallel; `join` needs the answer and the branch's Note."""

    @bz.step
    async def start(ev: bz.StartEvent) -> list[bz.InputRequestEvent | Work]:
        return [bz.InputRequestEvent(prompt="go?", request_id="go"), Work()]

    @bz.step
    async def work(ctx: bz.Context, ev: Work) -> Note:
        await trio.sleep(5)
        ctx.set("worked", True)
        return Note(text="branch")

    @bz.step
    async def join(ctx: bz.Context, ev: bz.InputResponseEvent | Note) -> bz.StopEvent | None:
        got = ctx.collect_events(ev, [bz.InputResponseEvent, Note])
        if got is None:
            return None
        answer, note = got
        assert isinstance(answer, bz.InputResponseEvent)
        assert isinstance(note, Note)
        return bz.StopEvent(result=(answer.response, note.text))

    return bz.Workflow("branching", [start, work, join], **options)


async def first_request(events: bz.EventStream) -> bz.InputRequestEvent:
    async for event in events:
        if isinstance(event, bz.InputRequestEvent):
            return event
    raise AssertionError("the stream ended without an input request")


# -- requests and responses --------------------------------------------------------------------


async def test_a_request_is_recorded_streamed_and_answered() -> None:
    received: list[bz.InputResponseEvent] = []
    async with ask_workflow(received).start(7) as handler:
        events = handler.stream_events()
        request = await first_request(events)
        assert request == bz.InputRequestEvent(prompt="name?", request_id="name", metadata={"n": 7})
        assert handler.pending_input_requests == (request,)
        assert handler.status == "waiting_for_input"
        await handler.respond_to_input("name", "Ada")
        assert [r.request_id for r in handler.pending_input_requests] == []
        result = await handler.result()
    assert result.result == "Hello, Ada!"
    assert received == [bz.InputResponseEvent(request_id="name", response="Ada")]


async def test_other_branches_keep_running_while_input_is_awaited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with branching_workflow().start() as handler:
        await trio.sleep(1)
        assert [r.request_id for r in handler.pending_input_requests] == ["go"]
        assert handler.status == "running"  # `work` is still going
        await trio.sleep(5)
        assert handler.status == "waiting_for_input"  # only an answer can move it now
        await handler.respond_to_input("go", "yes")
        result = await handler.result()
    assert result.result == ("yes", "branch")


async def test_an_answer_given_early_waits_for_the_other_branch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with branching_workflow().start() as handler:
        await trio.sleep(1)
        await handler.respond_to_input("go", "early")
        assert handler.status == "running"
        result = await handler.result()
    assert result.result == ("early", "branch")


async def test_a_wrong_id_raises_unknown_input_request_and_changes_nothing() -> None:
    async with ask_workflow().start() as handler:
        request = await first_request(handler.stream_events())
        with pytest.raises(bz.UnknownInputRequest) as caught:
            await handler.respond_to_input("nope", "x")
        assert caught.value.request_id == "nope"
        assert handler.pending_input_requests == (request,)
        assert handler.status == "waiting_for_input"
        snapshot = await handler.snapshot()
        assert snapshot.pending_events == []
        await handler.respond_to_input("name", "Bo")
        assert (await handler.result()).result == "Hello, Bo!"


async def test_an_answered_id_raises_unknown_input_request_and_changes_nothing() -> None:
    async with two_questions_workflow().start() as handler:
        await first_request(handler.stream_events())
        await handler.respond_to_input("a", 1)
        with pytest.raises(bz.UnknownInputRequest):
            await handler.respond_to_input("a", 2)
        assert [r.request_id for r in handler.pending_input_requests] == ["b"]
        snapshot = await handler.snapshot()
        responses = [p for p in snapshot.pending_events if p.event.payload.get("request_id") == "a"]
        assert len(responses) <= 1  # the first answer only (or already handled)
        await handler.respond_to_input("b", 3)
        result = await handler.result()
    assert result.result == {"a": 1, "b": 3}  # the second answer to "a" went nowhere


async def test_responding_on_a_finished_run_raises_run_finished() -> None:
    async with ask_workflow().start() as handler:
        await first_request(handler.stream_events())
        await handler.respond_to_input("name", "Ada")
        await handler.result()
        with pytest.raises(bz.RunFinished):
            await handler.respond_to_input("name", "again")


async def test_waiting_for_input_does_not_count_toward_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(GUARD):
        async with branching_workflow(timeout=10).start() as handler:
            await trio.sleep(1000)  # 5 s of work, then waiting far past the timeout
            assert handler.status == "waiting_for_input"
            snapshot = await handler.snapshot()
            await handler.respond_to_input("go", "late")
            result = await handler.result()
    assert result.result == ("late", "branch")
    assert snapshot.active_time == pytest.approx(5)
    # The resumed run goes on from 5 s of active time, and waits for free again.
    async with branching_workflow(timeout=10).start(resume=snapshot) as resumed:
        await trio.sleep(1000)
        await resumed.respond_to_input("go", "later")
        assert (await resumed.result()).result == ("later", "branch")


async def test_a_paused_waiting_run_waits_again_after_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with ask_workflow().start() as handler:
        await trio.sleep(1)
        assert handler.status == "waiting_for_input"
        await handler.pause()
        assert handler.status == "paused"
        await handler.resume()
        assert handler.status == "waiting_for_input"
        await handler.respond_to_input("name", "Cy")
        assert (await handler.result()).result == "Hello, Cy!"


async def test_an_answer_to_a_paused_run_waits_for_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    received: list[bz.InputResponseEvent] = []
    async with ask_workflow(received).start() as handler:
        await trio.sleep(1)
        await handler.pause()
        await handler.respond_to_input("name", "Di")
        await trio.sleep(10)
        assert received == []
        assert handler.status == "paused"
        await handler.resume()
        assert (await handler.result()).result == "Hello, Di!"


# -- input_handler -----------------------------------------------------------------------------


async def test_an_input_handler_answers_inline(autojump_clock: trio.testing.MockClock) -> None:
    asked: list[bz.InputRequestEvent] = []

    async def answer(request: bz.InputRequestEvent) -> str:
        asked.append(request)
        await trio.sleep(2)
        return "Handler"

    async with ask_workflow(input_handler=answer).start(1) as handler:
        request = await first_request(handler.stream_events(replay=True))
        result = await handler.result()
    assert result.result == "Hello, Handler!"
    assert asked == [request]
    assert handler.pending_input_requests == ()


async def test_an_input_handler_failure_fails_the_run() -> None:
    async def answer(request: bz.InputRequestEvent) -> str:
        raise LookupError("no human here")

    with pytest.raises(bz.WorkflowError) as caught:
        await ask_workflow(input_handler=answer).run()
    assert isinstance(caught.value.__cause__, LookupError)


async def test_a_pause_cancels_the_input_handler_and_resume_asks_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[float] = []

    async def answer(request: bz.InputRequestEvent) -> str:
        calls.append(trio.current_time())
        await trio.sleep(10)
        return f"call {len(calls)}"

    workflow = ask_workflow(input_handler=answer)
    async with workflow.start() as handler:
        await trio.sleep(1)
        before = trio.current_time()
        await handler.pause()
        assert trio.current_time() == before  # the handler call was cancelled, not awaited
        snapshot = await handler.snapshot()
        assert [e.payload["request_id"] for e in snapshot.input_requests] == ["name"]
        await handler.resume()
        result = await handler.result()
    assert result.result == "Hello, call 2!"
    assert len(calls) == 2
    # A run resumed from the snapshot asks the handler too.
    calls.clear()
    resumed = await workflow.run(resume=bz.WorkflowSnapshot.from_bytes(snapshot.to_bytes()))
    assert resumed.result == "Hello, call 1!"


# -- nobody to answer --------------------------------------------------------------------------


async def test_run_without_an_input_handler_fails_at_the_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(GUARD), pytest.raises(bz.InputUnanswerable) as caught:
        await ask_workflow(timeout=1.0).run(7)
    assert isinstance(caught.value, bz.WorkflowError)
    assert caught.value.request_id == "name"
    assert trio.current_time() == 0  # at once, not at the timeout
    message = str(caught.value)
    assert "'name'" in message
    assert "wf.start(" in message
    assert "handler.respond_to_input" in message
    assert "Workflow(input_handler=...)" in message


async def test_run_without_an_input_handler_stops_the_other_branches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cancelled: list[str] = []

    @bz.step
    async def start(ev: bz.StartEvent) -> list[Note | Work]:
        return [Work(), Note(text="ask")]

    @bz.step
    async def ask(ev: Note) -> bz.InputRequestEvent:
        await trio.sleep(1)
        return bz.InputRequestEvent(prompt="go?", request_id="go")

    @bz.step
    async def work(ev: Work) -> bz.StopEvent:
        try:
            await trio.sleep(5)
        finally:
            cancelled.append("work")
        return bz.StopEvent()

    @bz.step
    async def answered(ev: bz.InputResponseEvent) -> bz.StopEvent:
        return bz.StopEvent()

    with trio.fail_after(GUARD), pytest.raises(bz.InputUnanswerable):
        await bz.Workflow("branches", [start, ask, work, answered]).run()
    assert cancelled == ["work"]
    assert trio.current_time() == 1


async def test_resuming_outstanding_requests_with_run_and_no_input_handler_fails_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    workflow = ask_workflow()
    async with workflow.start(3) as handler:
        await first_request(handler.stream_events())
        snapshot = await handler.snapshot()
        await handler.abort()
    with trio.fail_after(GUARD), pytest.raises(bz.InputUnanswerable, match="'name'"):
        await workflow.run(resume=snapshot)


async def test_start_without_an_input_handler_still_waits_for_an_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with ask_workflow().start(1) as handler:
        await trio.sleep(100)
        assert handler.status == "waiting_for_input"
        await handler.respond_to_input("name", "Bo")
        assert (await handler.result()).result == "Hello, Bo!"


# -- snapshots while waiting -------------------------------------------------------------------


async def test_a_snapshot_while_waiting_resumes_and_takes_the_answer_there(
    autojump_clock: trio.testing.MockClock,
) -> None:
    workflow = ask_workflow()
    async with workflow.start(3) as handler:
        request = await first_request(handler.stream_events())
        snapshot = await handler.snapshot()  # waiting: no pause needed
        await handler.abort()
    assert snapshot.status == "waiting_for_input"
    assert snapshot.pending_events == []
    data = snapshot.to_json()

    async with workflow.start(resume=bz.WorkflowSnapshot.from_json(data)) as resumed:
        assert resumed.pending_input_requests == (request,)
        # A consumer created on the resumed run sees what it still has to answer.
        again = await first_request(resumed.stream_events(replay=True))
        assert again == request
        await trio.sleep(100)
        assert resumed.status == "waiting_for_input"
        await resumed.respond_to_input(request.request_id, "Ed")
        result = await resumed.result()
    assert result.result == "Hello, Ed!"
    assert result.run_id == handler.run_id


async def test_a_resumed_run_refuses_ids_that_are_not_outstanding(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with two_questions_workflow().start() as handler:
        await trio.sleep(1)
        await handler.respond_to_input("a", "first")
        await trio.sleep(1)
        snapshot = await handler.snapshot()
        await handler.abort()
    async with two_questions_workflow().start(resume=snapshot) as resumed:
        with pytest.raises(bz.UnknownInputRequest):
            await resumed.respond_to_input("a", "again")
        await resumed.respond_to_input("b", "second")
        result = await resumed.result()
    assert result.result == {"a": "first", "b": "second"}


# -- the LlamaIndex lost-response bug ----------------------------------------------------------


async def test_a_response_sent_just_before_a_snapshot_is_in_it() -> None:
    """LlamaIndex Workflows could lose an answer sent right before the context was saved:
    the response sat in a queue that the snapshot did not capture. Here commands and commits
    go through one inbox, so a snapshot sees every response sent before it."""
    received: list[bz.InputResponseEvent] = []
    gate = trio.Event()  # holds `greet` back until the snapshot is taken
    workflow = ask_workflow(received, gate=gate)
    async with workflow.start() as handler:
        await first_request(handler.stream_events())
        await handler.respond_to_input("name", {"first": "Ada", "ids": (1, 2)})
        snapshot = await handler.snapshot()
        await handler.abort()  # the process "dies" here
    assert received == []

    assert snapshot.input_requests == []  # answered, so no longer outstanding...
    [pending] = snapshot.pending_events  # ...and the answer is pending work
    assert pending.event.type_id == "blazen.InputResponseEvent"
    assert pending.source_step == "__human_input"
    assert pending.target_step == "greet"
    assert pending.event.payload["request_id"] == "name"

    gate.set()
    for decoded in (
        bz.WorkflowSnapshot.from_bytes(snapshot.to_bytes()),
        bz.WorkflowSnapshot.from_json(snapshot.to_json()),
    ):
        result = await workflow.run(resume=decoded)  # nobody answers again
        assert result.result == "Hello, {'first': 'Ada', 'ids': (1, 2)}!"
    assert (
        received
        == [bz.InputResponseEvent(request_id="name", response={"first": "Ada", "ids": (1, 2)})] * 2
    )


async def test_a_response_handled_by_a_step_in_flight_is_in_the_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    received: list[bz.InputResponseEvent] = []
    workflow = ask_workflow(received, greet_time=5)
    async with workflow.start() as handler:
        await first_request(handler.stream_events())
        await handler.respond_to_input("name", "Flo")
        await trio.sleep(1)  # `greet` has the response and is in flight
        snapshot = await handler.snapshot()
        await handler.abort()
    assert received == []
    assert [(p.event.type_id, p.target_step) for p in snapshot.pending_events] == [
        ("blazen.InputResponseEvent", "greet")
    ]
    result = await workflow.run(resume=bz.WorkflowSnapshot.from_bytes(snapshot.to_bytes()))
    assert result.result == "Hello, Flo!"


async def respond_and_snapshot_at_once(
    handler: bz.WorkflowHandler, respond_first: bool
) -> bz.WorkflowSnapshot:
    """Send a response and a snapshot command from two tasks started together."""
    taken: list[bz.WorkflowSnapshot] = []

    async def respond() -> None:
        await handler.respond_to_input("name", "Gus")

    async def snap() -> None:
        taken.append(await handler.snapshot())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(respond if respond_first else snap)
        nursery.start_soon(snap if respond_first else respond)
    [snapshot] = taken
    return snapshot


async def test_a_response_and_a_snapshot_sent_together_lose_nothing() -> None:
    """Whichever the run applies first, the answer is either pending work in the snapshot or
    its request is still outstanding there: never neither, never both."""
    for respond_first in (True, False):
        gate = trio.Event()  # `greet` must not end the run before the snapshot
        workflow = ask_workflow(gate=gate)
        async with workflow.start() as handler:
            await first_request(handler.stream_events())
            snapshot = await respond_and_snapshot_at_once(handler, respond_first)
            await handler.abort()
        answered = [p for p in snapshot.pending_events if p.source_step == "__human_input"]
        outstanding = [e.payload["request_id"] for e in snapshot.input_requests]
        assert (len(answered), outstanding) in [(1, []), (0, ["name"])]
        gate.set()
        async with workflow.start(resume=snapshot) as resumed:
            if outstanding:
                await resumed.respond_to_input("name", "Gus")
            assert (await resumed.result()).result == "Hello, Gus!"


async def pause_then_resume_at_once(handler: bz.WorkflowHandler, cancel: bool) -> None:
    """Send a pause, then a resume right behind it, from two tasks."""
    sent = trio.Event()

    async def pause() -> None:
        sent.set()  # `handler.pause` sends its command before its first checkpoint
        with contextlib.suppress(bz.RunFinished):  # resumed before it was quiescent
            await handler.pause(cancel_in_flight=cancel)

    async def resume() -> None:
        await sent.wait()
        await handler.resume()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pause)
        nursery.start_soon(resume)


async def test_a_resume_right_behind_a_pause_asks_the_input_handler_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A pause cancels the inline handler call; a resume applied while that call is still
    unwinding must ask again, or the run waits for an answer nobody will give. Repeated, since
    which comes first is up to Trio's scheduler."""

    async def answer(request: bz.InputRequestEvent) -> str:
        await trio.sleep(10)
        return "inline"

    workflow = ask_workflow(input_handler=answer)
    for cancel in (False, True):
        for _ in range(10):
            async with workflow.start() as handler:
                await trio.sleep(1)
                await pause_then_resume_at_once(handler, cancel)
                with trio.fail_after(GUARD):
                    result = await handler.result()
            assert result.result == "Hello, inline!"


async def test_a_human_answer_while_the_input_handler_thinks_wins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Both may answer one request; the first answer is routed, the other must not break the
    run (the handler's late answer used to escape as an UnknownInputRequest group)."""

    async def answer(request: bz.InputRequestEvent) -> str:
        await trio.sleep(10)
        return "handler"

    received: list[bz.InputResponseEvent] = []
    workflow = ask_workflow(received, greet_time=20, input_handler=answer)
    async with workflow.start() as handler:
        await trio.sleep(1)
        await handler.respond_to_input("name", "human")
        assert [r.request_id for r in handler.pending_input_requests] == []
        with trio.fail_after(GUARD):
            result = await handler.result()  # `greet` ends at 21 s, after the handler's 10 s
    assert result.result == "Hello, human!"
    assert received == [bz.InputResponseEvent(request_id="name", response="human")]


async def test_every_input_request_is_checked_not_only_the_first_of_its_class() -> None:
    """A step's emitted classes are checked once each, but input requests every time: a
    malformed one fails the step even after well-formed ones passed."""

    @bz.step
    async def ask(ev: bz.StartEvent) -> bz.InputRequestEvent:
        return bz.InputRequestEvent(prompt=ev.data)

    @bz.step
    async def done(ev: bz.InputResponseEvent) -> bz.StopEvent:
        return bz.StopEvent(result=ev.response)

    async def answer(request: bz.InputRequestEvent) -> str:
        return f"yes to {request.prompt}"

    wf = bz.Workflow("ask", [ask, done], input_handler=answer)
    assert (await wf.run("first?")).result == "yes to first?"
    with pytest.raises(bz.StepFailed, match="invalid input request"):
        await wf.run(42)  # prompt must be a str
