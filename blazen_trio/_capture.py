"""A run's data to a `WorkflowSnapshot` and back, knowing nothing of the run loop.

The run loop hands over its parts (state with in-flight effects taken back, pending work,
requests, totals) and gets a snapshot; a snapshot read here becomes a `RestoredRun` that a new
run is built from. Only steps that were in flight at the snapshot run again on resume.
"""

from __future__ import annotations

import datetime
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import attrs

from ._codec import (
    WorkflowSnapshot,
    decode_event,
    decode_value,
    encode_event,
    encode_value,
)
from ._errors import SnapshotError
from ._events import Event, InputRequestEvent
from ._records import HistoryEntry, PendingEvent, RunStatus, SerializedRef, Usage, UsageTotals
from ._refs import DROPPED_REFS_METADATA_KEY, SessionRefRegistry
from ._state import RunState


@attrs.frozen
class Work:
    """One event owed to one step: `attempt` is the attempt it has reached."""

    step: str
    event: Event
    source: str | None
    attempt: int


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
            )
            for work in pending
        ],
        collect_buffers={
            step: [encode_event(ev) for ev in buffer] for step, buffer in state.buffers.items()
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
    )


def read_snapshot(
    snapshot: WorkflowSnapshot, steps: Collection[str], known: Mapping[str, type[Event]]
) -> RestoredRun:
    """Decode `snapshot` for a workflow with these step names and event types.

    Raises `SnapshotError` (or `SessionRefError` for refs) naming what cannot be restored.
    """
    requests = [decode_event(item, known) for item in snapshot.input_requests]
    if not all(isinstance(request, InputRequestEvent) for request in requests):
        raise SnapshotError("snapshot input_requests hold an event that is not an input request")
    pending = []
    for item in snapshot.pending_events:
        if item.target_step is None or item.target_step not in steps:
            raise SnapshotError(
                f"snapshot has work for step {item.target_step!r}, "
                f"which workflow {snapshot.workflow_name!r} does not have"
            )
        event = decode_event(item.event, known)
        pending.append(Work(item.target_step, event, item.source_step, item.attempt))
    usage = snapshot.usage
    dropped = snapshot.metadata.get(DROPPED_REFS_METADATA_KEY, ())
    return RestoredRun(
        run_id=snapshot.run_id,
        state={key: decode_value(wire, key=key) for key, wire in snapshot.state.items()},
        buffers={
            step: [decode_event(item, known) for item in buffer]
            for step, buffer in snapshot.collect_buffers.items()
        },
        input_requests=[r for r in requests if isinstance(r, InputRequestEvent)],
        pending=pending,
        usage=Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
        cost_usd=usage.cost_usd,
        history=list(snapshot.history),
        refs=SessionRefRegistry.restore(snapshot.session_refs, dropped=dropped),
        active_time=snapshot.active_time,
    )
