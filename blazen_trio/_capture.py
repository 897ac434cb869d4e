"""A run's data to a `WorkflowSnapshot` and back, knowing nothing of the run loop.

The run loop hands over its parts (state with in-flight effects taken back, pending work,
requests, totals) and gets a snapshot; a snapshot read here becomes a `RestoredRun` that a new
run is built from. Only steps that were in flight at the snapshot run again on resume.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import attrs

from ._codec import (
    WorkflowSnapshot,
    decode_event,
    decode_value,
    encode_event,
    encode_value,
)
from ._errors import RunFinished, SnapshotError
from ._events import DynamicEvent, Event, InputRequestEvent, InputResponseEvent, StopEvent
from ._records import (
    BufferOp,
    ChildMemo,
    EncodedEvent,
    HistoryEntry,
    PendingEvent,
    RunStatus,
    SerializedRef,
    SessionPausePolicy,
    StepShape,
    Usage,
    UsageTotals,
    WorkflowResult,
)
from ._refs import DROPPED_REFS_METADATA_KEY, SessionRefRegistry
from ._state import Changes, RunState


@attrs.frozen
class Work:
    """One event owed to one step: `attempt` is the attempt it has reached."""

    step: str
    event: Event
    source: str | None
    attempt: int
    seq: int = 0
    children: tuple[ChildMemo, ...] = ()


@attrs.frozen
class Routed:
    """What a commit routes, for its journal record: deliveries, new requests, the stop."""

    routed: list[PendingEvent]
    requests: list[EncodedEvent]
    result: EncodedEvent | None


def routed_fields(
    envelopes: Iterable[tuple[Event, int]],
    source: str | None,
    targets: Callable[[type[Event]], Iterable[str]],
) -> Routed:
    """The journal's view of routing `(event, seq)` pairs emitted by `source`."""
    routed: list[PendingEvent] = []
    requests: list[EncodedEvent] = []
    result = None
    for event, seq in envelopes:
        encoded = encode_event(event)
        if isinstance(event, StopEvent):
            result = encoded
        elif isinstance(event, InputRequestEvent):
            requests.append(encoded)
        else:
            routed.extend(
                PendingEvent(event=encoded, source_step=source, target_step=step, seq=seq)
                for step in targets(type(event))
            )
    return Routed(routed, requests, result)


def change_fields(
    changes: Changes, refs: SessionRefRegistry, policy: SessionPausePolicy
) -> dict[str, Any]:
    """The journal record fields of an attempt's state, buffer and ref changes."""
    inserted = {}
    if changes.refs_inserted:
        inserted = refs.serialize(policy, only=changes.refs_inserted)[0]
    return {
        "state_set": {key: encode_value(value, key=key) for key, value in changes.written.items()},
        "state_deleted": changes.deleted,
        "buffers": [
            BufferOp(step=step, event=encode_event(event), taken=taken)
            for step, event, taken in changes.buffer_ops
        ],
        "refs_inserted": inserted,
        "refs_dropped": changes.refs_dropped,
    }


@attrs.frozen
class RestoredRun:
    """What a run is rebuilt from: a snapshot's values, decoded and checked."""

    run_id: str
    state: dict[str, Any]
    buffers: dict[str, list[Event]]
    input_requests: list[InputRequestEvent]
    pending: list[Work]
    usage: Usage
    cost_usd: float
    history: list[HistoryEntry]
    refs: SessionRefRegistry
    active_time: float
    journal_seq: int
    routed_seq: int
    responses: list[InputResponseEvent]
    """Answers recorded by `store.respond`, to route when the run goes on."""


