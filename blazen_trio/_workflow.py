"""`Workflow`: a validated set of steps, and the entry points that run it."""

from __future__ import annotations

import contextlib
import copy
import datetime
import inspect
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal, final

import attrs
import msgspec
import trio

from ._broadcast import DEFAULT_REPLAY
from ._capture import RestoredRun, fingerprint_of, read_snapshot, stored_outcome
from ._checks import is_count, is_optional_duration
from ._codec import (
    WorkflowSnapshot,
    check_workflow_name,
    decode_event,
    encode_event,
    known_event_types,
    unportable_event_ids,
)
from ._errors import (
    CheckpointStoreError,
    RunHeld,
    RunSuspended,
    SnapshotError,
    ValidationError,
    WorkflowError,
)
from ._events import (
    STREAM_ONLY_EVENTS,
    Event,
    InputRequestEvent,
    InputResponseEvent,
    StartEvent,
    StopEvent,
    event_type_id,
)
from ._handler import WorkflowHandler
from ._history import DEFAULT_HISTORY_LIMIT
from ._queue import DEFAULT_LEASE, Lease, RunQueue, new_owner, submitted_start
from ._records import (
    PendingEvent,
    RunStatus,
    SessionPausePolicy,
    UsageTotals,
    WorkflowResult,
)
from ._retry import RetryPolicy
from ._run import CommitObserver, InputHandler, Run, new_run_id, only_exception
from ._steps import StepSpec
from ._stores import FINISHED, CheckpointStore

# Emitted for the caller or the stream, not for a step: no step needs to accept these.
_NEEDS_NO_ACCEPTOR: tuple[type[Event], ...] = (StopEvent, InputRequestEvent, *STREAM_ONLY_EVENTS)

# Accepting these is a definition error: the run handles them itself and never routes them.
_NEVER_ROUTED: tuple[tuple[type[Event], str], ...] = (
    (StopEvent, "ends the run and is never routed"),
    (
        InputRequestEvent,
        "goes to the caller or the input_handler and is never routed to a step",
    ),
)
_NEVER_ROUTED_TYPES: tuple[type[Event], ...] = tuple(cls for cls, _ in _NEVER_ROUTED)


@final
@attrs.frozen
class GraphEdge:
    """`accepts`: event type -> step; `emits`: step -> event type."""

    source: str
    target: str
    kind: Literal["accepts", "emits"]


@final
@attrs.frozen
class WorkflowGraph:
    """The step/event graph: step names, event type ids and the edges between them."""

    steps: tuple[str, ...]
    events: tuple[str, ...]
    edges: tuple[GraphEdge, ...]


def _read_steps(steps: Iterable[object]) -> tuple[list[StepSpec], list[str]]:
    """The steps, and a problem for each item that is not one.

    A plain function is refused rather than read: `@step` is where its options go, and a
    function that is not decorated is more often a mistake than a shorthand.
    """
    specs: list[StepSpec] = []
    problems: list[str] = []
    for item in steps:
        if isinstance(item, StepSpec):
            specs.append(item)
        else:
            name = getattr(item, "__name__", None)
            shown = repr(name) if isinstance(name, str) else repr(item)
            problems.append(f"{shown} is not a @step: decorate it with @bz.step")
    return specs, problems


def _check_options(
    name: object, timeout: object, retry: object, history_limit: object, stream_replay: object
) -> list[str]:
    problems = []
    if not is_count(history_limit, 1):
        problems.append(f"history_limit must be an int >= 1, got {history_limit!r}")
    if not is_count(stream_replay, 0):
        problems.append(f"stream_replay must be an int >= 0, got {stream_replay!r}")
    if not isinstance(name, str) or not name:
        problems.append(f"workflow name must be a non-empty str, got {name!r}")
    if not is_optional_duration(timeout):
        problems.append(f"timeout must be a number > 0 or None, got {timeout!r}")
    if retry is not None and not isinstance(retry, RetryPolicy):
        problems.append(f"retry must be a RetryPolicy or None, got {retry!r}")
    return problems


