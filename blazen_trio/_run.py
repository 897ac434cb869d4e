"""The run loop: one nursery per run, one cancel scope per worker task.

Events are routed when the step that emitted them completes. A step invocation runs in a
worker task whose cancel scope holds one uncommitted invocation at a time; when its commit
yields new work and no command is waiting in the inbox, the same worker carries on with it (a
chain of steps costs no task spawn per step). The run's own task is its first worker, and a
worker left with nothing to do waits idle for the next invocation (a few at most), so a
bounded step's items reuse a pool of workers. The inbox, a memory channel, carries control
commands (data, interpreted here) and the commits queued behind them, so the run sees one
total order of commits and commands. See docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any, Final, Protocol, TypeGuard, runtime_checkable

import attrs
import msgspec
import outcome
import trio

from ._broadcast import Broadcast
from ._capture import (
    RestoredRun,
    Work,
    change_fields,
    routed_fields,
    snapshot_of,
    stored_result,
)
from ._codec import WorkflowSnapshot, builtin_event_problem, encode_event
from ._context import Context
from ._control import Command, Pause, Reply, RespondToInput, Resume, TakeSnapshot
from ._durable import JournalWriter
from ._errors import (
    CheckpointStoreError,
    InputUnanswerable,
    NoHandler,
    RunCrashed,
    RunFinished,
    RunSuspended,
    StepFailed,
    StepTimeout,
    UnknownInputRequest,
    WorkflowAborted,
    WorkflowError,
    WorkflowStalled,
    WorkflowTimeout,
)
from ._events import (
    INT64_MAX,
    Event,
    InputRequestEvent,
    InputResponseEvent,
    StepCompleted,
    StepErrored,
    StepStarted,
    StopEvent,
    SubWorkflowEvent,
    UsageEvent,
    event_type_id,
)
from ._history import History
from ._records import (
    ChildMemo,
    HistoryEntry,
    HistoryKind,
    RefLifetime,
    RunStatus,
    SessionPausePolicy,
    StepCommit,
    StepShape,
    Usage,
    UsageTotals,
    WorkflowResult,
)
from ._refs import SessionRefRegistry
from ._retry import RetryPolicy
from ._state import RunState, UndoLog, changes_of
from ._steps import StepSpec
from ._stores import CheckpointStore

InputHandler = Callable[[InputRequestEvent], Awaitable[Any]]
CommitObserver = Callable[[StepCommit], object]

MAX_SUB_WORKFLOW_DEPTH = 16
"""Sub-workflows nest at most this deep: a recursion that never ends fails clearly instead."""

# Source step recorded for responses that came from outside the run.
HUMAN_INPUT = "__human_input"
INPUT_HANDLER = "__input_handler"


@runtime_checkable
class RunDefinition(Protocol):
    """What a run reads of its workflow (`Workflow` is one); the loop never imports it."""

    @property
    def name(self) -> str: ...
    @property
    def steps(self) -> tuple[StepSpec, ...]: ...
    @property
    def timeout(self) -> float | None: ...
    @property
    def retry(self) -> RetryPolicy | None: ...
    @property
    def input_handler(self) -> InputHandler | None: ...
    @property
    def session_pause_policy(self) -> SessionPausePolicy: ...
    @property
    def history(self) -> bool: ...
    @property
    def history_limit(self) -> int: ...
    @property
    def publish_lifecycle(self) -> bool: ...
    @property
    def stream_replay(self) -> int: ...
    def targets(self, event_type: type[Event]) -> tuple[int, ...]: ...
    @property
    def routes(self) -> Mapping[type[Event], tuple[int, ...]]: ...
    def check_portable(self, snapshot: WorkflowSnapshot) -> None: ...
    @property
    def fingerprint(self) -> dict[str, StepShape]: ...
    def _known(self) -> dict[str, type[Event]]: ...
    async def _open(
        self,
        input: Any,
        resume: WorkflowSnapshot | None,
        run_id: str | None,
        fork: bool,
        on_commit: CommitObserver | None,
        store: CheckpointStore | None,
        *,
        parent: str | None = None,
    ) -> Run: ...


class Envelope(msgspec.Struct, eq=False, gc=False):
    """A committed event with its commit order and the step that emitted it.

    A Struct: built once per routed event, in C; never part of a reference cycle.
    """

    event: Event
    seq: int
    source: str | None


_seq_of = attrgetter("envelope.seq")


@attrs.define(eq=False, slots=True)
class StepSlot:
    """One step's run-time side: its limiter and the invocations waiting for it, in order.

    `returned` holds invocations a cancelling pause put back, merged into `queue` in commit
    order when the step may start work again (one sort per pause, not a scan per invocation).
    """

    spec: StepSpec
    retry: RetryPolicy | None
    limiter: trio.CapacityLimiter | None
    # Each made by its first invocation (most steps of most runs never queue one).
    queue: deque[Invocation] | None = None
    returned: list[Invocation] | None = None  # put back by a pause

    def enqueue(self, invocation: Invocation) -> None:
        if self.queue is None:
            self.queue = deque()
        self.queue.append(invocation)

    def put_back(self, invocation: Invocation) -> None:
        if self.returned is None:
            self.returned = []
        self.returned.append(invocation)

    def take_slot(self, invocation: Invocation) -> bool:
        """Take one of the step's `max_concurrency` slots for `invocation` if one is free:
        True if taken (always, for a step with no limit)."""
        if self.limiter is None:
            return True
        try:
            self.limiter.acquire_on_behalf_of_nowait(invocation)
        except trio.WouldBlock:
            return False
        return True

    def merge_returned(self) -> None:
        if self.returned:
            self.returned.sort(key=_seq_of)
            self.queue = deque(heapq.merge(self.returned, self.queue or (), key=_seq_of))
        self.returned = None

    def waiting(self) -> list[Invocation]:
        """Its invocations not started: queued, or put back by a pause."""
        return [*(self.queue or ()), *(self.returned or ())]


@attrs.define(eq=False, slots=True)
class Family:
    """A step invocation's sub-workflows: how many `ctx.run_workflow` calls its attempt made,
    the children going on now, and those finished (or restored) so a re-run skips them."""

    calls: int = 0
    children: dict[int, Run] = attrs.Factory(dict)
    memo: dict[int, ChildMemo | WorkflowResult] = attrs.Factory(dict)


_NO_USAGE: Final = Usage()

IDLE_WORKERS: Final = 16
"""Workers a run keeps idle for the next invocations; more than that exit when done."""

_NO_CHILDREN: Final[dict[int, Run]] = {}  # never written: read when an invocation has none


class Invocation(msgspec.Struct, eq=False):
    """One delivery of one event to one step: queued, then in flight until committed.

    A Struct: built once per delivery, in C.
    """

    slot: StepSlot
    envelope: Envelope
    attempt: int = 1
    undo: UndoLog = msgspec.field(default_factory=list)
    sent: list[Event] = msgspec.field(default_factory=list)
    closed: bool = False
    scope: trio.CancelScope | None = None
    # Made by the first `ctx.run_workflow` call (or a restored child): most steps have none.
    family: Family | None = None
    # An undeclared send: it fails the step even if the step caught it, and is not retried.
    refused: StepFailed | None = None

    @property
    def step_name(self) -> str:
        return self.slot.spec.name

    @property
    def delivery(self) -> int:
        """The routing order of the consumed event: kept by snapshots and journals."""
        return self.envelope.seq

    def reserve_calls(self, count: int) -> int:
        """Number the next `count` sub-workflow calls; returns the first index."""
        family = self.own_family()
        first = family.calls
        family.calls += count
        return first

    def own_family(self) -> Family:
        if self.family is None:
            self.family = Family()
        return self.family

    @property
    def children(self) -> dict[int, Run]:
        """Sub-workflows going on now, by call index (empty for most steps)."""
        return self.family.children if self.family is not None else _NO_CHILDREN

    def send(self, event: Event) -> None:
        """`ctx.send_event`: keep the event for the commit, if the step may emit it."""
        spec = self.slot.spec
        if type(event) not in spec._emits_checked:
            self.refused = _emit_problem(spec, event, "sent")
            if self.refused is not None:
                raise self.refused
        self.sent.append(event)

    def check_open(self, what: str) -> None:
        if self.closed:
            raise RuntimeError(
                f"{what} called after step {self.slot.spec.name!r} completed; "
                "keep using the Context only inside the step"
            )


@attrs.frozen(eq=False)
class QueuedCommit:
    """A completed step's outputs, waiting behind a command in the inbox to keep the order."""

    invocation: Invocation
    envelopes: list[Envelope]


