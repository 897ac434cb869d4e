"""The journal's reducer: a stored run is its last snapshot with its journal records folded in.

Pure and on wire forms: folding runs no user code and imports nothing the run named, so a
store (or a process that does not define the workflow) can compact and load runs. The live run
builds each `JournalRecord` from the commit it makes (`_run.py`); the tests check that folding
the journal gives what the live run would snapshot at the same point.
"""

from collections.abc import Iterable

import attrs
import msgspec

from ._codec import WorkflowSnapshot
from ._errors import CheckpointStoreError
from ._records import (
    ChildMemo,
    EncodedEvent,
    HistoryEntry,
    JournalRecord,
    PendingEvent,
    RunStatus,
    SerializedRef,
    UsageTotals,
)


@attrs.define(eq=False)
class Folded:
    """A snapshot opened up for folding records into it (mutable; see `fold`)."""

    base: WorkflowSnapshot
    state: dict[str, object]
    pending: dict[tuple[int, str], PendingEvent]
    buffers: dict[str, list[EncodedEvent]]
    requests: dict[str, EncodedEvent]
    responses: list[EncodedEvent]
    refs: dict[str, SerializedRef]
    history: list[HistoryEntry]
    tokens: list[int]  # prompt, completion, total
    cost_usd: float
    status: RunStatus
    result: EncodedEvent | None
    error: str | None
    active_time: float
    seq: int
    routed_seq: int


def open_snapshot(snapshot: WorkflowSnapshot) -> Folded:
    """A snapshot ready to have the records after `snapshot.journal_seq` folded in."""
    usage = snapshot.usage
    return Folded(
        base=snapshot,
        state=dict(snapshot.state),
        pending={(item.seq, item.target_step or ""): item for item in snapshot.pending_events},
        buffers={step: list(buffer) for step, buffer in snapshot.collect_buffers.items()},
        requests={_request_id(event): event for event in snapshot.input_requests},
        responses=list(snapshot.input_responses),
        refs=dict(snapshot.session_refs),
        history=list(snapshot.history),
        tokens=[usage.prompt_tokens, usage.completion_tokens, usage.total_tokens],
        cost_usd=usage.cost_usd,
        status=snapshot.status,
        result=snapshot.result,
        error=snapshot.error,
        active_time=snapshot.active_time,
        seq=snapshot.journal_seq,
        routed_seq=snapshot.routed_seq,
    )


def _request_id(event: EncodedEvent) -> str:
    request_id = event.payload.get("request_id")
    if not isinstance(request_id, str):
        raise CheckpointStoreError(f"a stored input request has no str request_id: {event!r}")
    return request_id


def apply(folded: Folded, record: JournalRecord) -> None:
    """Fold one record in; the records of a run must come in order, with no gap."""
    if record.seq != folded.seq + 1:
        raise CheckpointStoreError(
            f"journal of run {folded.base.run_id!r} jumps from record {folded.seq} to "
            f"{record.seq}: a record is missing"
        )
    folded.seq = record.seq
    step = record.step or ""
    if record.consumed is not None:
        folded.pending.pop((record.consumed, step), None)
    if record.retried is not None:
        retried = (record.retried, step)
        if retried in folded.pending:
            folded.pending[retried] = _with_attempt(folded.pending[retried], record.attempt)
    if record.child_of is not None and record.child is not None:
        parent = (record.child_of, step)
        if parent in folded.pending:
            folded.pending[parent] = _with_child(folded.pending[parent], record.child)
    for delivery in record.routed:
        folded.pending[(delivery.seq, delivery.target_step or "")] = delivery
        folded.routed_seq = max(folded.routed_seq, delivery.seq)
    for request in record.requests:
        folded.requests[_request_id(request)] = request
    if record.answered is not None:
        folded.requests.pop(record.answered, None)
    if record.response is not None:
        folded.responses.append(record.response)
    if record.responses_routed:
        folded.responses.clear()
    folded.state.update(record.state_set)
    for deleted in record.state_deleted:
        folded.state.pop(deleted, None)
    _apply_buffers(folded.buffers, record)
    folded.refs.update(record.refs_inserted)
    for dropped in record.refs_dropped:
        folded.refs.pop(dropped, None)
    usage = record.usage
    folded.tokens[0] += usage.prompt_tokens
    folded.tokens[1] += usage.completion_tokens
    folded.tokens[2] += usage.total_tokens
    folded.cost_usd += usage.cost_usd
    folded.history.extend(record.history)
    if record.status is not None:
        folded.status = record.status
    if record.result is not None:
        folded.result = record.result
    if record.error is not None:
        folded.error = record.error
    if record.active_time is not None:
        folded.active_time = record.active_time


def _with_attempt(item: PendingEvent, attempt: int) -> PendingEvent:
    return msgspec.structs.replace(item, attempt=attempt)


def _with_child(item: PendingEvent, child: ChildMemo) -> PendingEvent:
    others = [memo for memo in item.children if memo.index != child.index]
    return msgspec.structs.replace(item, children=(*others, child))


def _apply_buffers(buffers: dict[str, list[EncodedEvent]], record: JournalRecord) -> None:
    """In order: an added event joins its step's buffer, a taken one leaves it (the earliest
    equal one: equal events are interchangeable)."""
    for op in record.buffers:
        buffer = buffers.setdefault(op.step, [])
        if not op.taken:
            buffer.append(op.event)
            continue
        for index, held in enumerate(buffer):
            if held == op.event:
                del buffer[index]
                break


def close(folded: Folded) -> WorkflowSnapshot:
    """The snapshot that `folded` now stands for."""
    base = folded.base
    prompt, completion, total = folded.tokens
    return WorkflowSnapshot(
        workflow_name=base.workflow_name,
        run_id=base.run_id,
        created_at=base.created_at,
        status=folded.status,
        state=folded.state,
        pending_events=sorted(folded.pending.values(), key=lambda item: item.seq),
        collect_buffers={step: buffer for step, buffer in folded.buffers.items() if buffer},
        input_requests=list(folded.requests.values()),
        input_responses=folded.responses,
        usage=UsageTotals(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
            cost_usd=folded.cost_usd,
        ),
        history=folded.history,
        metadata=dict(base.metadata),
        session_refs=folded.refs,
        active_time=folded.active_time,
        journal_seq=folded.seq,
        routed_seq=folded.routed_seq,
        fingerprint=base.fingerprint,
        result=folded.result,
        error=folded.error,
    )


def fold(snapshot: WorkflowSnapshot, records: Iterable[JournalRecord]) -> WorkflowSnapshot:
    """`snapshot` with `records` (those after its `journal_seq`, in order) folded in."""
    folded = open_snapshot(snapshot)
    for record in records:
        apply(folded, record)
    return close(folded)