def snapshot_of(
    *,
    workflow_name: str,
    run_id: str,
    status: RunStatus,
    state: RunState,
    pending: Iterable[Work],
    input_requests: Iterable[Event],
    usage: Usage,
    cost_usd: float,
    history: Iterable[HistoryEntry],
    refs: tuple[dict[str, SerializedRef], dict[str, Any]],
    active_time: float,
    fingerprint: dict[str, StepShape],
    routed_seq: int,
) -> WorkflowSnapshot:
    """Encode a run's parts; `state` must already have in-flight effects taken back."""
    session_refs, metadata = refs
    return WorkflowSnapshot(
        workflow_name=workflow_name,
        run_id=run_id,
        created_at=datetime.datetime.now(datetime.UTC),
        status=status,
        state={key: encode_value(value, key=key) for key, value in state.values.items()},
        pending_events=[
            PendingEvent(
                event=encode_event(work.event),
                source_step=work.source,
                target_step=work.step,
                attempt=work.attempt,
                seq=work.seq,
                children=work.children,
            )
            for work in pending
        ],
        collect_buffers={
            step: [encode_event(ev) for ev in buffer]
            for step, buffer in state.buffers.items()
            if buffer
        },
        input_requests=[encode_event(event) for event in input_requests],
        usage=UsageTotals(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            cost_usd=cost_usd,
        ),
        history=list(history),
        metadata=metadata,
        session_refs=session_refs,
        active_time=active_time,
        fingerprint=fingerprint,
        routed_seq=routed_seq,
    )


def fingerprint_of(
    steps: Iterable[tuple[str, Iterable[str], Iterable[str]]],
) -> dict[str, StepShape]:
    """A workflow's fingerprint from (step name, accepted type ids, emitted type ids)."""
    return {
        name: StepShape(accepts=sorted(accepts), emits=sorted(emits))
        for name, accepts, emits in steps
    }


def _fit_problems(
    snapshot: WorkflowSnapshot,
    accepts: Mapping[str, tuple[type[Event], ...]],
    known: Mapping[str, type[Event]],
    fingerprint: Mapping[str, StepShape],
) -> list[str]:
    """Every way the snapshot's work does not fit the resuming definition of its workflow.

    Work waiting for a step that is gone, or of a type its step does not accept, would be
    stranded or misrouted. New steps, new types, a gone step with no work: all compatible.
    """
    waiting: dict[str, set[str]] = {step: set() for step in snapshot.collect_buffers}
    for item in snapshot.pending_events:
        waiting.setdefault(item.target_step or "", set()).add(item.event.type_id)
    problems = []
    for step, type_ids in sorted(waiting.items()):
        if step not in accepts:
            problems.append(f"step {step!r}, which has work waiting, is gone")
            continue
        refused = sorted(
            type_id
            for type_id in type_ids
            if not issubclass(known.get(type_id, DynamicEvent), accepts[step])
        )
        if refused:
            problems.append(
                f"step {step!r} does not accept {', '.join(refused)}, waiting for it"
                + _was(snapshot.fingerprint, fingerprint, step)
            )
    return problems


def _was(
    taken: Mapping[str, StepShape] | None, resuming: Mapping[str, StepShape], step: str
) -> str:
    before = (taken or {}).get(step)
    now = resuming.get(step)
    if before is None or now is None:
        return ""
    return f" (it accepted {before.accepts} when the snapshot was taken, now {now.accepts})"


def read_snapshot(
    snapshot: WorkflowSnapshot,
    accepts: Mapping[str, tuple[type[Event], ...]],
    known: Mapping[str, type[Event]],
    fingerprint: Mapping[str, StepShape],
) -> RestoredRun:
    """Decode `snapshot` for a workflow whose steps accept these event types.

    Every pending event, collect buffer and input request is checked against the workflow, so
    a tampered snapshot, or one taken under an incompatible definition, is refused instead of
    reaching a step. Raises `SnapshotError` listing what does not fit (a session ref that
    cannot be restored included, chained to its cause).
    """
    problems = _fit_problems(snapshot, accepts, known, fingerprint)
    if problems:
        raise SnapshotError(
            f"snapshot of run {snapshot.run_id!r} does not fit workflow "
            f"{snapshot.workflow_name!r} as defined here: {'; '.join(problems)}"
        )
    try:
        return _read(snapshot, accepts, known)
    except SnapshotError:
        raise
    except Exception as exc:  # SessionRefError, or anything a hand-built snapshot trips
        raise SnapshotError(f"cannot restore snapshot of run {snapshot.run_id!r}: {exc}") from exc