Message = Command | QueuedCommit


def _bad_return(spec: StepSpec, output: object) -> StepFailed:
    return StepFailed(
        spec.name,
        f"step {spec.name!r} returned {type(output).__qualname__}; a step returns an Event, "
        "a list of Events, or None",
    )


def _emit_problem(spec: StepSpec, event: Event, how: str) -> StepFailed | None:
    """Why `spec` may not emit `event`: a type it does not declare, a malformed request.

    Callers skip it for the classes in `spec._emits_checked`, which it fills: the classes
    found fine, except input requests (each is checked).
    """
    if not spec.may_emit(type(event)):
        return _undeclared(spec, event, how)
    if type(event) is not InputRequestEvent:
        spec._emits_checked.add(type(event))
        return None
    problem = builtin_event_problem(event)
    return None if problem is None else StepFailed(spec.name, f"invalid input request: {problem}")


def _undeclared(spec: StepSpec, event: Event, how: str) -> StepFailed:
    return StepFailed(
        spec.name,
        f"step {spec.name!r} {how} {type(event).__qualname__} ({event_type_id(event)}), which "
        "it does not declare; declare what a step emits in its return annotation or with emits=",
    )


def _failure(step_name: str, error: Exception) -> StepFailed:
    if isinstance(error, StepFailed) and error.step_name == step_name:
        return error  # our own StepTimeout: already names the step
    failure = StepFailed(step_name, f"step {step_name!r} failed: {type(error).__name__}: {error}")
    failure.__cause__ = error
    return failure


def _being_cancelled() -> bool:
    """True while the current task is inside a cancelled scope (its next checkpoint raises)."""
    return trio.current_effective_deadline() == -math.inf


def _describe(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in error.exceptions)
    return f"{type(error).__name__}: {error}"


def _split_crash(error: BaseException) -> tuple[Exception | None, BaseException | None]:
    """(what crashed the run, what must go on propagating: cancellation, KeyboardInterrupt),
    each unwrapped from its group when it is a single exception."""
    if isinstance(error, BaseExceptionGroup):
        crash, rest = error.split(Exception)
        crashed = None if crash is None else only_exception(crash)
        assert crashed is None or isinstance(crashed, Exception)  # split(Exception) made it
        return crashed, None if rest is None else only_exception(rest)
    if isinstance(error, Exception):
        return error, None
    return None, error


def only_exception(error: BaseException) -> BaseException:
    """The single exception inside (nested) one-member groups, else `error` itself."""
    found: BaseException = error
    while isinstance(found, BaseExceptionGroup) and len(found.exceptions) == 1:
        found = found.exceptions[0]
    return found


def _plus(totals: UsageTotals, usage: UsageEvent) -> UsageTotals:
    return UsageTotals(
        prompt_tokens=totals.prompt_tokens + usage.prompt_tokens,
        completion_tokens=totals.completion_tokens + usage.completion_tokens,
        total_tokens=totals.total_tokens + usage.total_tokens,
        cost_usd=totals.cost_usd + usage.cost_usd,
    )


_DEFINITIONS: set[type] = set()  # classes found to meet RunDefinition (a Protocol check is slow)


def _is_definition(value: object) -> TypeGuard[RunDefinition]:
    cls = type(value)
    if cls not in _DEFINITIONS:
        if not isinstance(value, RunDefinition):
            return False
        _DEFINITIONS.add(cls)
    return True


def _child_memos(invocation: Invocation) -> tuple[ChildMemo, ...]:
    """The invocation's sub-workflows as a snapshot keeps them: results, or snapshots."""
    memos = []
    if invocation.family is None:
        return ()
    for index, done in sorted(invocation.family.memo.items()):
        if isinstance(done, WorkflowResult):
            done = ChildMemo(index=index, run_id=done.run_id, result=encode_event(done.event))
        memos.append(done)
    memos.extend(
        ChildMemo(index=index, run_id=child.run_id, snapshot=child.capture().to_bytes())
        for index, child in sorted(invocation.children.items())
    )
    return tuple(memos)


class _ActiveClock:
    """Active run time: stops while paused or only waiting for input; drives the timeout."""

    def __init__(self, timeout: float | None, used: float) -> None:
        self._scope: trio.CancelScope | None = None  # the run's, once it is open
        self._timeout = timeout
        self._used = used
        self._since: float | None = None

    @property
    def used(self) -> float:
        running = trio.current_time() - self._since if self._since is not None else 0.0
        return self._used + running

    def start(self, scope: trio.CancelScope | None = None) -> None:
        self._scope = scope or self._scope
        if self._since is None:
            self._since = trio.current_time()
            if self._timeout is not None and self._scope is not None:
                self._scope.deadline = self._since + self._timeout - self._used

    def stop(self) -> None:
        if self._since is not None:
            self._used = self.used
            self._since = None
            if self._scope is not None:
                self._scope.deadline = math.inf


# Run ids are random UUIDs. A private generator (seeded from os.urandom, again after a fork)
# costs far less per run than uuid.uuid4() and ignores the user's random.seed().
_run_ids = random.Random()
os.register_at_fork(after_in_child=_run_ids.seed)


# The version (4) and variant (RFC 4122) bits of a UUID 4, and the mask that clears them.
_UUID4_BITS: Final = 0x0000_0000_0000_4000_8000_0000_0000_0000
_UUID4_MASK: Final = 0xFFFF_FFFF_FFFF_0FFF_3FFF_FFFF_FFFF_FFFF


def new_run_id() -> str:
    """A fresh random run id: a UUID 4 in its canonical form.

    Formatted here rather than by `uuid.UUID`, whose checks cost more than the rest of a
    short run's set-up (7 us against 0.6 us).
    """
    digits = f"{_run_ids.getrandbits(128) & _UUID4_MASK | _UUID4_BITS:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