def _check_handlers(input_handler: object, policy: object, store: object) -> list[str]:
    problems = []
    if store is not None and not isinstance(store, CheckpointStore):
        problems.append(f"checkpoint_store must be a CheckpointStore or None, got {store!r}")
    if input_handler is not None and not inspect.iscoroutinefunction(input_handler):
        problems.append(f"input_handler must be an async function, got {input_handler!r}")
    if policy not in set(SessionPausePolicy):
        problems.append(f"session_pause_policy must be a SessionPausePolicy, got {policy!r}")
    return problems


def _related(a: type[Event], b: type[Event]) -> bool:
    """An event declared as one type may be routed as the other (subclasses go to bases)."""
    return issubclass(a, b) or issubclass(b, a)


def _entries(specs: list[StepSpec]) -> list[int]:
    """Indices of the steps that accept a start type.

    Start types: StartEvent and its subclasses, and each routed type a step accepts that no
    step declares it emits. A step of unknown emits does not make every type "emitted";
    `InputResponseEvent` comes from the run (after a request), never at the start.
    """
    declared = [t for s in specs for t in s.emits]
    return [
        index
        for index, s in enumerate(specs)
        if any(
            issubclass(t, StartEvent)
            or not (
                issubclass(t, (StopEvent, InputResponseEvent))
                or any(_related(e, t) for e in declared)
            )
            for t in s.accepts
        )
    ]


def _successors(specs: list[StepSpec]) -> list[list[int]]:
    """For each step, the steps its declared events can reach (every step if unknown)."""
    accepting = [(index, t) for index, s in enumerate(specs) for t in s.accepts]
    found: list[list[int]] = []
    for s in specs:
        if not s.emits_known:
            found.append(list(range(len(specs))))
            continue
        emitted = list(s.emits)
        if any(issubclass(e, InputRequestEvent) for e in emitted):
            emitted.append(InputResponseEvent)  # the answer comes back to the workflow
        found.append(
            sorted({index for index, t in accepting if any(_related(e, t) for e in emitted)})
        )
    return found


def _reach(starts: Iterable[int], successors: list[list[int]]) -> set[int]:
    """`starts` and every step reachable from them."""
    seen = set(starts)
    todo = list(seen)
    while todo:
        for following in successors[todo.pop()]:
            if following not in seen:
                seen.add(following)
                todo.append(following)
    return seen


def _may_stop(spec: StepSpec) -> bool:
    return not spec.emits_known or any(issubclass(t, StopEvent) for t in spec.emits)


def _islands(specs: list[StepSpec], entries: list[int], successors: list[list[int]]) -> list[str]:
    """Steps no start type reaches (a step accepting a never-routed type is reported as that)."""
    never = tuple(t for t, _ in _NEVER_ROUTED)
    return [
        f"no start event can reach step {specs[index].name!r}"
        for index in sorted(set(range(len(specs))) - _reach(entries, successors))
        if not any(issubclass(t, never) for t in specs[index].accepts)
    ]


def _dead_cycles(specs: list[StepSpec], successors: list[list[int]]) -> list[str]:
    """Cycles of steps from which no step that may emit StopEvent can be reached."""
    predecessors: list[list[int]] = [[] for _ in specs]
    for index, following in enumerate(successors):
        for target in following:
            predecessors[target].append(index)
    stoppers = [index for index, spec in enumerate(specs) if _may_stop(spec)]
    stuck = set(range(len(specs))) - _reach(stoppers, predecessors)
    # What a stuck step reaches is stuck too; it is on a cycle if it reaches itself.
    onward = {index: _reach(successors[index], successors) for index in stuck}
    problems: list[str] = []
    reported: set[int] = set()
    for index in sorted(stuck):
        if index in onward[index] and index not in reported:
            cycle = sorted(other for other in onward[index] if index in onward[other])
            reported.update(cycle)
            names = ", ".join(repr(specs[member].name) for member in cycle)
            problems.append(f"no StopEvent can be reached from the cycle of steps {names}")
    return problems