def _read(
    snapshot: WorkflowSnapshot,
    accepts: Mapping[str, tuple[type[Event], ...]],
    known: Mapping[str, type[Event]],
) -> RestoredRun:
    usage = snapshot.usage
    return RestoredRun(
        run_id=snapshot.run_id,
        state={key: decode_value(wire, key=key) for key, wire in snapshot.state.items()},
        buffers=_buffers(snapshot, accepts, known),
        input_requests=_all_of(snapshot.input_requests, known, InputRequestEvent, "input_requests"),
        pending=_pending(snapshot, accepts, known),
        usage=Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
        cost_usd=usage.cost_usd,
        history=list(snapshot.history),
        refs=SessionRefRegistry.restore(snapshot.session_refs, dropped=_dropped(snapshot)),
        active_time=snapshot.active_time,
        journal_seq=snapshot.journal_seq,
        routed_seq=snapshot.routed_seq,
        responses=_all_of(snapshot.input_responses, known, InputResponseEvent, "input_responses"),
    )


def _pending(
    snapshot: WorkflowSnapshot,
    accepts: Mapping[str, tuple[type[Event], ...]],
    known: Mapping[str, type[Event]],
) -> list[Work]:
    pending = []
    for index, item in enumerate(snapshot.pending_events):
        step = item.target_step or ""
        event = decode_event(item.event, known)
        if not isinstance(event, accepts[step]):  # a class whose type id lies
            raise SnapshotError(
                f"snapshot pending_events[{index}] gives step {step!r} an event of type "
                f"{item.event.type_id!r}, which the step does not accept"
            )
        pending.append(Work(step, event, item.source_step, item.attempt, item.seq, item.children))
    return pending


def _buffers(
    snapshot: WorkflowSnapshot,
    accepts: Mapping[str, tuple[type[Event], ...]],
    known: Mapping[str, type[Event]],
) -> dict[str, list[Event]]:
    buffers: dict[str, list[Event]] = {}
    for step, buffer in snapshot.collect_buffers.items():
        # Unknown types stay DynamicEvents: a step may collect what it cannot type yet.
        buffers[step] = [decode_event(item, known) for item in buffer]
    return buffers


E = TypeVar("E", bound=Event)


def _all_of(
    items: Iterable[EncodedEvent], known: Mapping[str, type[Event]], cls: type[E], where: str
) -> list[E]:
    """Decode a snapshot list that may hold only events of class `cls`."""
    decoded = []
    for item in items:
        event = decode_event(item, known)
        if not isinstance(event, cls):
            raise SnapshotError(
                f"snapshot {where} hold an event of type {item.type_id!r}, not a {cls.__name__}"
            )
        decoded.append(event)
    return decoded


def _dropped(snapshot: WorkflowSnapshot) -> list[str]:
    dropped = snapshot.metadata.get(DROPPED_REFS_METADATA_KEY, [])
    if not isinstance(dropped, list) or not all(isinstance(key, str) for key in dropped):
        raise SnapshotError(
            f"snapshot metadata[{DROPPED_REFS_METADATA_KEY!r}] must be a list of str, "
            f"got {dropped!r}"
        )
    return dropped


def stored_result(
    run_id: str,
    result: EncodedEvent,
    known: Mapping[str, type[Event]],
    usage: UsageTotals | None = None,
    history: tuple[HistoryEntry, ...] | None = None,
) -> WorkflowResult:
    """A finished run's result from its stored StopEvent (a store's run, a memoized child).

    A StopEvent subclass not known here comes back as a plain StopEvent with the same result.
    """
    stop = decode_event(result, known)
    if not isinstance(stop, StopEvent):
        stop = StopEvent(result=decode_value(result.payload.get("result"), key="result"))
    totals = usage or UsageTotals()
    return WorkflowResult(
        stop.result,
        stop,
        run_id,
        Usage(totals.prompt_tokens, totals.completion_tokens, totals.total_tokens),
        totals.cost_usd,
        history,
    )


def stored_outcome(
    snapshot: WorkflowSnapshot, known: Mapping[str, type[Event]], *, history: bool = False
) -> WorkflowResult | RunFinished:
    """What a finished stored run ended with: its result, or `RunFinished` with its error."""
    if snapshot.status is RunStatus.COMPLETED and snapshot.result is not None:
        kept = tuple(snapshot.history) if history else None
        return stored_result(snapshot.run_id, snapshot.result, known, snapshot.usage, kept)
    return RunFinished(f"run {snapshot.run_id} already ended ({snapshot.status}): {snapshot.error}")