class Run:
    """The state and tasks of one workflow run; driven by `Workflow.run` / `Workflow.start`."""

    # Slots: a parked run is mostly this object; 10,000 of them should not weigh a dict each.
    __slots__ = (
        "_abandoned",
        "_answering",
        "_changed",
        "_end_notes",
        "_exited",
        "_hosting",
        "_idle",
        "_inbox_backlog",
        "_inbox_send",
        "_journal",
        "_journaled_history",
        "_journaling",
        "_lifecycle",
        "_nursery",
        "_observed",
        "_on_commit",
        "_pause_replies",
        "_paused",
        "_queued",
        "_refs",
        "_routes",
        "_seq",
        "_start",
        "_status",
        "_stored_responses",
        "_unjournaled_usage",
        "broadcast",
        "clock",
        "commits",
        "cost_usd",
        "depth",
        "held",
        "history",
        "in_flight",
        "input_requests",
        "outcome",
        "parent",
        "restored",
        "run_id",
        "slots",
        "state",
        "stored_outcome",
        "usage",
        "workflow",
    )

    def __init__(
        self,
        workflow: RunDefinition,
        *,
        restored: RestoredRun | None = None,
        on_commit: CommitObserver | None = None,
        store: CheckpointStore | None = None,
        run_id: str | None = None,
        start: Event | None = None,
        journal_seq: int = 0,
    ) -> None:
        """`journal_seq`: the last record a new durable run's store already has for it (a
        submitted run a client paused and resumed before any worker started it)."""
        self.workflow = workflow
        # True once `Workflow.start` hands out a handler: then a human can answer requests.
        self.held = False
        self._start = start
        self.parent: Run | None = None  # the run whose step runs this one (a sub-workflow)
        self.depth = 0
        # A finished run attached to from its store: it ends at once with this.
        self.stored_outcome: WorkflowResult | WorkflowError | None = None
        self.run_id = restored.run_id if restored is not None else run_id or new_run_id()
        self.restored = restored is not None
        self.state = RunState()
        self._refs: SessionRefRegistry | None = None  # made by the first use
        self._status = RunStatus.RUNNING
        # Set at each status change, the run's end and its exit; made by the first waiter.
        self._changed: trio.Event | None = None
        self.usage = _NO_USAGE  # frozen: replaced, never changed in place
        self.cost_usd = 0.0
        self.outcome: WorkflowResult | WorkflowError | None = None
        self._exited = False  # every task of the run has exited
        self.broadcast = Broadcast(workflow.stream_replay)
        self.history = History(workflow.history_limit) if workflow.history else None
        # Outstanding input requests by id, in the order they were made.
        self.input_requests: dict[str, Envelope] = {}
        self._on_commit = on_commit
        self._routes = workflow.routes  # shared, filled by `workflow.targets`
        self._lifecycle = workflow.publish_lifecycle
        self._observed = self._lifecycle or self.history is not None
        self.slots = [
            StepSlot(
                spec,
                spec.retry or workflow.retry,
                trio.CapacityLimiter(spec.max_concurrency) if spec.max_concurrency else None,
            )
            for spec in workflow.steps
        ]
        self.in_flight: set[Invocation] = set()
        self._queued = 0
        self._seq = 0
        self.commits = 0
        self._paused = False
        self._pause_replies: tuple[Reply[None], ...] = ()  # a run rarely has more than one
        self._answering: dict[str, trio.CancelScope] = {}
        # What steps' cleanup raised while the run's end cancelled them: notes on its error.
        self._end_notes: tuple[str, ...] = ()
        self.clock = _ActiveClock(workflow.timeout, restored.active_time if restored else 0.0)
        self._nursery: trio.Nursery | None = None
        self._hosting = False  # the run's own task is one of its workers (see drive)
        self._idle: list[trio.lowlevel.Task] | None = None  # workers waiting for work
        # Opened by the first command (most runs never get one): see _post.
        self._inbox_send: trio.MemorySendChannel[Message] | None = None
        self._inbox_backlog = 0
        # A durable run writes each commit to its store before routing its outputs.
        journal_seq = restored.journal_seq if restored is not None else journal_seq
        self._journal = JournalWriter(store, self.run_id, journal_seq) if store else None
        self._journaled_history = 0  # sequence of the last history entry journaled
        self._unjournaled_usage = UsageTotals()
        self._abandoned = False  # cancelled from outside: the store keeps it running
        self._stored_responses: Sequence[InputResponseEvent] = ()
        self._journaling = 0  # durable routes waiting for their record
        if restored is not None:
            self._load(restored)

    def _load(self, restored: RestoredRun) -> None:
        self.state.values.update(restored.state)
        self.state.buffers.update(restored.buffers)
        self.usage = restored.usage
        self.cost_usd = restored.cost_usd
        if self.history is not None:
            self.history = History.restore(restored.history, self.workflow.history_limit)
        self._journaled_history = restored.history[-1].sequence if restored.history else 0
        self._stored_responses = tuple(restored.responses)
        self._refs = restored.refs
        slots = {slot.spec.name: slot for slot in self.slots}
        # Deliveries keep their routing order (a journal names them by it); snapshots that
        # predate it get fresh numbers after the highest kept one.
        self._seq = max([restored.routed_seq, *(work.seq for work in restored.pending)])
        for request in restored.input_requests:
            self.input_requests[request.request_id] = self._envelope(request, None)
            self.publish(request)  # announced again: a subscriber with replay sees it
        for work in sorted(restored.pending, key=lambda work: work.seq):
            if work.seq:
                envelope = Envelope(work.event, work.seq, work.source)
            else:
                envelope = self._envelope(work.event, work.source)
            invocation = Invocation(slots[work.step], envelope, work.attempt)
            if work.children:
                memos = invocation.own_family().memo
                memos.update((memo.index, memo) for memo in work.children)
            slots[work.step].enqueue(invocation)
            self._queued += 1

    @property
    def workflow_name(self) -> str:
        return self.workflow.name

    @property
    def status(self) -> RunStatus:
        return self._status

    @status.setter
    def status(self, status: RunStatus) -> None:
        if status is not self._status:
            self._status = status
            self._announce_change()

    def _announce_change(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait_until(self, done: Callable[[], bool]) -> None:
        """Wait until `done()`, looked at again at each change; a checkpoint either way."""
        if done():
            await trio.lowlevel.checkpoint()
            return
        while not done():
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()

    async def wait_for_status(self, wanted: frozenset[RunStatus]) -> RunStatus:
        """Wait until the run's status is one of `wanted`, or the run has ended."""
        await self._wait_until(lambda: self._status in wanted or self.outcome is not None)
        return self._status

    async def wait_exited(self) -> None:
        """Wait until every task of the run has exited (its outcome is known by then)."""
        await self._wait_until(lambda: self._exited)

    @property
    def refs(self) -> SessionRefRegistry:
        """The run's session-ref registry (most runs never use one)."""
        if self._refs is None:
            self._refs = SessionRefRegistry()
        return self._refs

    # -- the run's task ------------------------------------------------------------------

    async def drive(self, opening: Callable[[Run], Sequence[Invocation]]) -> None:
        """Run in this task until the first StopEvent, a failure, the timeout or cancellation.

        `opening(run)` is called once the run's nursery is open (it routes the start event,
        restarts restored work, or tells `nursery.start` that the run is ready). This task
        works on the first invocation it hands back itself, as a worker would: a run whose
        steps form a chain spawns no task. Whatever escapes the nursery besides cancellation
        becomes the run's `RunCrashed`.
        """
        try:
            # The nursery's own cancel scope is the run's: the workflow timeout is its
            # deadline, and every way a run ends with tasks left cancels it.
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.clock.start(nursery.cancel_scope)
                if self._journal is not None:
                    nursery.start_soon(self._journal.serve)
                await self._work_on(opening(self))
                if self.outcome is None:  # else the nursery's exit is this call's checkpoint
                    await self._wait_until(lambda: self.outcome is not None)
        except BaseException as escaped:
            crash, rest = _split_crash(escaped)
            if crash is not None:
                error = RunCrashed(f"run {self.run_id} crashed: {_describe(crash)}")
                error.__cause__ = crash
                self.fail(error)
            if rest is not None:
                raise rest from None
        finally:
            self._settle()
            if self._journal is not None:
                await self._close_journal(self._journal)
            self._exited = True
            self._announce_change()

    async def _work_on(self, ready: Sequence[Invocation]) -> None:
        """The driver's share of the opening work: it starts the others and works on the
        first itself (in a frame of its own, so nothing of that work outlives it)."""
        if ready:
            self.spawn(ready[1:])
            self._hosting = True
            await self._work(ready[0])
            self._hosting = False

    async def main(self, *, task_status: trio.TaskStatus[None]) -> None:
        """`drive`, as a task of the starter's nursery (for `Workflow.start`).

        Nothing is routed until `begin_as_opened`, so the starter can subscribe first.
        """

        def started(_: Run) -> Sequence[Invocation]:
            task_status.started()
            return ()

        await self.drive(started)

    def begin_as_opened(self) -> None:
        """Start the run's work (`opening_work`); its steps run at the starter's next
        checkpoint."""
        self.spawn(self.opening_work())

    def opening_work(self) -> list[Invocation]:
        """Route the start event, go on with restored work, or end with a stored outcome.

        Returns the invocations ready now and not yet started, for the caller to start.
        """
        if self.stored_outcome is not None:
            self._finish_stored(self.stored_outcome)
        elif self.restored:
            self._begin_restored()
        else:
            assert self._start is not None
            self._record(HistoryKind.RUN_STARTED)
            return self._route_new([self._start], None)
        return []

    def _finish_stored(self, outcome: WorkflowResult | WorkflowError) -> None:
        if isinstance(outcome, WorkflowResult):
            self.outcome = outcome
            self.status = RunStatus.COMPLETED
            self.broadcast.close()
        else:
            self._finish(outcome, RunStatus.FAILED)

    def _begin_restored(self) -> None:
        """Start the work of a run built from a snapshot (a new durable run's first one, too)."""
        self._record(HistoryKind.RUN_STARTED if self._start else HistoryKind.RUN_RESUMED)
        for request_id in self.input_requests:
            self._check_answerable(request_id)
        answers, self._stored_responses = self._stored_responses, ()
        if answers:  # recorded by `store.respond` while no process held the run
            self.spawn(self._route_new(answers, HUMAN_INPUT, responses_routed=True))
        self.restart()

    def _route_new(
        self, events: Sequence[Event], source: str | None, **fields: Any
    ) -> list[Invocation]:
        """Route events that no step committed (the start event, answers), returning the
        invocations ready now; a durable run journals them first, in a task of its own."""
        envelopes = self._envelopes(events, source)
        self._received(envelopes)
        if self._journal is None:
            return self._route(envelopes)
        assert self._nursery is not None
        self._journaling += 1  # work on its way: the run is not idle
        self._nursery.start_soon(self._route_durably, self._journal, envelopes, fields)
        return []

    async def _route_durably(
        self, journal: JournalWriter, envelopes: list[Envelope], fields: dict[str, Any]
    ) -> None:
        source = envelopes[0].source if envelopes else None
        written = await self._write(journal, **self._routed_fields(envelopes, source), **fields)
        self._journaling -= 1
        if written:
            self.spawn(self._route(envelopes))
        self._went_quiet()

    # -- the journal of a durable run ----------------------------------------------------

    async def _journal_commit(
        self, journal: JournalWriter, invocation: Invocation, envelopes: list[Envelope]
    ) -> bool:
        """Write the commit's record; False (the run failed) if it cannot be made durable."""
        spec = invocation.slot.spec
        try:
            fields = change_fields(
                changes_of(invocation.undo), self.refs, self.workflow.session_pause_policy
            )
        except WorkflowError as error:  # a value or a ref that cannot be stored
            self.fail(error)
            return False
        return await self._write(
            journal,
            step=spec.name,
            consumed=invocation.delivery,
            attempt=invocation.attempt,
            **self._routed_fields(envelopes, spec.name),
            **fields,
        )

    async def _write(self, journal: JournalWriter, **fields: Any) -> bool:
        """Journal a record and wait until it is durable; False (the run failed) if not."""
        try:
            await journal.write(time.time(), **fields, **self._since_last_record())
        except CheckpointStoreError as error:
            self.fail(error)
            return False
        return True

    def _routed_fields(self, envelopes: list[Envelope], source: str | None) -> dict[str, Any]:
        routed = routed_fields(((e.event, e.seq) for e in envelopes), source, self._target_names)
        fields: dict[str, Any] = {"routed": routed.routed, "requests": routed.requests}
        if routed.result is not None:
            fields.update(result=routed.result, status=RunStatus.COMPLETED)
        return fields

    def _target_names(self, event_type: type[Event]) -> list[str]:
        return [self.slots[index].spec.name for index in self.workflow.targets(event_type)]

    def _since_last_record(self) -> dict[str, Any]:
        """History and usage not journaled yet, and the active time so far."""
        fields: dict[str, Any] = {"active_time": self.clock.used}
        if self.history is not None:
            entries = [e for e in self.history.entries if e.sequence > self._journaled_history]
            if entries:
                fields["history"] = entries
                self._journaled_history = entries[-1].sequence
        if self._unjournaled_usage != UsageTotals():
            fields["usage"], self._unjournaled_usage = self._unjournaled_usage, UsageTotals()
        return fields

    def _journal_status(self, status: RunStatus) -> None:
        """Record a change of status (paused, waiting for input, running again)."""
        if self._journal is not None and self.outcome is None:
            self._journal.add(time.time(), status=status, **self._since_last_record())

    async def _close_journal(self, journal: JournalWriter) -> None:
        """Record how the run ended (a completed run's last commit already says so)."""
        outcome = self.outcome
        if isinstance(outcome, RunSuspended):
            journal.add(time.time(), status=self.status, **self._since_last_record())
        elif isinstance(outcome, WorkflowError) and not self._abandoned:
            journal.add(
                time.time(),
                status=self.status,
                error=f"{type(outcome).__name__}: {outcome}",
                **self._since_last_record(),
            )
        await journal.drain()

    def _settle(self) -> None:
        if self.outcome is None:
            if self._nursery is not None and self._nursery.cancel_scope.cancelled_caught:
                self._finish(WorkflowTimeout(self.workflow.timeout or 0.0), RunStatus.FAILED)
            else:  # cancelled from outside the run: a durable run stays in its store
                self._abandoned = True
                self._finish(WorkflowAborted(f"run {self.run_id} was cancelled"), RunStatus.ABORTED)
        if isinstance(self.outcome, WorkflowError):
            for note in self._end_notes:
                self.outcome.add_note(note)
        if self._inbox_send is not None:
            self._inbox_send.close()

    def _post(self, message: Message) -> None:
        """Queue a message for the inbox task, starting it with the first message."""
        if self._inbox_send is None:
            assert self._nursery is not None
            # Unbounded on purpose: a commit must never block or be dropped, and what waits
            # here is bounded by the commands callers sent plus the commits queued behind them.
            self._inbox_send, inbox = trio.open_memory_channel[Message](math.inf)
            self._nursery.start_soon(self._serve_inbox, inbox)
        self._inbox_backlog += 1
        self._inbox_send.send_nowait(message)

    async def _serve_inbox(self, inbox: trio.MemoryReceiveChannel[Message]) -> None:
        try:
            async for message in inbox:
                self._inbox_backlog -= 1
                if isinstance(message, QueuedCommit):
                    self.spawn(self.commit(message.invocation, message.envelopes))
                else:
                    await self._apply(message)
                # Whatever the order of commands and commits, the last one re-checks.
                self._went_quiet()
        finally:  # the run ended: what is still queued gets its answer
            ended = RunFinished(f"run {self.run_id} ended ({self.status})")
            while True:
                try:
                    message = inbox.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                if not isinstance(message, QueuedCommit):
                    message.reply.fail(ended)

    async def _apply(self, command: Command) -> None:
        """Carry out one command; its failure, whatever it is, answers its caller."""
        try:
            match command:
                case Pause(cancel_in_flight=cancel_in_flight, reply=reply):
                    self.pause(cancel_in_flight, reply)
                case Resume(reply=reply):
                    self.resume()
                    reply.set(None)
                case TakeSnapshot(reply=snapshot_reply):
                    snapshot_reply.set(self.capture())
                case RespondToInput(request_id=request_id, response=response, reply=reply):
                    await self.respond_to_input(request_id, response)
                    reply.set(None)
        except Exception as error:  # a WorkflowError, or a warning turned into an error
            command.reply.fail(error)

    async def command(self, command: Command) -> Any:
        """Send a control command through the inbox and wait for the run's answer."""
        self.check_running(command.method)
        self._post(command)
        return await command.reply.wait()

    def spawn(self, ready: Sequence[Invocation]) -> None:
        """Start invocations: each goes to an idle worker, or to a new one."""
        assert self._nursery is not None
        for invocation in ready:
            if self._idle:
                trio.lowlevel.reschedule(self._idle.pop(), outcome.Value(invocation))
            else:
                self._nursery.start_soon(self._work, invocation)

    async def _work(self, invocation: Invocation) -> None:
        """A worker: runs an invocation, then whatever work its commit handed back, then
        waits idle for more (a few workers stay idle, the rest exit), so the items of a
        bounded step reuse a pool of workers instead of a task each.

        The worker's cancel scope is the handle `pause(cancel_in_flight=True)` cancels: it
        holds one uncommitted invocation at a time (commits are synchronous), which goes back
        to its queue; the worker then exits.
        """
        current: Invocation | None = invocation
        with trio.CancelScope() as scope:
            invocation.scope = scope
            while current is not None:
                if self.outcome is not None:  # the run ended before this invocation started
                    return
                if self._paused:  # dispatched before the pause but not started: it waits
                    self._requeue(current)
                    return
                current = await self._attempts(current)
                if current is not None:
                    current.scope = scope  # reachable by a pause during the checkpoint
                    # Fairness: a chain of steps that never await must not starve the others.
                    await trio.lowlevel.checkpoint()
                elif self.outcome is None and len(self._idle or ()) < IDLE_WORKERS:
                    current = await self._next_invocation()
                    current.scope = scope
        if scope.cancelled_caught and current is not None:
            self._record(HistoryKind.STEP_CANCELLED, step=current.slot.spec.name, detail="pause")
            self._requeue(current)

    async def _next_invocation(self) -> Invocation:
        """Wait, idle, until `spawn` hands this worker an invocation (or the run ends)."""
        task = trio.lowlevel.current_task()
        if self._idle is None:
            self._idle = []
        idle = self._idle
        idle.append(task)

        def leave(_: Any) -> trio.lowlevel.Abort:
            idle.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        invocation: Invocation = await trio.lowlevel.wait_task_rescheduled(leave)
        return invocation

    # -- one invocation ------------------------------------------------------------------

    async def _attempts(self, invocation: Invocation) -> Invocation | None:
        """Run an invocation until it commits or fails the run, retrying as its step's policy
        says; returns the worker's next invocation."""
        spec = invocation.slot.spec
        while True:
            started = self._step_started(invocation) if self._observed else 0.0
            error: Exception | None = None
            try:
                if spec.context_position is None and spec.timeout is None:
                    output = await spec.fn(invocation.envelope.event)  # the usual step, inline
                else:
                    output = await self._step_call(invocation)
            except Exception as exc:  # a step's failure is data for the run
                await self._unwinding(spec.name, exc)
                error = exc
            except BaseExceptionGroup as group:  # Cancelled, beside what cleanup raised
                await self._unwinding(spec.name, group)
                raise
            if invocation.refused is not None:  # a programming error: never retried
                self.fail(invocation.refused)
                return None
            if error is not None:
                if await self._retrying(invocation, error, started):
                    continue
                self.fail(_failure(spec.name, error))
                return None
            envelopes = self._outputs(invocation, output)
            if envelopes is None:
                return None
            if self._observed:
                self._step_completed(invocation, started)
                self._received(envelopes)
            if self._journal is not None and not await self._journal_commit(
                self._journal, invocation, envelopes
            ):
                return None
            # Committed now, unless commands wait in the inbox: it keeps their order.
            invocation.closed = True
            if self._inbox_backlog:
                self._post(QueuedCommit(invocation, envelopes))
                return None
            ready = self.commit(invocation, envelopes)
            if len(ready) > 1:
                self.spawn(ready[1:])
            return ready[0] if ready else None

    def _step_call(self, invocation: Invocation) -> Awaitable[Any]:
        """This attempt's call of the step, to await: with its context, under its timeout.

        Built here and awaited by `_attempts` itself, so a step with no timeout costs no
        coroutine of the engine's between the worker and the step.
        """
        spec = invocation.slot.spec
        event = invocation.envelope.event
        if spec.context_position is None:
            call = spec.fn(event)
        elif spec.context_position == 0:
            call = spec.fn(Context._create(self, invocation), event)
        else:
            call = spec.fn(event, Context._create(self, invocation))
        return call if spec.timeout is None else self._within(call, spec.name, spec.timeout)

    async def _within(self, call: Awaitable[Any], step_name: str, seconds: float) -> Any:
        """Await a step's call in a cancel scope of its own; StepTimeout when it expires."""
        with trio.move_on_after(seconds) as scope:
            try:
                return await call
            except (Exception, BaseExceptionGroup) as error:  # inside the scope it timed out
                await self._unwinding(step_name, error)
                raise
        assert scope.cancelled_caught
        raise StepTimeout(step_name, seconds)

    async def _retrying(self, invocation: Invocation, error: Exception, started: float) -> bool:
        """Undo a failed attempt; if the step's policy retries it, count the attempt and wait
        its delay (True), else False."""
        spec = invocation.slot.spec
        if self._observed:
            self._step_errored(invocation, error, started)
        self.state.rollback(invocation.undo)
        invocation.sent.clear()
        invocation.family = None  # a retry runs the whole step again, its children too
        policy = invocation.slot.retry
        if policy is None or not policy.should_retry(error, invocation.attempt):
            return False
        invocation.attempt += 1
        self._record(HistoryKind.STEP_RETRIED, step=spec.name, attempt=invocation.attempt)
        if self._journal is not None:  # so a recovered run keeps counting attempts
            self._journal.add(
                time.time(),
                step=spec.name,
                retried=invocation.delivery,
                attempt=invocation.attempt,
                **self._since_last_record(),
            )
        await trio.sleep(policy.delay_before(invocation.attempt))
        return True

    async def _unwinding(self, where: str, error: BaseException) -> None:
        """A step (or input handler) being cancelled whose cleanup raised is still being
        cancelled: record what it raised and go on being cancelled (this raises Cancelled).
        Returns if it is not being cancelled or raised nothing but Cancelled."""
        raised: BaseException | None = error
        if isinstance(error, BaseExceptionGroup):
            raised = error.split(trio.Cancelled)[1]
        if raised is None or not _being_cancelled():
            return
        text = f"{where!r} raised while being cancelled: {_describe(raised)}"
        assert self._nursery is not None
        if self._nursery.cancel_scope.cancel_called:  # the run is ending (abort, timeout)
            self._end_notes += (text,)
        self._record(HistoryKind.STEP_CANCELLED, step=where, detail=text)
        await trio.lowlevel.checkpoint()  # raises Cancelled: the scope is cancelled

    def _outputs(self, invocation: Invocation, output: Any) -> list[Envelope] | None:
        """Sent events, then the returned ones, numbered; None (the run failed) for a wrong
        return. Sent events were checked when sent (`Invocation.send`)."""
        spec = invocation.slot.spec
        if type(output) in spec._emits_checked and not invocation.sent:  # the usual return
            self._seq += 1  # `_envelope`, inline: the call would be 2% of a chain step
            return [Envelope(output, self._seq, spec.name)]
        events = self._checked_outputs(spec, invocation.sent, output)
        return None if events is None else self._envelopes(events, spec.name)

    def _checked_outputs(
        self, spec: StepSpec, sent: list[Event], output: Any
    ) -> list[Event] | None:
        if isinstance(output, Event):
            returned: list[Event] = [output]
        elif output is None:
            return sent
        elif isinstance(output, list) and all(isinstance(item, Event) for item in output):
            returned = output
        else:
            self.fail(_bad_return(spec, output))
            return None
        for event in returned:
            if type(event) in spec._emits_checked:
                continue
            problem = _emit_problem(spec, event, "returned")
            if problem is not None:
                self.fail(problem)
                return None
        return [*sent, *returned] if sent else returned

    # -- routing -------------------------------------------------------------------------

    def commit(self, invocation: Invocation, envelopes: list[Envelope]) -> list[Invocation]:
        """Make a completed invocation's outputs durable work; return invocations now ready."""
        self.in_flight.discard(invocation)
        if invocation.undo:
            self.state.settle(invocation.undo)
        self.commits += 1
        if self._on_commit is not None:
            self._on_commit(
                StepCommit(
                    self.run_id,
                    invocation.slot.spec.name,
                    invocation.envelope.event,
                    tuple(envelope.event for envelope in envelopes),
                    invocation.attempt,
                    invocation.delivery,
                )
            )
        ready = self._route(envelopes)
        slot = invocation.slot
        if slot.limiter is not None:
            slot.limiter.release_on_behalf_of(invocation)
            # The step's next queued item first: this worker goes on with it (a worker pool).
            ready[:0] = self._start_queued(slot)
        if not self.in_flight and not ready:
            self._went_quiet()
        return ready

    def _envelopes(self, events: Iterable[Event], source: str | None) -> list[Envelope]:
        """Give emitted events their routing order, up to the first StopEvent (which wins)."""
        envelopes: list[Envelope] = []
        for event in events:
            if envelopes and isinstance(envelopes[-1].event, StopEvent):
                break  # checked before the next event: a lone event costs no check
            envelopes.append(self._envelope(event, source))
        return envelopes

    def _envelope(self, event: Event, source: str | None) -> Envelope:
        """An event with the next routing order."""
        self._seq += 1
        return Envelope(event, self._seq, source)

    def _received(self, envelopes: list[Envelope]) -> None:
        """New events for the history (restored work is not new)."""
        if self.history is not None:
            for envelope in envelopes:
                type_id = event_type_id(envelope.event)
                self._record(HistoryKind.EVENT_RECEIVED, step=envelope.source, event_type=type_id)

    def _route(self, envelopes: Iterable[Envelope]) -> list[Invocation]:
        ready: list[Invocation] = []
        for envelope in envelopes:
            if self.outcome is not None:
                break
            event = envelope.event
            targets = self._routes.get(type(event))
            if targets is None:  # a class not routed before: `targets` finds (and keeps) it
                targets = self.workflow.targets(type(event))
            if not targets:  # a StopEvent or an input request (never routed), or unhandled
                if isinstance(event, StopEvent):
                    self._finish(event, RunStatus.COMPLETED)
                    break
                if isinstance(event, InputRequestEvent):
                    self._request_input(envelope)
                    continue
                self.fail(NoHandler(event_type_id(event), envelope.source))
                break
            for index in targets:
                slot = self.slots[index]
                invocation = Invocation(slot, envelope)
                # It starts now, unless the run is paused or the step has a queue or no room.
                if (
                    slot.queue
                    or slot.returned
                    or self._paused
                    or (slot.limiter is not None and not slot.take_slot(invocation))
                ):
                    slot.enqueue(invocation)
                    self._queued += 1
                else:
                    self.in_flight.add(invocation)
                    ready.append(invocation)
        return ready

    def _start_queued(self, slot: StepSlot) -> list[Invocation]:
        """Take invocations off a step's queue while the step has room."""
        ready: list[Invocation] = []
        if self._paused or self.outcome is not None:
            return ready
        slot.merge_returned()
        while slot.queue:
            following = slot.queue[0]
            if not slot.take_slot(following):
                break
            slot.queue.popleft()
            self._queued -= 1
            self.in_flight.add(following)
            ready.append(following)
        return ready

    def _requeue(self, invocation: Invocation) -> None:
        """Put an unfinished invocation back with its step's queue, its effects undone.

        O(1): it goes to the step's `returned` list, merged back in commit order when the
        step next starts work, so cancelling N in-flight steps costs O(N log N) in all.
        """
        self.state.rollback(invocation.undo)
        invocation.sent.clear()
        invocation.refused = None
        invocation.closed = False
        invocation.scope = None
        self.in_flight.discard(invocation)
        slot = invocation.slot
        if slot.limiter is not None:
            slot.limiter.release_on_behalf_of(invocation)
        slot.put_back(invocation)
        self._queued += 1
        # A resume may have come while the cancelled step was unwinding: start it again.
        self.spawn(self._start_queued(slot))
        self._went_quiet()

    def _went_quiet(self) -> None:
        """Called whenever a step, a command or an inline answer ends.

        With no step running: answer pausers once inline answers have unwound too; wait for
        input (the clock stops, the status says so) while only requests are outstanding;
        otherwise fail the stalled run.
        """
        if self.outcome is not None:
            return
        if self._paused:
            if self._answering or self._running():
                return  # steps still running, or inline calls still unwinding
            self.clock.stop()  # quiescent: draining was active time, the pause is not
            if self._pause_replies:
                self._journal_status(RunStatus.PAUSED)
            for reply in self._pause_replies:
                reply.set(None)
            self._pause_replies = ()
            return
        if self.in_flight:
            return
        if self._queued or self._inbox_backlog or self._journaling:
            return  # work is waiting, or a command queued behind will check again
        if self.input_requests:
            self.clock.stop()
            if self._journal is not None and not self.held and not self.workflow.input_handler:
                self._finish(
                    RunSuspended(self.run_id, list(self.input_requests)),
                    RunStatus.WAITING_FOR_INPUT,
                )
                return
            if self.status is not RunStatus.WAITING_FOR_INPUT:
                self.status = RunStatus.WAITING_FOR_INPUT
                self._journal_status(self.status)
            return
        if self._answering:
            return  # a moot inline answer is unwinding; it checks again when it has
        self.fail(
            WorkflowStalled(
                f"run {self.run_id} of {self.workflow.name!r} went idle: no step is running, "
                "no event is pending, no input is awaited and no StopEvent was emitted"
            )
        )

    def _running(self) -> bool:
        """A step is running: in flight and not parked on paused, quiescent sub-workflows."""
        return any(
            not inv.children or not all(child.quiescent for child in inv.children.values())
            for inv in self.in_flight
        )

    @property
    def quiescent(self) -> bool:
        """Paused, with nothing running (its own sub-workflows included)."""
        return self._paused and not self._answering and not self._running()

    def _wake(self) -> None:
        """Work arrived for a run that was waiting for input."""
        if self.status is RunStatus.WAITING_FOR_INPUT:
            self.status = RunStatus.RUNNING
            self._journal_status(self.status)
            self.clock.start()

    # -- control -------------------------------------------------------------------------

    def pause(self, cancel_in_flight: bool, reply: Reply[None]) -> None:
        """Stop dispatching; answer `reply` once no step runs (`Pause` command)."""
        if not self._paused:
            self._paused = True
            self.status = RunStatus.PAUSED
            self._record(HistoryKind.PAUSED, detail="cancel" if cancel_in_flight else "drain")
        for scope in self._answering.values():
            scope.cancel(reason="the run was paused")
        for invocation in self.in_flight:
            for child in invocation.children.values():  # parked on its children, once paused
                self._pause_child(child, cancel_in_flight)
            if cancel_in_flight and invocation.scope is not None and not invocation.children:
                invocation.scope.cancel(reason="pause(cancel_in_flight=True)")
        self._pause_replies += (reply,)
        self._went_quiet()

    def resume(self) -> None:
        """Dispatch again what waited while paused (`Resume` command)."""
        if not self._paused:
            return
        self._paused = False
        self.status = RunStatus.RUNNING
        self.clock.start()
        self._record(HistoryKind.RESUMED)
        self._journal_status(self.status)
        for invocation in self.in_flight:
            for child in invocation.children.values():
                child.resume()
        for reply in self._pause_replies:
            reply.fail(RunFinished("the run was resumed before it was quiescent"))
        self._pause_replies = ()
        self.restart()

    def restart(self) -> None:
        """Start queued invocations and inline answers to outstanding input requests."""
        for slot in self.slots:
            self.spawn(self._start_queued(slot))
        for request_id, envelope in self.input_requests.items():
            if self.workflow.input_handler is not None and request_id not in self._answering:
                self._answer_inline(envelope)
        self._went_quiet()

    def capture(self) -> WorkflowSnapshot:
        """A consistent snapshot of the run now (`TakeSnapshot`); exact when paused.

        In-flight steps are recorded as pending work with their effects taken back.
        """
        logs = [invocation.undo for invocation in self.in_flight]
        refs = self.refs.serialize(
            self.workflow.session_pause_policy, excluding=self.state.inserted_refs(logs)
        )
        snapshot = snapshot_of(
            workflow_name=self.workflow.name,
            run_id=self.run_id,
            status=self.status,
            state=self.state.without(logs),
            pending=[
                Work(
                    inv.slot.spec.name,
                    inv.envelope.event,
                    inv.envelope.source,
                    inv.attempt,
                    inv.envelope.seq,
                    _child_memos(inv),
                )
                for inv in self.pending()
            ],
            input_requests=[envelope.event for envelope in self.input_requests.values()],
            usage=self.usage,
            cost_usd=self.cost_usd,
            history=self.history.entries if self.history is not None else (),
            refs=refs,
            active_time=self.clock.used,
            fingerprint=self.workflow.fingerprint,
            routed_seq=self._seq,
        )
        self.workflow.check_portable(snapshot)
        self.refs.release(RefLifetime.UNTIL_SNAPSHOT)
        return snapshot

    # -- sub-workflows -------------------------------------------------------------------

    async def run_child(
        self, workflow: object, input: Any, invocation: Invocation, index: int
    ) -> WorkflowResult:
        """`ctx.run_workflow`: a child run in the calling step's task and cancel scope.

        A child this invocation already finished (before a pause, a snapshot or a crash) is
        not run again; one that was going on resumes where it was.
        """
        if not _is_definition(workflow):
            raise TypeError(f"run_workflow takes a Workflow, got {type(workflow).__name__}")
        if self.depth >= MAX_SUB_WORKFLOW_DEPTH:
            raise RecursionError(
                f"sub-workflows nest at most {MAX_SUB_WORKFLOW_DEPTH} deep: "
                f"{workflow.name!r} would be level {self.depth + 2}"
            )
        family = invocation.own_family()
        memo = family.memo.get(index)
        if isinstance(memo, WorkflowResult):
            return memo
        if memo is not None and memo.result is not None:
            # Its usage was counted by the run that finished it: none is added again.
            return stored_result(memo.run_id, memo.result, workflow._known())
        child = await self._open_child(workflow, input, invocation, index, memo)
        self._record(HistoryKind.CHILD_STARTED, step=invocation.step_name, detail=child.run_id)
        family.children[index] = child
        try:
            await child.drive(self._begin_child)
        finally:
            del family.children[index]
        self._record(
            HistoryKind.CHILD_FINISHED,
            step=invocation.step_name,
            detail=f"{child.run_id}: {child.status}",
        )
        outcome = child.outcome
        if isinstance(outcome, WorkflowResult):
            family.memo[index] = outcome
            if self._journal is not None:  # a re-run of this step after a crash takes it
                memo = ChildMemo(
                    index=index, run_id=child.run_id, result=encode_event(outcome.event)
                )
                self._journal.add(
                    time.time(),
                    step=invocation.step_name,
                    child_of=invocation.delivery,
                    child=memo,
                    **self._since_last_record(),
                )
            return outcome
        assert isinstance(outcome, WorkflowError)
        raise outcome.fresh()

    async def _open_child(
        self,
        workflow: RunDefinition,
        input: Any,
        invocation: Invocation,
        index: int,
        memo: ChildMemo | None,
    ) -> Run:
        store = self._journal.store if self._journal is not None else None
        if memo is not None and memo.snapshot is not None:  # from a snapshot of this run
            resume = WorkflowSnapshot.from_bytes(memo.snapshot)
            child = await workflow._open(None, resume, None, False, self._on_commit, store)
        else:
            # Durable children get ids their re-run will find: a crashed parent's step
            # attaches to the child in the store instead of running it twice.
            run_id = (
                f"{self.run_id}/{invocation.step_name}/{invocation.delivery}"
                f".{invocation.attempt}/{index}"
                if store is not None
                else None
            )
            child = await workflow._open(
                input, None, run_id, False, self._on_commit, store, parent=self.run_id
            )
        child.parent = self
        child.depth = self.depth + 1
        child._refs = self.refs  # one registry for the whole tree of runs
        return child

    def _begin_child(self, child: Run) -> list[Invocation]:
        ready = child.opening_work()
        if self._paused:  # started by a step that was draining: it waits paused too
            self._pause_child(child, cancel_in_flight=False)
        return ready

    def _pause_child(self, child: Run, cancel_in_flight: bool) -> None:
        if child.outcome is not None:
            return
        reply: Reply[None] = Reply()
        child.pause(cancel_in_flight, reply)
        assert self._nursery is not None
        self._nursery.start_soon(self._child_quiet, reply)

    async def _child_quiet(self, reply: Reply[None]) -> None:
        """Once a child is quiescent (or ended), this run may be too."""
        with contextlib.suppress(WorkflowError):
            await reply.wait()
        self._went_quiet()

    # -- input ---------------------------------------------------------------------------

    def _request_input(self, envelope: Envelope) -> None:
        request = envelope.event
        assert isinstance(request, InputRequestEvent)
        self.input_requests[request.request_id] = envelope
        self._record(HistoryKind.INPUT_REQUESTED, step=envelope.source, detail=request.request_id)
        self.publish(request)
        self._check_answerable(request.request_id)
        if self.workflow.input_handler is not None and not self._paused:
            self._answer_inline(envelope)

    def _check_answerable(self, request_id: str) -> None:
        """Fail at once rather than wait for an answer that no one can give."""
        if not self.held and self.workflow.input_handler is None and self._journal is None:
            self.fail(InputUnanswerable(request_id))

    def _answer_inline(self, envelope: Envelope) -> None:
        assert self._nursery is not None
        request = envelope.event
        assert isinstance(request, InputRequestEvent)
        scope = trio.CancelScope()
        self._answering[request.request_id] = scope
        self._nursery.start_soon(self._ask_input_handler, request, scope)

    async def _ask_input_handler(self, request: InputRequestEvent, scope: trio.CancelScope) -> None:
        handler = self.workflow.input_handler
        assert handler is not None
        with scope:
            try:
                response = await handler(request)
            except Exception as exc:  # the handler's failure fails the run, chained
                await self._unwinding(INPUT_HANDLER, exc)
                self.fail(_failure("input_handler", exc))
                return
            except BaseExceptionGroup as group:  # Cancelled, beside what cleanup raised
                await self._unwinding(INPUT_HANDLER, group)
                raise
        if self._answering.get(request.request_id) is scope:
            del self._answering[request.request_id]
        envelope = self.input_requests.get(request.request_id)
        if envelope is None:  # answered by a human meanwhile: this answer is moot
            self._went_quiet()
        elif scope.cancelled_caught:  # paused: the request stays outstanding
            if not self._paused:
                self._answer_inline(envelope)  # resumed while this call was unwinding
            self._went_quiet()
        else:
            await self.respond_to_input(request.request_id, response, source=INPUT_HANDLER)

    async def respond_to_input(
        self, request_id: str, response: Any, source: str = HUMAN_INPUT
    ) -> None:
        """Route the answer to an outstanding request (`RespondToInput` command).

        A durable run journals the answer first; an answer it cannot store (`SnapshotError`)
        changes nothing.
        """
        if request_id not in self.input_requests:
            raise UnknownInputRequest(request_id)
        answer = InputResponseEvent(request_id=request_id, response=response)
        if self._journal is not None:
            encode_event(answer)  # SnapshotError now, before anything changed
        del self.input_requests[request_id]
        asking = self._answering.pop(request_id, None)
        if asking is not None:
            asking.cancel(reason="a human answered first")
        self._record(HistoryKind.INPUT_RECEIVED, detail=request_id)
        self._wake()
        envelopes = self._envelopes([answer], source)
        self._received(envelopes)
        if self._journal is not None and not await self._write(
            self._journal, answered=request_id, **self._routed_fields(envelopes, source)
        ):
            return
        self.spawn(self._route(envelopes))
        self._went_quiet()

    # -- stream, usage, lifecycle and history -------------------------------------------

    def publish(self, event: Event) -> None:
        self.broadcast.publish(event)
        if self.parent is not None:  # a sub-workflow's stream reaches its parent's, tagged
            self.parent.publish(
                SubWorkflowEvent(run_id=self.run_id, workflow=self.workflow.name, event=event)
            )

    def record_usage(self, usage: UsageEvent) -> None:
        """Add a model call's usage; a malformed one (a float token count...) is refused here,
        in the step that emits it, since it could not go into a snapshot."""
        problem = builtin_event_problem(usage)
        root = self
        while root.parent is not None:  # the largest totals are the root's
            root = root.parent
        totals = root.usage + usage
        if problem is None and max(attrs.astuple(totals)) > INT64_MAX:
            problem = "the run's token totals would exceed a signed 64-bit count"
        if problem is not None:
            raise ValueError(f"emit_usage: {problem}")
        self._add_usage(usage)
        self.publish(usage)

    def _add_usage(self, usage: UsageEvent) -> None:
        """Count usage here and in every run above (a sub-workflow's usage is its parent's)."""
        self.usage += usage
        self.cost_usd += usage.cost_usd
        if self._journal is not None:
            self._unjournaled_usage = _plus(self._unjournaled_usage, usage)
        if self.parent is not None:
            self.parent._add_usage(usage)

    def _record(self, kind: HistoryKind, **fields: Any) -> None:
        if self.history is not None:
            self.history.record(kind, **fields)

    def _step_started(self, invocation: Invocation) -> float:
        name = invocation.slot.spec.name
        event_type = event_type_id(invocation.envelope.event)
        attempt = invocation.attempt
        self._record(HistoryKind.STEP_DISPATCHED, step=name, event_type=event_type, attempt=attempt)
        if self._lifecycle:
            self.publish(StepStarted(step=name, event_type=event_type, attempt=attempt))
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

    @property
    def history_view(self) -> tuple[HistoryEntry, ...] | None:
        return tuple(self.history.entries) if self.history is not None else None

    # -- the end -------------------------------------------------------------------------

    def fail(self, error: WorkflowError) -> None:
        self._finish(error, RunStatus.FAILED)

    @property
    def durable(self) -> bool:
        return self._journal is not None

    def release(self) -> None:
        """Let go of a paused durable run here: it stays paused in its store."""
        self._finish(RunSuspended(self.run_id, list(self.input_requests)), self.status)

    def abort(self) -> None:
        self._finish(WorkflowAborted(f"run {self.run_id} was aborted"), RunStatus.ABORTED)

    def _finish(self, outcome: StopEvent | WorkflowError, status: RunStatus) -> None:
        """First outcome wins; cancelling the scope stops every task of the run."""
        if self.outcome is not None:
            return
        self._record_end(outcome, status)
        outliving: dict[str, Any] = {}
        if self._refs is not None and self.parent is None:  # sub-workflows share the root's
            self._refs.release(RefLifetime.UNTIL_RUN_END, RefLifetime.UNTIL_PARENT_FINISH)
            outliving = self._refs.live_objects()
        if isinstance(outcome, StopEvent):
            self.publish(outcome)  # the last event on the stream: closed right below
            self.outcome = WorkflowResult(
                outcome.result,
                outcome,
                self.run_id,
                self.usage,
                self.cost_usd,
                self.history_view,
                outliving,
            )
        else:
            self.outcome = outcome
        self.status = status
        self._announce_change()  # the run ended, even if its status did not change
        self._cancel_the_rest(f"the run ended ({status})")
        self.broadcast.close()
        if self._pause_replies:
            ended = RunFinished(f"run {self.run_id} ended ({status}) before it was quiescent")
            for reply in self._pause_replies:
                reply.fail(ended)
            self._pause_replies = ()

    def _cancel_the_rest(self, reason: str) -> None:
        """Cancel the run's tasks, if any besides the caller is left.

        A run whose last step just emitted the StopEvent ends without raising Cancelled
        anywhere, which keeps short runs cheap.
        """
        nursery = self._nursery
        if nursery is None:
            return
        current = trio.lowlevel.current_task()
        # The inbox task waits on its channel until cancelled.
        if (
            self._inbox_send is not None
            or any(t is not current for t in nursery.child_tasks)
            or (self._hosting and current is not nursery.parent_task)
        ):
            nursery.cancel_scope.cancel(reason=reason)

    def _record_end(self, outcome: StopEvent | WorkflowError, status: RunStatus) -> None:
        if self.history is None:
            return
        if isinstance(outcome, WorkflowTimeout):
            self._record(HistoryKind.TIMED_OUT, detail=str(outcome))
        elif status is RunStatus.COMPLETED:
            self._record(HistoryKind.COMPLETED)
        elif status is RunStatus.ABORTED:
            self._record(HistoryKind.ABORTED, detail=str(outcome))
        else:
            self._record(HistoryKind.FAILED, detail=str(outcome))

    def unwrap(self) -> WorkflowResult:
        """The result of a finished run, or its error (a fresh copy for each caller)."""
        outcome = self.outcome
        if isinstance(outcome, WorkflowError):
            raise outcome.fresh()
        assert outcome is not None, "the run has not finished"
        return outcome

    def check_running(self, what: str) -> None:
        if self.outcome is not None:
            raise RunFinished(f"{what}: run {self.run_id} already finished ({self.status})")

    def pending(self) -> list[Invocation]:
        """Every invocation not yet committed (queued or in flight), in commit order."""
        waiting = [inv for slot in self.slots for inv in slot.waiting()]
        return sorted([*waiting, *self.in_flight], key=_seq_of)