def _graph_problems(specs: list[StepSpec]) -> list[str]:
    """Every structural problem of a set of valid steps."""
    problems = [
        f"duplicate step name {name!r}"
        for name, count in Counter(s.name for s in specs).items()
        if count > 1
    ]
    accepted = [t for s in specs for t in s.accepts]
    entries = _entries(specs)
    if not entries:
        problems.append(
            "no step accepts a start event (StartEvent, a subclass of it, or a type that no "
            "step emits)"
        )
    may_stop = any(_may_stop(s) for s in specs)
    if not may_stop:
        problems.append("no step can emit StopEvent, so no run can finish")
    if any(issubclass(t, InputRequestEvent) for s in specs for t in s.emits) and not any(
        issubclass(InputResponseEvent, t) for t in accepted
    ):
        problems.append("a step emits InputRequestEvent but no step accepts InputResponseEvent")
    problems.extend(
        f"step {s.name!r} accepts {never.__qualname__}, which {why}"
        for s in specs
        for never, why in _NEVER_ROUTED
        if any(issubclass(t, never) for t in s.accepts)
    )
    for s in specs:
        for emitted in s.emits:
            if issubclass(emitted, _NEEDS_NO_ACCEPTOR):
                continue
            if not any(issubclass(emitted, t) for t in accepted):
                problems.append(
                    f"step {s.name!r} emits {emitted.__qualname__}, which no step accepts"
                )
    # Where no start type or no StopEvent exists, these would only repeat it step by step.
    successors = _successors(specs)
    if entries:
        problems.extend(_islands(specs, entries, successors))
    if may_stop:
        problems.extend(_dead_cycles(specs, successors))
    return problems


def _with_subclasses(types: Iterable[type[Event]]) -> set[type[Event]]:
    """`types` and every subclass defined so far: a step declaring `A` may emit a `B(A)`."""
    found: set[type[Event]] = set()
    waiting = list(types)
    while waiting:
        cls = waiting.pop()
        if cls not in found:
            found.add(cls)
            waiting.extend(cls.__subclasses__())
    return found


# A durable run left in one of these states is kept in its store, not aborted.
_KEPT_WHEN_LEFT = frozenset({RunStatus.PAUSED, RunStatus.WAITING_FOR_INPUT})
# Recovery goes on with the runs in these states.
_RECOVERABLE = (RunStatus.RUNNING, RunStatus.WAITING_FOR_INPUT)


def _leave_held(run: Run, escaping: BaseException | None, nursery: trio.Nursery) -> None:
    """Leaving `start`'s block: a durable run paused or waiting for input is kept in its store,
    to resume or answer later; any other run still going is aborted."""
    if run.durable and run.status in _KEPT_WHEN_LEFT:
        run.release()
    else:
        run.abort()


def _leave_claimed(run: Run, escaping: BaseException | None, nursery: trio.Nursery) -> None:
    """A worker letting go: a paused run is kept paused; one still going is abandoned (it
    writes nothing more and stays as its store has it, for the next claim)."""
    if run.outcome is None and run.status is RunStatus.PAUSED and escaping is None:
        run.release()
    elif run.outcome is None:
        nursery.cancel_scope.cancel(reason="the worker let go of the run")


@asynccontextmanager
async def _driven(
    run: Run, leave: Callable[[Run, BaseException | None, trio.Nursery], None]
) -> AsyncIterator[WorkflowHandler]:
    """A run going on in a nursery of the block, its handler yielded; `leave` decides what
    leaving the block does to a run still going. Exceptions leave unwrapped, not in groups."""
    escaping: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(run.main)
            try:
                run.begin_as_opened()
                yield WorkflowHandler._create(run)
            except BaseException as exc:  # re-raised below, outside the nursery, unwrapped
                escaping = exc
            leave(run, escaping, nursery)
    except BaseExceptionGroup as group:  # KeyboardInterrupt in a step, say: not a group
        raise only_exception(group) from None
    if escaping is not None:
        raise escaping


