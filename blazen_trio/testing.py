"""Tools to property-test your own workflows: pause/resume invariant checkers and strategies.

    from hypothesis import given
    from blazen_trio.testing import check_pause_resume, pause_plans

    @given(plan=pause_plans())
    def test_my_workflow_survives_pauses(plan):
        check_pause_resume(my_workflow, {"n": 3}, plan)

The checker runs your workflow once without interruption and once paused at the planned
virtual times (each pause in either mode, its snapshot round-tripped through bytes and resumed
in a fresh run, or resumed in place), and asserts both give the same result, the same final
state and the same multiset of committed step executions. The workflow must be deterministic:
the same input gives the same events and state whatever the task interleaving (use
order-insensitive fan-in, and derive `InputRequestEvent.request_id` from the input).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import attrs
import msgspec
import trio
import trio.testing
from hypothesis import strategies as st

from ._codec import encode_event
from ._errors import RunFinished
from ._events import Event, InputRequestEvent
from ._handler import WorkflowHandler
from ._snapshot import WorkflowSnapshot
from ._workflow import Workflow

Codec = Literal["msgpack", "json"]
Responder = Callable[[InputRequestEvent], Any]
Execution = tuple[str, bytes]


@attrs.frozen
class PausePoint:
    """Wait `delay` virtual seconds and `checkpoints` scheduler turns, then pause.

    Then either resume in place (`in_place`) or snapshot, encode with `codec`, decode, and
    resume the snapshot in a fresh run.
    """

    delay: float = 0.0
    checkpoints: int = 0
    cancel_in_flight: bool = False
    in_place: bool = False
    codec: Codec = "msgpack"


def pause_plans(
    *, max_pauses: int = 3, max_delay: float = 10.0, max_checkpoints: int = 30
) -> st.SearchStrategy[list[PausePoint]]:
    """Lists of pause points: when to pause, in which mode, and how to resume."""
    point = st.builds(
        PausePoint,
        delay=st.floats(min_value=0.0, max_value=max_delay, allow_nan=False),
        checkpoints=st.integers(min_value=0, max_value=max_checkpoints),
        cancel_in_flight=st.booleans(),
        in_place=st.booleans(),
        codec=st.sampled_from(["msgpack", "json"]),
    )
    return st.lists(point, min_size=1, max_size=max_pauses)


@attrs.frozen
class RunRecord:
    """What a run produced, as the invariant checker compares it."""

    result: Any
    state: dict[str, Any]
    executions: Counter[Execution]
    resumes: int = 0


def _round_trip(snapshot: WorkflowSnapshot, codec: Codec) -> WorkflowSnapshot:
    if codec == "json":
        return WorkflowSnapshot.from_json(snapshot.to_json())
    return WorkflowSnapshot.from_bytes(snapshot.to_bytes())


async def _answer_requests(handler: WorkflowHandler, respond: Responder) -> None:
    """Play the human: answer every input request the run announces."""
    async with handler.stream_events(replay=True) as events:
        async for event in events:
            if isinstance(event, InputRequestEvent):
                try:
                    await handler.respond_to_input(event.request_id, respond(event))
                except RunFinished:
                    return


class _Recorder:
    """Runs segments of one logical run and adds up what they committed."""

    def __init__(self, workflow: Workflow, respond: Responder | None) -> None:
        self.workflow = workflow
        self.respond = respond
        self.executions: Counter[Execution] = Counter()

    async def segment(
        self,
        input: Any,
        resume: WorkflowSnapshot | None,
        body: Callable[[WorkflowHandler], Any],
    ) -> Any:
        async with self.workflow.start(None if resume else input, resume=resume) as handler:
            run = handler._run
            run.commit_log = []
            try:
                async with trio.open_nursery() as nursery:
                    if self.respond is not None:
                        nursery.start_soon(_answer_requests, handler, self.respond)
                    outcome = await body(handler)
                    nursery.cancel_scope.cancel()
            finally:
                self.executions.update(
                    (step, msgspec.json.encode(encode_event(ev))) for step, ev in run.commit_log
                )
            return outcome

    def record(self, handler: WorkflowHandler, result: Any, resumes: int) -> RunRecord:
        return RunRecord(result, dict(handler._run.state.values), self.executions, resumes)


async def run_uninterrupted(
    workflow: Workflow, input: Any, *, respond: Responder | None = None
) -> RunRecord:
    """Run once, start to finish, recording the invariant's observables."""
    recorder = _Recorder(workflow, respond)

    async def finish(handler: WorkflowHandler) -> RunRecord:
        result = await handler.result()
        return recorder.record(handler, result.result, 0)

    record: RunRecord = await recorder.segment(input, None, finish)
    return record


async def run_with_pauses(
    workflow: Workflow,
    input: Any,
    plan: list[PausePoint],
    *,
    respond: Responder | None = None,
) -> RunRecord:
    """Run with a pause at each point of `plan`; resume in place or from bytes."""
    recorder = _Recorder(workflow, respond)
    snapshot: WorkflowSnapshot | None = None
    resumes = 0
    points = list(plan)

    async def pause_then_finish(handler: WorkflowHandler) -> RunRecord | WorkflowSnapshot:
        nonlocal resumes
        while points:
            point = points.pop(0)
            await trio.sleep(point.delay)
            for _ in range(point.checkpoints):
                await trio.lowlevel.checkpoint()
            try:
                await handler.pause(cancel_in_flight=point.cancel_in_flight)
                if point.in_place:
                    await handler.resume()
                    continue
                taken = _round_trip(await handler.snapshot(), point.codec)
            except RunFinished:
                break  # the run ended first: nothing left to pause
            resumes += 1
            await handler.abort()
            return taken
        result = await handler.result()
        return recorder.record(handler, result.result, resumes)

    while True:
        outcome = await recorder.segment(input, snapshot, pause_then_finish)
        if isinstance(outcome, RunRecord):
            return outcome
        snapshot = outcome


def _diff(what: str, expected: object, actual: object) -> str:
    return f"{what} differs after pause/resume:\n  uninterrupted: {expected!r}\n  paused:        {actual!r}"


def assert_same_run(expected: RunRecord, actual: RunRecord) -> None:
    """Result, final state and committed executions must be equal."""
    assert actual.result == expected.result, _diff("result", expected.result, actual.result)
    assert actual.state == expected.state, _diff("final state", expected.state, actual.state)
    missing = expected.executions - actual.executions
    extra = actual.executions - expected.executions
    assert not missing and not extra, (
        f"committed step executions differ after pause/resume:\n"
        f"  missing: {dict(missing)!r}\n  extra:   {dict(extra)!r}"
    )


def check_pause_resume(
    workflow: Workflow,
    input: Any,
    plan: list[PausePoint],
    *,
    respond: Responder | None = None,
) -> RunRecord:
    """Assert the lossless-pause invariant for one plan, in virtual time; a sync call.

    Returns the paused run's record (e.g. to assert that it really was resumed).
    """

    async def both() -> RunRecord:
        expected = await run_uninterrupted(workflow, input, respond=respond)
        actual = await run_with_pauses(workflow, input, plan, respond=respond)
        assert_same_run(expected, actual)
        return actual

    record: RunRecord = trio.run(both, clock=trio.testing.MockClock(autojump_threshold=0))
    return record


__all__ = [
    "Event",
    "PausePoint",
    "RunRecord",
    "assert_same_run",
    "check_pause_resume",
    "pause_plans",
    "run_uninterrupted",
    "run_with_pauses",
]
