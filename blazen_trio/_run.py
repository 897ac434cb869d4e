"""The run loop: one nursery per run, one cancel scope per step attempt.

Events are routed when the step that emitted them completes. A step invocation runs in a
worker task; when its commit yields new work and nothing is waiting in the inbox, the same
worker carries on with it (a chain of steps costs no task spawn per step). The inbox, a memory
channel, carries control commands and the commits queued behind them, so the run sees one total
order of commits and commands. See docs/architecture.md.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._broadcast import Broadcast
from ._context import Context
from ._errors import (
    NoHandler,
    RunFinished,
    StepFailed,
    StepTimeout,
    WorkflowAborted,
    WorkflowError,
    WorkflowStalled,
    WorkflowTimeout,
)
from ._events import (
    Event,
    StepCompleted,
    StepErrored,
    StepStarted,
    StopEvent,
    UsageEvent,
    event_type_id,
)
from ._history import History, HistoryEntry, HistoryKind
from ._retry import RetryPolicy
from ._state import RunState, UndoLog
from ._steps import StepSpec

if TYPE_CHECKING:
    from ._workflow import Workflow


class RunStatus(StrEnum):
    """Where a run is in its life; `str` so it compares equal to the plain names."""

    RUNNING = "running"
    PAUSED = "paused"
    WAITING_FOR_INPUT = "waiting_for_input"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"


@attrs.frozen
class Usage:
    """Token totals summed over every `UsageEvent` the run emitted."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, event: UsageEvent) -> Usage:
        return Usage(
            self.prompt_tokens + event.prompt_tokens,
            self.completion_tokens + event.completion_tokens,
            self.total_tokens + event.total_tokens,
        )


@attrs.frozen
class WorkflowResult:
    """What a completed run produced."""

    result: Any
    event: StopEvent
    run_id: str
    usage: Usage
    cost_usd: float
    history: tuple[HistoryEntry, ...] | None = None


@attrs.define(eq=False, slots=True)
class Envelope:
    """A committed event with its commit order and the step that emitted it."""

    event: Event
    seq: int
    source: str | None


@attrs.define(eq=False, slots=True)
class StepSlot:
    """One step's run-time side: its limiter and the invocations waiting for it, in order."""

    spec: StepSpec
    retry: RetryPolicy | None
    limiter: trio.CapacityLimiter | None
    queue: deque[Invocation] = attrs.Factory(deque)


@attrs.define(eq=False, slots=True)
class Invocation:
    """One delivery of one event to one step: queued, then in flight until committed."""

    slot: StepSlot
    envelope: Envelope
    attempt: int = 1
    undo: UndoLog = attrs.Factory(list)
    sent: list[Event] = attrs.Factory(list)
    closed: bool = False

    def check_open(self, what: str) -> None:
        if self.closed:
            raise RuntimeError(
                f"{what} called after step {self.slot.spec.name!r} completed; "
                "keep using the Context only inside the step"
            )


@attrs.frozen
class _QueuedCommit:
    """A completed step's outputs, waiting behind a control command in the inbox."""

    invocation: Invocation
    events: list[Event]

    def apply(self, run: Run) -> None:
        run.spawn(run.commit(self.invocation, self.events))


_Message = _QueuedCommit


def _bad_return(spec: StepSpec, output: object) -> StepFailed:
    return StepFailed(
        spec.name,
        f"step {spec.name!r} returned {type(output).__qualname__}; a step returns an Event, "
        "a list of Events, or None",
    )


def _step_failure(spec: StepSpec, error: Exception) -> StepFailed:
    if isinstance(error, StepFailed) and error.step_name == spec.name:
        return error  # our own StepTimeout: already names the step
    failure = StepFailed(spec.name, f"step {spec.name!r} failed: {type(error).__name__}: {error}")
    failure.__cause__ = error
    return failure