@attrs.define(eq=False)
class _Recovery:
    """The runs one recovery goes on with, and the store each is written through.

    Over a store that hands runs out to workers (`queue`), each run is taken under a lease of
    the recovery's own, written through a store fenced by it, renewed while the recovery goes
    on (`keep_leases`) and let go of at the end: a run held under another live lease is left
    alone (`RunHeld`), and workers leave alone the runs taken. Over any other store, every
    run is taken as it is.
    """

    store: CheckpointStore
    queue: RunQueue | None
    owner: str = attrs.Factory(lambda: new_owner("recovery"))
    leases: dict[str, Lease] = attrs.Factory(dict)

    async def take(
        self, snapshot: WorkflowSnapshot
    ) -> tuple[WorkflowSnapshot, CheckpointStore] | RunHeld | None:
        """The run to go on with (its latest snapshot and store), `RunHeld`, or None if a
        worker moved it on, out of recovery's reach, before it was taken."""
        if self.queue is None:
            return snapshot, self.store
        lease = await self.queue.take(snapshot.run_id, self.owner, DEFAULT_LEASE)
        if lease is None:
            return RunHeld(snapshot.run_id)
        self.leases[lease.run_id] = lease
        latest = await self.store.load(snapshot.run_id)
        if latest is None or latest.status not in _RECOVERABLE:
            await self.let_go(snapshot.run_id)
            return None
        return latest, self.queue.fenced(lease)

    async def keep_leases(self, queue: RunQueue) -> None:
        """Renew the leases taken, every third of a lease. A lease lost all the same (this
        process stalled) needs nothing here: the fence refuses the run's next write."""
        while True:
            await trio.sleep(DEFAULT_LEASE / 3)
            if self.leases:
                with contextlib.suppress(CheckpointStoreError):  # tried again at the next beat
                    await queue.renew(list(self.leases.values()), DEFAULT_LEASE)

    async def let_go(self, run_id: str) -> None:
        """Release the run's lease (shielded: bounded by the store's retries)."""
        lease = self.leases.pop(run_id, None)
        if self.queue is not None and lease is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(CheckpointStoreError):
                await self.queue.release(lease)


@asynccontextmanager
async def _recovering(store: CheckpointStore) -> AsyncIterator[_Recovery]:
    """A `_Recovery` over `store` for the block: its leases renewed meanwhile and let go of
    at the end (no task at all over a store without leases). Exceptions leave unwrapped."""
    queue = store if isinstance(store, RunQueue) else None
    recovery = _Recovery(store, queue)
    if queue is None:
        yield recovery
        return
    escaping: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recovery.keep_leases, queue)
        try:
            yield recovery
        except BaseException as exc:  # re-raised below, outside the nursery, unwrapped
            escaping = exc
        for run_id in list(recovery.leases):
            await recovery.let_go(run_id)
        nursery.cancel_scope.cancel(reason="the recovery ended")
    if escaping is not None:
        raise escaping


def _start_event(input: Any) -> Event:
    return input if isinstance(input, Event) else StartEvent(data=input)


PARENT_RUN_METADATA_KEY = "__blazen_parent_run"
"""Base snapshot metadata of a durable sub-workflow: its parent's run id (recovery goes on with
the parent, which finds its children)."""


def _start_snapshot(
    workflow: Workflow, run_id: str, start: Event, targets: list[str], parent: str | None
) -> WorkflowSnapshot:
    """A new durable run's base in its store: its start event pending for its steps."""
    event = encode_event(start)
    return WorkflowSnapshot(
        workflow_name=workflow.name,
        run_id=run_id,
        created_at=datetime.datetime.now(datetime.UTC),
        status=RunStatus.RUNNING,
        state={},
        pending_events=[PendingEvent(event=event, target_step=step, seq=1) for step in targets],
        collect_buffers={},
        input_requests=[],
        usage=UsageTotals(),
        history=[],
        metadata={PARENT_RUN_METADATA_KEY: parent} if parent else {},
        session_refs={},
        fingerprint=workflow.fingerprint,
        routed_seq=1,
    )


async def _adopt(store: CheckpointStore, snapshot: WorkflowSnapshot) -> None:
    """Make `snapshot` the store's run to go on with; refused if the store is further along."""
    stored = await store.load(snapshot.run_id)
    if stored is None:
        await store.save(snapshot)
    elif stored.journal_seq != snapshot.journal_seq:
        raise SnapshotError(
            f"run {snapshot.run_id!r} is at journal record {stored.journal_seq} in the store and "
            f"this snapshot at {snapshot.journal_seq}: resume `await store.load(run_id)`, or "
            "pass fork=True to go on from this one under a new run id"
        )


