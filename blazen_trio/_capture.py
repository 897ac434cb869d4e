"""Taking a run apart into a `WorkflowSnapshot`, and putting one back together.

Only steps that were in flight at the snapshot run again on resume: they are recorded as
pending work, with the state writes of their unfinished attempts taken back.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._codec import decode_event, decode_value, encode_event, encode_value, known_event_types
from ._errors import SnapshotError
from ._events import Event, InputRequestEvent
from ._history import History
from ._refs import DROPPED_REFS_METADATA_KEY, RefLifetime, SessionRefRegistry
from ._run import Invocation, Run, Usage
from ._snapshot import (
    EncodedEvent,
    PendingEvent,
    UsageTotals,
    WorkflowSnapshot,
    check_workflow_name,
)

if TYPE_CHECKING:
    from ._workflow import Workflow


def _pending_event(invocation: Invocation) -> PendingEvent:
    envelope = invocation.envelope
    return PendingEvent(
        event=encode_event(envelope.event),
        source_step=envelope.source,
        target_step=invocation.slot.spec.name,
        attempt=invocation.attempt,
    )


def capture(run: Run) -> WorkflowSnapshot:
    """A consistent snapshot of `run` now; exact when the run is paused."""
    pending = run.pending()
    logs = [inv.undo for inv in run.in_flight]
    state = run.state.without(logs)
    session_refs, metadata = run.refs.serialize(
        run.workflow.session_pause_policy, excluding=run.state.inserted_refs(logs)
    )
    snapshot = WorkflowSnapshot(
        workflow_name=run.workflow.name,
        run_id=run.run_id,
        created_at=datetime.datetime.now(datetime.UTC),
        status=str(run.status),
        state={key: encode_value(value, key=key) for key, value in state.values.items()},
        pending_events=[_pending_event(inv) for inv in pending],
        collect_buffers={
            step: [encode_event(ev) for ev in buffer] for step, buffer in state.buffers.items()
        },
        input_requests=[encode_event(env.event) for env in run.input_requests.values()],
        usage=UsageTotals(
            prompt_tokens=run.usage.prompt_tokens,
            completion_tokens=run.usage.completion_tokens,
            total_tokens=run.usage.total_tokens,
            cost_usd=run.cost_usd,
        ),
        history=list(run.history.entries) if run.history is not None else [],
        metadata=metadata,
        session_refs=session_refs,
        active_time=run.clock.used,
    )
    run.refs.release(RefLifetime.UNTIL_SNAPSHOT)
    return snapshot


def _known_types(workflow: Workflow) -> dict[str, type[Event]]:
    return known_event_types(t for spec in workflow.steps for t in (*spec.accepts, *spec.emits))


def _decode_events(encoded: Iterable[EncodedEvent], known: dict[str, type[Event]]) -> list[Event]:
    return [decode_event(item, known) for item in encoded]


def restore(run: Run, snapshot: WorkflowSnapshot) -> None:
    """Load a snapshot into a fresh run (before any step ran) and start its pending work."""
    workflow = run.workflow
    check_workflow_name(snapshot, workflow.name)
    known = _known_types(workflow)
    slots = {slot.spec.name: slot for slot in run.slots}
    run.state.values.update(
        {key: decode_value(wire, key=key) for key, wire in snapshot.state.items()}
    )
    for step, buffer in snapshot.collect_buffers.items():
        run.state.buffers[step] = _decode_events(buffer, known)
    requests = _decode_events(snapshot.input_requests, known)
    if not all(isinstance(request, InputRequestEvent) for request in requests):
        raise SnapshotError("snapshot input_requests hold an event that is not an input request")
    run.restore_inputs(r for r in requests if isinstance(r, InputRequestEvent))
    work = []
    for item in snapshot.pending_events:
        slot = slots.get(item.target_step or "")
        if slot is None:
            raise SnapshotError(
                f"snapshot has work for step {item.target_step!r}, "
                f"which workflow {workflow.name!r} does not have"
            )
        work.append((slot, decode_event(item.event, known), item.source_step, item.attempt))
    run.restore_pending(work)
    usage = snapshot.usage
    run.usage = Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
    run.cost_usd = usage.cost_usd
    if run.history is not None:
        run.history = History.restore(snapshot.history, run.workflow.history_limit)
    dropped = snapshot.metadata.get(DROPPED_REFS_METADATA_KEY, ())
    run.refs = SessionRefRegistry.restore(snapshot.session_refs, dropped=dropped)
    run.record_resumed()
    run.restart()