class Run:
    """The state and tasks of one workflow run; driven by `Workflow.start`."""

    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow
        self.run_id = str(uuid.uuid4())
        self.state = RunState()
        self.status = RunStatus.RUNNING
        self.usage = Usage()
        self.cost_usd = 0.0
        self.outcome: WorkflowResult | WorkflowError | None = None
        self.finished = trio.Event()
        self.broadcast = Broadcast(workflow.stream_replay)
        self.history = History(workflow.history_limit) if workflow.history else None
        self._lifecycle = workflow.publish_lifecycle
        self._observed = self._lifecycle or self.history is not None
        self._slots = [
            StepSlot(
                spec,
                spec.retry or workflow.retry,
                trio.CapacityLimiter(spec.max_concurrency) if spec.max_concurrency else None,
            )
            for spec in workflow.steps
        ]
        self._in_flight: set[Invocation] = set()
        self._queued = 0
        self._seq = 0
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        # Unbounded on purpose: a step's commit must never block or be dropped, and what waits
        # here is bounded by the commands a caller sent plus the commits queued behind them.
        self._inbox_send, self._inbox = trio.open_memory_channel[_Message](math.inf)
        self._inbox_backlog = 0

    # -- the run's task ------------------------------------------------------------------

    async def main(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Run until the first StopEvent, a failure, the timeout or cancellation.

        Nothing is routed until `begin`, so the starter can subscribe to the stream first.
        """
        try:
            with self._scope:
                if self.workflow.timeout is not None:
                    self._scope.relative_deadline = self.workflow.timeout
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._serve_inbox)
                    task_status.started()
        finally:
            self._settle()

    def begin(self, first: Event) -> None:
        """Route the start event; its steps run at the starter's next checkpoint."""
        self._record(HistoryKind.RUN_STARTED)
        self.spawn(self._route([first], source=None))

    def _settle(self) -> None:
        if self.outcome is None:
            if self._scope.cancelled_caught:
                self._finish(WorkflowTimeout(self.workflow.timeout or 0.0), RunStatus.FAILED)
            else:
                self._finish(WorkflowAborted(f"run {self.run_id} was cancelled"), RunStatus.ABORTED)
        self._inbox_send.close()
        self.finished.set()

    async def _serve_inbox(self) -> None:
        async for message in self._inbox:
            self._inbox_backlog -= 1
            message.apply(self)

    def spawn(self, ready: Sequence[Invocation]) -> None:
        assert self._nursery is not None
        for invocation in ready:
            self._nursery.start_soon(self._work, invocation)

    async def _work(self, invocation: Invocation | None) -> None:
        """A worker: runs an invocation, then whatever work its commit handed back."""
        while invocation is not None:
            invocation = await self._execute(invocation)
            if invocation is not None:
                await trio.lowlevel.checkpoint()

    # -- one invocation ------------------------------------------------------------------

    async def _execute(self, invocation: Invocation) -> Invocation | None:
        spec = invocation.slot.spec
        while True:
            started = self._step_started(invocation) if self._observed else 0.0
            error, output = await self._attempt(invocation)
            if error is None:
                events = self._outputs(invocation, output)
                if events is None:
                    return None
                if self._observed:
                    self._step_completed(invocation, started)
                return self._complete(invocation, events)
            if self._observed:
                self._step_errored(invocation, error, started)
            self.state.rollback(invocation.undo)
            invocation.sent.clear()
            policy = invocation.slot.retry
            if policy is None or not policy.should_retry(error, invocation.attempt):
                self.fail(_step_failure(spec, error))
                return None
            delay = policy.delay_before(invocation.attempt + 1)
            self._record(HistoryKind.STEP_RETRIED, step=spec.name, attempt=invocation.attempt + 1)
            await trio.sleep(delay)
            invocation.attempt += 1

    async def _attempt(self, invocation: Invocation) -> tuple[Exception | None, Any]:
        spec = invocation.slot.spec
        ctx = Context(self, invocation)
        event = invocation.envelope.event
        with trio.CancelScope() as scope:
            if spec.timeout is not None:
                scope.relative_deadline = spec.timeout
            try:
                if spec.context_position is None:
                    return None, await spec.fn(event)
                if spec.context_position == 0:
                    return None, await spec.fn(ctx, event)
                return None, await spec.fn(event, ctx)
            except Exception as exc:  # a step's failure is data for the run
                return exc, None
        assert scope.cancelled_caught
        return StepTimeout(spec.name, spec.timeout or 0.0), None

    def _complete(self, invocation: Invocation, events: list[Event]) -> Invocation | None:
        """Commit the outputs of a finished step; returns the worker's next invocation."""
        invocation.closed = True
        if self._inbox_backlog:
            self._defer(_QueuedCommit(invocation, events))
            return None
        ready = self.commit(invocation, events)
        if not ready:
            return None
        self.spawn(ready[1:])
        return ready[0]

    def _outputs(self, invocation: Invocation, output: object) -> list[Event] | None:
        sent = invocation.sent
        if isinstance(output, Event):
            return [*sent, output] if sent else [output]
        if output is None:
            return sent
        if isinstance(output, list) and all(isinstance(item, Event) for item in output):
            return [*sent, *output]
        self.fail(_bad_return(invocation.slot.spec, output))
        return None

    # -- routing -------------------------------------------------------------------------

    def commit(self, invocation: Invocation, events: list[Event]) -> list[Invocation]:
        """Make a completed invocation's outputs durable work; return invocations now ready."""
        self._in_flight.discard(invocation)
        ready = self._route(events, invocation.slot.spec.name)
        ready.extend(self._release(invocation))
        if not self._in_flight and not ready:
            self._check_idle()
        return ready

    def _route(self, events: list[Event], source: str | None) -> list[Invocation]:
        ready: list[Invocation] = []
        for event in events:
            if self.outcome is not None:
                break
            self._seq += 1
            envelope = Envelope(event, self._seq, source)
            if self.history is not None:
                self._record(
                    HistoryKind.EVENT_RECEIVED, step=source, event_type=event_type_id(event)
                )
            if isinstance(event, StopEvent):
                self._complete_run(event)
                break
            targets = self.workflow.targets(type(event))
            if not targets:
                self.fail(NoHandler(event_type_id(event), source))
                break
            for index in targets:
                invocation = Invocation(self._slots[index], envelope)
                if self._admit(invocation):
                    ready.append(invocation)
        return ready

    def _admit(self, invocation: Invocation) -> bool:
        """Start the invocation now (True) or queue it behind its step's limit (False)."""
        slot = invocation.slot
        if not slot.queue:
            if slot.limiter is None:
                self._in_flight.add(invocation)
                return True
            try:
                slot.limiter.acquire_on_behalf_of_nowait(invocation)
            except trio.WouldBlock:
                pass
            else:
                self._in_flight.add(invocation)
                return True
        slot.queue.append(invocation)
        self._queued += 1
        return False

    def _release(self, invocation: Invocation) -> list[Invocation]:
        slot = invocation.slot
        if slot.limiter is None:
            return []
        slot.limiter.release_on_behalf_of(invocation)
        if not slot.queue or self.outcome is not None:
            return []
        following = slot.queue.popleft()
        self._queued -= 1
        slot.limiter.acquire_on_behalf_of_nowait(following)
        self._in_flight.add(following)
        return [following]

    def _check_idle(self) -> None:
        if self.outcome is None and not self._queued and not self._inbox_backlog:
            self.fail(
                WorkflowStalled(
                    f"run {self.run_id} of {self.workflow.name!r} went idle: no step is running, "
                    "no event is pending and no StopEvent was emitted"
                )
            )

    def _defer(self, message: _Message) -> None:
        self._inbox_backlog += 1
        self._inbox_send.send_nowait(message)

    # -- stream, usage, lifecycle and history -------------------------------------------

    def publish(self, event: Event) -> None:
        self.broadcast.publish(event)

    def record_usage(self, usage: UsageEvent) -> None:
        self.usage += usage
        self.cost_usd += usage.cost_usd
        self.publish(usage)

    def _record(self, kind: HistoryKind, **fields: Any) -> None:
        if self.history is not None:
            self.history.record(kind, **fields)

    def _step_started(self, invocation: Invocation) -> float:
        name = invocation.slot.spec.name
        event_type = event_type_id(invocation.envelope.event)
        self._record(
            HistoryKind.STEP_DISPATCHED,
            step=name,
            event_type=event_type,
            attempt=invocation.attempt,
        )
        if self._lifecycle:
            self.publish(StepStarted(step=name, event_type=event_type, attempt=invocation.attempt))
        return trio.current_time()

    def _step_completed(self, invocation: Invocation, started: float) -> None:
        name = invocation.slot.spec.name
        duration = trio.current_time() - started
        self._record(HistoryKind.STEP_COMPLETED, step=name, duration=duration)
        if self._lifecycle:
            self.publish(StepCompleted(step=name, duration=duration))

    def _step_errored(self, invocation: Invocation, error: Exception, started: float) -> None:
        name = invocation.slot.spec.name
        text = f"{type(error).__name__}: {error}"
        self._record(
            HistoryKind.STEP_FAILED,
            step=name,
            attempt=invocation.attempt,
            duration=trio.current_time() - started,
            detail=text,
        )
        if self._lifecycle:
            self.publish(StepErrored(step=name, error=text, attempt=invocation.attempt))

    # -- the end -------------------------------------------------------------------------

    def _complete_run(self, stop: StopEvent) -> None:
        self._finish(stop, RunStatus.COMPLETED)

    def fail(self, error: WorkflowError) -> None:
        self._finish(error, RunStatus.FAILED)

    def abort(self) -> None:
        self._finish(WorkflowAborted(f"run {self.run_id} was aborted"), RunStatus.ABORTED)

    def _finish(self, outcome: StopEvent | WorkflowError, status: RunStatus) -> None:
        """First outcome wins; cancelling the scope stops every task of the run."""
        if self.outcome is not None:
            return
        if self.history is not None:
            self._record_end(outcome, status)
        if isinstance(outcome, StopEvent):
            self.publish(outcome)  # the last event on the stream: closed right below
            self.outcome = WorkflowResult(
                outcome.result, outcome, self.run_id, self.usage, self.cost_usd, self.history_view
            )
        else:
            self.outcome = outcome
        self.status = status
        self._scope.cancel()
        self.broadcast.close()

    @property
    def history_view(self) -> tuple[HistoryEntry, ...] | None:
        return tuple(self.history.entries) if self.history is not None else None

    def _record_end(self, outcome: StopEvent | WorkflowError, status: RunStatus) -> None:
        if isinstance(outcome, WorkflowTimeout):
            self._record(HistoryKind.TIMED_OUT, detail=str(outcome))
        elif status is RunStatus.COMPLETED:
            self._record(HistoryKind.COMPLETED)
        elif status is RunStatus.ABORTED:
            self._record(HistoryKind.ABORTED, detail=str(outcome))
        else:
            self._record(HistoryKind.FAILED, detail=str(outcome))

    def check_running(self, what: str) -> None:
        if self.outcome is not None:
            raise RunFinished(f"{what}: run {self.run_id} already finished ({self.status})")