def _mermaid_id(prefix: str, index: int) -> str:
    return f"{prefix}{index}"


def _mermaid_label(text: str) -> str:
    return re.sub(r'["<>]', "_", text)


@final
class Workflow:
    """A named set of steps, validated once and run any number of times, concurrently."""

    def __init__(
        self,
        name: str,
        steps: Iterable[StepSpec | Any],
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        input_handler: InputHandler | None = None,
        session_pause_policy: SessionPausePolicy = SessionPausePolicy.PICKLE_OR_ERROR,
        checkpoint_store: CheckpointStore | None = None,
        history: bool = False,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        publish_lifecycle: bool = False,
        stream_replay: int = DEFAULT_REPLAY,
        validate: bool = True,
    ) -> None:
        specs, problems = _read_steps(steps)
        problems = [
            *_check_options(name, timeout, retry, history_limit, stream_replay),
            *_check_handlers(input_handler, session_pause_policy, checkpoint_store),
            *problems,
        ]
        if not specs and not problems:
            problems.append("a workflow needs at least one step")
        if validate and not problems:
            problems.extend(_graph_problems(specs))
        if problems:
            raise ValidationError(f"workflow {name!r}: {problem}" for problem in problems)
        self.name: str = name
        self.steps: tuple[StepSpec, ...] = tuple(specs)
        self.timeout = timeout
        self.retry = retry
        self.input_handler = input_handler
        self.session_pause_policy = SessionPausePolicy(session_pause_policy)
        self.history = history
        self.history_limit = history_limit
        self.publish_lifecycle = publish_lifecycle
        self.stream_replay = stream_replay
        self.checkpoint_store = checkpoint_store
        self.fingerprint = fingerprint_of(
            (
                spec.name,
                map(event_type_id, spec.accepts),
                map(event_type_id, spec.emits),
            )
            for spec in self.steps
        )
        self._targets: dict[type[Event], tuple[int, ...]] = {}
        self._declared = [t for spec in self.steps for t in (*spec.accepts, *spec.emits)]
        self._unportable = unportable_event_ids(self._declared)

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r} with {len(self.steps)} steps>"

    def with_checkpoint_store(self, store: CheckpointStore | None) -> Workflow:
        """This workflow, with its runs durable in `store` (None: not durable); a copy.

        For a definition shared between programs: the command line's `--store`, a test.
        """
        if store is not None and not isinstance(store, CheckpointStore):
            raise TypeError(f"expected a CheckpointStore or None, got {store!r}")
        durable = copy.copy(self)
        durable.checkpoint_store = store
        return durable

    @property
    def routes(self) -> Mapping[type[Event], tuple[int, ...]]:
        """The step indices of each event class routed so far (`targets` adds the others)."""
        return self._targets

    def targets(self, event_type: type[Event]) -> tuple[int, ...]:
        """Indices of the steps an event of this type is routed to (cached per class); none
        for a StopEvent or an input request, whatever base classes they share with an
        accepted type: the run handles those itself."""
        found = self._targets.get(event_type)
        if found is None:
            never_routed = issubclass(event_type, _NEVER_ROUTED_TYPES)
            found = () if never_routed else self._accepting(event_type)
            self._targets[event_type] = found
        return found

    def _accepting(self, event_type: type[Event]) -> tuple[int, ...]:
        return tuple(
            index
            for index, spec in enumerate(self.steps)
            if any(issubclass(event_type, accepted) for accepted in spec.accepts)
        )

    def check_portable(self, snapshot: WorkflowSnapshot) -> None:
        """Refuse a snapshot with a script's event that another process could not re-type."""
        if not self._unportable:
            return
        buffered = [event for buffer in snapshot.collect_buffers.values() for event in buffer]
        pending = [item.event for item in snapshot.pending_events]
        for encoded in (*pending, *buffered, *snapshot.input_requests):
            others = self._unportable.get(encoded.type_id)
            if others is not None:
                raise SnapshotError(
                    f"cannot snapshot event type {encoded.type_id!r}: it is defined in "
                    "__main__ (the script being run) and shares its name with "
                    f"{', '.join(others)}, so a process that imports the script as a module "
                    "could not tell them apart; give the class a stable id "
                    '(`type_id="..."` in its class statement) or define it in an importable '
                    "module"
                )

    # -- running -------------------------------------------------------------------------

    async def run(
        self,
        input: Any = None,
        *,
        resume: WorkflowSnapshot | None = None,
        run_id: str | None = None,
        fork: bool = False,
        on_commit: CommitObserver | None = None,
    ) -> WorkflowResult:
        """Run to completion; raise the run's `WorkflowError` if it fails.

        `input` is the start event if it is an Event, else wrapped as `StartEvent(data=input)`.
        `resume=snapshot` goes on with a snapshotted run instead (same workflow name);
        `fork=True` goes on under a new run id (`run_id`, or a fresh one), leaving the
        original alone. `on_commit(commit)` is called with each `StepCommit`, in the Trio
        thread, right after the step's commit and before its outputs are routed; if it
        raises, the run fails with `RunCrashed`.

        With `Workflow(checkpoint_store=store)` the run is durable: each commit is in the store
        before its outputs are routed. `run_id` names it; if the store already has a run of
        that id, this attaches to it instead of starting another: a completed run's result is
        returned, a failed or aborted one raises `RunFinished`, an unfinished one goes on here.
        A durable run left waiting only for input raises `RunSuspended`: answer it with
        `store.respond(...)` and continue it with `recover`.
        """
        run = await self._open(input, resume, run_id, fork, on_commit, self.checkpoint_store)
        await run.drive(Run.opening_work)
        return run.unwrap()

    @asynccontextmanager
    async def start(
        self,
        input: Any = None,
        *,
        resume: WorkflowSnapshot | None = None,
        run_id: str | None = None,
        fork: bool = False,
        on_commit: CommitObserver | None = None,
    ) -> AsyncIterator[WorkflowHandler]:
        """Start (or resume) a run in a nursery owned by the block; as `run` otherwise.

        Leaving the block while the run is still going aborts it; nothing outlives the block.
        A durable run waiting for input stays here, where the handler can answer it.
        """
        run = await self._open(input, resume, run_id, fork, on_commit, self.checkpoint_store)
        async with self._hold(run) as handler:
            yield handler

    def _hold(self, run: Run) -> contextlib.AbstractAsyncContextManager[WorkflowHandler]:
        """`start`'s block: a human holds the run, so it waits for its answers here."""
        run.held = True
        return _driven(run, _leave_held)

    async def recover(
        self, store: CheckpointStore | None = None
    ) -> dict[str, WorkflowResult | WorkflowError]:
        """Go on with every unfinished run of this workflow in `store`, concurrently.

        `store` defaults to the workflow's `checkpoint_store`. Returns once each run has
        finished or is suspended again, mapping run ids to a `WorkflowResult` or the run's
        `WorkflowError` (`RunSuspended` for a run still waiting for input). Only the steps
        that were in flight when the runs stopped run again. Paused runs are left alone:
        resume one with `run(resume=await store.load(run_id))`.

        Over a store that hands runs out to workers (PostgreSQL), each run is taken under a
        lease of its own for as long as it goes on here, so workers leave it alone; a run a
        worker holds under a live lease is left to it (its outcome is `RunHeld`).
        """
        durable = self._store_for_recovery(store)
        outcomes: dict[str, WorkflowResult | WorkflowError] = {}

        async def go_on(
            snapshot: WorkflowSnapshot, run_store: CheckpointStore, recovery: _Recovery
        ) -> None:
            try:
                if snapshot.status is RunStatus.WAITING_FOR_INPUT and not snapshot.input_responses:
                    requests = [
                        str(item.payload.get("request_id")) for item in snapshot.input_requests
                    ]
                    outcomes[snapshot.run_id] = RunSuspended(snapshot.run_id, requests)
                    return
                run = await self._open_stored(run_store, snapshot.run_id)
                if run is None:  # it finished meanwhile (a worker went on with it)
                    return
                await run.drive(Run.opening_work)
                outcomes[snapshot.run_id] = run.unwrap()
            except WorkflowError as error:
                outcomes[snapshot.run_id] = error
            finally:
                await recovery.let_go(snapshot.run_id)

        async with _recovering(durable) as recovery, trio.open_nursery() as nursery:
            for snapshot in await self._recoverable(durable):
                taken = await recovery.take(snapshot)
                if isinstance(taken, RunHeld):
                    outcomes[snapshot.run_id] = taken
                elif taken is not None:
                    nursery.start_soon(go_on, *taken, recovery)
        return outcomes

    @asynccontextmanager
    async def open_recovery(
        self, store: CheckpointStore | None = None
    ) -> AsyncIterator[dict[str, WorkflowHandler]]:
        """`recover`, with a handler per run going on (run id -> handler) for the block.

        Leaving the block aborts the runs still going, as leaving `start` does. Over a store
        that hands runs out, the runs held under leases are left out (see `recover`).
        """
        durable = self._store_for_recovery(store)
        async with _recovering(durable) as recovery, contextlib.AsyncExitStack() as stack:
            handlers = {}
            for snapshot in await self._recoverable(durable):
                taken = await recovery.take(snapshot)
                if not isinstance(taken, tuple):
                    continue  # a worker holds it, or went on with it out of recovery's reach
                run = await self._open_stored(taken[1], snapshot.run_id)
                if run is not None:
                    handlers[run.run_id] = await stack.enter_async_context(self._hold(run))
            yield handlers

    @asynccontextmanager
    async def _claimed(
        self, store: CheckpointStore, run_id: str
    ) -> AsyncIterator[WorkflowHandler | None]:
        """A run a worker claimed, going on in a nursery of the block (None: nothing to do).

        Not held, so a run left waiting only for input suspends and frees the worker. Leaving
        the block lets go of a paused run (kept paused); a run still going when the block is
        left, or cancelled from outside (the worker lost its lease), is abandoned: it writes
        nothing more and stays as its store has it, for the next claim.
        """
        run = await self._open_stored(store, run_id)
        if run is None:
            yield None
            return
        async with _driven(run, _leave_claimed) as handler:
            yield handler

    async def _open_stored(self, store: CheckpointStore, run_id: str) -> Run | None:
        """A stored run to go on with (claimed by a worker, or recovered): a submitted one
        starts from the start event in its base's metadata; one already started goes on from
        its last record. None if it is finished."""
        snapshot = await store.load(run_id)
        if snapshot is None or snapshot.status in FINISHED:
            return None
        check_workflow_name(snapshot, self.name)
        # Not started yet (records so far are only a client's pause and resume)?
        fresh = snapshot.routed_seq == 0 and not snapshot.pending_events
        start = submitted_start(snapshot) if fresh else None
        if start is not None:
            event = decode_event(start, self._known())
            return Run(
                self, store=store, run_id=run_id, start=event, journal_seq=snapshot.journal_seq
            )
        return Run(self, restored=self._read(snapshot), store=store)

    def _store_for_recovery(self, store: CheckpointStore | None) -> CheckpointStore:
        durable = store if store is not None else self.checkpoint_store
        if not isinstance(durable, CheckpointStore):
            raise TypeError(
                f"recover needs a CheckpointStore (or Workflow(checkpoint_store=...)), "
                f"got {durable!r}"
            )
        return durable

    async def _recoverable(self, store: CheckpointStore) -> list[WorkflowSnapshot]:
        snapshots = []
        for info in await store.list(workflow=self.name, status=_RECOVERABLE):
            snapshot = await store.load(info.run_id)
            if snapshot is not None and PARENT_RUN_METADATA_KEY not in snapshot.metadata:
                snapshots.append(snapshot)
        return snapshots

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
    ) -> Run:
        """The run a `run` / `start` call asks for: new, resumed, forked or attached.

        `parent`: the run id of the run whose step starts this one as a sub-workflow.
        """
        if on_commit is not None and not callable(on_commit):
            raise TypeError(f"on_commit must be callable, got {on_commit!r}")
        if run_id is not None and (not isinstance(run_id, str) or not run_id):
            raise TypeError(f"run_id must be a non-empty str, got {run_id!r}")
        if resume is not None:
            return await self._resumed(input, resume, run_id, fork, on_commit, store)
        if fork:
            raise TypeError("fork=True forks a snapshot: pass resume= too")
        if store is not None and run_id is not None:
            existing = await store.load(run_id)
            if existing is not None:
                return self._attached(existing, on_commit, store)
        start = _start_event(input)
        targets = [self.steps[index].name for index in self.targets(type(start))]
        if store is None or not targets:  # not durable, or failing at once with NoHandler
            return Run(self, on_commit=on_commit, store=store, run_id=run_id, start=start)
        # The run is born in its store with its start event pending: a crash right after
        # leaves a run that recovery can go on with, never an empty one.
        base = _start_snapshot(self, run_id or new_run_id(), start, targets, parent)
        await store.save(base)
        return Run(self, restored=self._read(base), on_commit=on_commit, store=store, start=start)

    async def _resumed(
        self,
        input: Any,
        resume: WorkflowSnapshot,
        run_id: str | None,
        fork: bool,
        on_commit: CommitObserver | None,
        store: CheckpointStore | None,
    ) -> Run:
        if input is not None:
            raise TypeError("pass either input or resume=, not both")
        if not isinstance(resume, WorkflowSnapshot):
            raise SnapshotError(f"resume= takes a WorkflowSnapshot, got {type(resume).__name__}")
        check_workflow_name(resume, self.name)
        if fork:
            resume = msgspec.structs.replace(resume, run_id=run_id or new_run_id(), journal_seq=0)
        elif run_id is not None and run_id != resume.run_id:
            raise TypeError("run_id= names a new run: pass fork=True to go on under another id")
        if store is not None:
            await _adopt(store, resume)
        return Run(self, restored=self._read(resume), on_commit=on_commit, store=store)

    def _attached(
        self, stored: WorkflowSnapshot, on_commit: CommitObserver | None, store: CheckpointStore
    ) -> Run:
        if stored.workflow_name != self.name:
            raise CheckpointStoreError(
                f"run id {stored.run_id!r} is taken by a run of workflow {stored.workflow_name!r}"
            )
        if stored.status not in FINISHED:
            return Run(self, restored=self._read(stored), on_commit=on_commit, store=store)
        run = Run(self, run_id=stored.run_id)
        run.stored_outcome = stored_outcome(stored, self._known(), history=self.history)
        return run

    def _read(self, snapshot: WorkflowSnapshot) -> RestoredRun:
        accepts = {spec.name: spec.accepts for spec in self.steps}
        return read_snapshot(snapshot, accepts, self._known(), self.fingerprint)

    def _known(self) -> dict[str, type[Event]]:
        return known_event_types(_with_subclasses(self._declared))

    # -- the graph -----------------------------------------------------------------------

    def graph(self) -> WorkflowGraph:
        """The step/event graph as declared by the steps' accepts and emits."""
        events: dict[str, None] = {}
        edges: list[GraphEdge] = []
        for spec in self.steps:
            for accepted in spec.accepts:
                events[event_type_id(accepted)] = None
                edges.append(GraphEdge(event_type_id(accepted), spec.name, "accepts"))
            for emitted in spec.emits:
                events[event_type_id(emitted)] = None
                edges.append(GraphEdge(spec.name, event_type_id(emitted), "emits"))
        return WorkflowGraph(tuple(s.name for s in self.steps), tuple(events), tuple(edges))

    def to_mermaid(self) -> str:
        """A Mermaid flowchart: steps as boxes, events as rounded nodes, edges as arrows."""
        graph = self.graph()
        step_ids = {name: _mermaid_id("s", i) for i, name in enumerate(graph.steps)}
        event_ids = {type_id: _mermaid_id("e", i) for i, type_id in enumerate(graph.events)}
        lines = ["flowchart TD"]
        lines += [f'    {event_ids[t]}(["{_mermaid_label(t)}"])' for t in graph.events]
        lines += [f'    {step_ids[s]}["{_mermaid_label(s)}"]' for s in graph.steps]
        for edge in graph.edges:
            if edge.kind == "accepts":
                lines.append(f"    {event_ids[edge.source]} --> {step_ids[edge.target]}")
            else:
                lines.append(f"    {step_ids[edge.source]} --> {event_ids[edge.target]}")
        return "\n".join(lines) + "\n"
