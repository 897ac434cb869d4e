"""The pause/resume invariant checker: one uninterrupted run against one paused and resumed.

See `blazen_trio.testing` for how to use it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import attrs
import msgspec
import trio
import trio.testing

from .._broadcast import EventStream
from .._codec import WorkflowSnapshot, encode_event
from .._errors import RunFinished, UnknownInputRequest
from .._events import InputRequestEvent, StreamLagged
from .._handler import WorkflowHandler
from .._records import HistoryKind, StepCommit, WorkflowResult
from .._workflow import Workflow

Codec = Literal["msgpack", "json"]
Responder = Callable[[InputRequestEvent], Any]
Execution = tuple[str, bytes]
Failure = tuple[str | None, int | None, str | None]

DEFAULT_TIME_LIMIT = 86_400.0
"""Virtual seconds a checked run may take before the checker calls it stuck."""


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


@attrs.frozen
class RunRecord:
    """What a run produced, as the invariant checker compares it.

    `executions` counts committed step executions as `(step name, encoded input event)`;
    `failures` counts failed step attempts as `(step name, attempt, error text)`, read from
    the run's history (so empty unless `Workflow(history=True)`): with it, a retry count lost
    across a pause shows as extra failures. `resumes` is how many times the run was resumed
    from a snapshot.
    """

    result: Any
    state: dict[str, Any]
    executions: Counter[Execution]
    resumes: int = 0
    failures: Counter[Failure] = attrs.field(factory=Counter)


def _round_trip(snapshot: WorkflowSnapshot, codec: Codec) -> WorkflowSnapshot:
    if codec == "json":
        return WorkflowSnapshot.from_json(snapshot.to_json())
    return WorkflowSnapshot.from_bytes(snapshot.to_bytes())


async def _answer(handler: WorkflowHandler, request: InputRequestEvent, respond: Responder) -> bool:
    """Answer one request; False once the run has ended."""
    try:
        await handler.respond_to_input(request.request_id, respond(request))
    except UnknownInputRequest:
        pass  # answered already (seen twice: after a lag, say)
    except RunFinished:
        return False
    return True


async def _answer_requests(
    handler: WorkflowHandler, events: EventStream, respond: Responder
) -> None:
    """Play the human: answer every input request the run announces on `events`."""
    async with events:
        async for event in events:
            if isinstance(event, StreamLagged):
                # Announcements may be lost: answer whatever is still outstanding.
                for request in handler.pending_input_requests:
                    if not await _answer(handler, request, respond):
                        return
            elif isinstance(event, InputRequestEvent) and not await _answer(
                handler, event, respond
            ):
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
        async with self.workflow.start(
            None if resume else input, resume=resume, on_commit=self._count
        ) as handler:
            # Subscribed here, before the first checkpoint, so no request can be missed; replay
            # brings the requests a resumed run announced while restoring.
            events = handler.stream_events(replay=True) if self.respond is not None else None
            try:
                async with trio.open_nursery() as nursery:
                    if events is not None and self.respond is not None:
                        nursery.start_soon(_answer_requests, handler, events, self.respond)
                    outcome = await body(handler)
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                # The run's error (or the responder's), not a group around it.
                if len(group.exceptions) == 1:
                    raise group.exceptions[0]  # noqa: B904  # its own cause stays attached
                raise
            return outcome

    def _count(self, commit: StepCommit) -> None:
        self.executions[(commit.step, msgspec.json.encode(encode_event(commit.event)))] += 1

    def record(self, handler: WorkflowHandler, result: WorkflowResult, resumes: int) -> RunRecord:
        failures: Counter[Failure] = Counter(
            (entry.step, entry.attempt, entry.detail)
            for entry in result.history or ()
            if entry.kind is HistoryKind.STEP_FAILED
        )
        return RunRecord(result.result, dict(handler.state), self.executions, resumes, failures)


async def run_uninterrupted(
    workflow: Workflow, input: Any, *, respond: Responder | None = None
) -> RunRecord:
    """Run once, start to finish, recording the invariant's observables.

    `respond(request)` answers each `InputRequestEvent` (through `respond_to_input`); without
    it a workflow that asks for input never finishes.
    """
    recorder = _Recorder(workflow, respond)

    async def finish(handler: WorkflowHandler) -> RunRecord:
        result = await handler.result()
        return recorder.record(handler, result, 0)

    record: RunRecord = await recorder.segment(input, None, finish)
    return record


async def run_with_pauses(
    workflow: Workflow,
    input: Any,
    plan: list[PausePoint],
    *,
    respond: Responder | None = None,
) -> RunRecord:
    """Run with a pause at each point of `plan`; resume in place or from bytes.

    Each delay counts from the previous pause's resume (or from the start). A point reached
    after the run ended is skipped.
    """
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
        return recorder.record(handler, result, resumes)

    while True:
        outcome = await recorder.segment(input, snapshot, pause_then_finish)
        if isinstance(outcome, RunRecord):
            return outcome
        snapshot = outcome


def _diff(what: str, expected: object, actual: object) -> str:
    return (
        f"{what} differs after pause/resume:\n"
        f"  uninterrupted: {expected!r}\n"
        f"  paused:        {actual!r}"
    )


def assert_same_run(expected: RunRecord, actual: RunRecord) -> None:
    """Result, final state, committed executions and failed attempts must be equal.

    Raises `AssertionError` saying what differs.
    """
    assert actual.result == expected.result, _diff("result", expected.result, actual.result)
    assert actual.state == expected.state, _diff("final state", expected.state, actual.state)
    assert actual.failures == expected.failures, _diff(
        "failed attempts", dict(expected.failures), dict(actual.failures)
    )
    missing = expected.executions - actual.executions
    extra = actual.executions - expected.executions
    assert not missing, f"committed step executions missing after pause/resume: {dict(missing)!r}"
    assert not extra, f"extra committed step executions after pause/resume: {dict(extra)!r}"


def check_pause_resume(
    workflow: Workflow,
    input: Any,
    plan: list[PausePoint],
    *,
    respond: Responder | None = None,
    time_limit: float = DEFAULT_TIME_LIMIT,
) -> RunRecord:
    """Assert the lossless-pause invariant for one plan, in virtual time; a sync call.

    Runs its own `trio.run` with a `MockClock` (autojump), so call it from a sync test (a
    hypothesis `@given` test, say), not from inside a Trio run. A run that takes more than
    `time_limit` virtual seconds (a deadlock, a request nobody answers) fails the check.
    Returns the paused run's record (e.g. to assert that it really was resumed).
    """

    async def both() -> RunRecord:
        with trio.move_on_after(time_limit) as limit:
            expected = await run_uninterrupted(workflow, input, respond=respond)
            actual = await run_with_pauses(workflow, input, plan, respond=respond)
        if limit.cancelled_caught:
            raise AssertionError(
                f"workflow {workflow.name!r} did not finish within {time_limit} virtual seconds "
                f"(plan {plan!r}): stuck, or waiting for input nobody gives?"
            )
        assert_same_run(expected, actual)
        return actual

    record: RunRecord = trio.run(both, clock=trio.testing.MockClock(autojump_threshold=0))
    return record
