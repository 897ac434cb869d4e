"""What the files in tests/formats/ hold: data written by an older blazen_trio, to read today.

The files were written once, by commit 40ed15c (snapshot version 2, journal record version 1:
every record in map layout), from the builders below, and are never rewritten: they are what
a store or a file on disk holds from that release. The tests rebuild the same values with
today's classes and check that the old bytes decode to them.

- `snapshot_v2.msgpack` / `snapshot_v2.json`: `fold(base(CHILD), records())`, `to_bytes()` /
  `to_json()`, with `CHILD` the bytes of `child_snapshot().to_bytes()` (a running
  sub-workflow kept in a memo).
- `journal_v1.msgpack`: a MessagePack array of `encode_record(r)` for `r` in `records()`.
- `answer_v1.msgpack`: `encode_encoded_event(ANSWER)`, a queued answer as PostgreSQL keeps it.
- `submitted_v2.msgpack`: `submitted().to_bytes()`, a run as `WorkflowClient.submit` stored it.
- `store_v2.sqlite`: a SQLite store holding `base(CHILD)` saved, then `records()` appended.

`map_layout` writes any value the way those releases did, for the property tests.
"""

from __future__ import annotations

import datetime as dt
import pathlib
from typing import Any

import msgspec
from _store_child import start as empty_run

import blazen_trio as bz
from blazen_trio._codec import encode_event, encode_value
from blazen_trio._records import BufferOp, StepShape

FORMATS = pathlib.Path(__file__).parent / "formats"
CREATED = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
RUN_ID = "0b3c5e1e-8f2d-4d7a-9a51-2f6c0de1a001"
REQUEST_ID = "approve-1"


def event(type_id: str, **payload: object) -> bz.EncodedEvent:
    """An event in wire form (its payload encoded as the engine encodes state values)."""
    return bz.EncodedEvent(
        type_id=type_id, payload={name: encode_value(v, key=name) for name, v in payload.items()}
    )


STOP = encode_event(bz.StopEvent(result={"total": 9, "tags": ("a", "b")}))
REQUEST = encode_event(bz.InputRequestEvent(prompt="ok?", request_id=REQUEST_ID))
ANSWER = encode_event(bz.InputResponseEvent(request_id=REQUEST_ID, response=["yes", 1]))


def child_snapshot() -> bz.WorkflowSnapshot:
    """A sub-workflow still running when its parent was snapshotted."""
    return msgspec.structs.replace(
        empty_run("child-1"),  # of workflow "child"
        created_at=CREATED,
        status=bz.RunStatus.PAUSED,
        state={"seen": encode_value({1, 2}, key="seen")},
        pending_events=[
            bz.PendingEvent(event=event("tests.Item", n=1), source_step="split", seq=4)
        ],
        routed_seq=4,
    )


def base(child: bytes) -> bz.WorkflowSnapshot:
    """A paused run: deliveries of every shape, buffers, a request, refs, sub-workflows."""
    return bz.WorkflowSnapshot(
        workflow_name="legacy",
        run_id=RUN_ID,
        created_at=CREATED,
        status=bz.RunStatus.PAUSED,
        state={
            "count": encode_value(3, key="count"),
            "when": encode_value(CREATED, key="when"),
            "big": encode_value(2**80, key="big"),
        },
        pending_events=[
            bz.PendingEvent(event=encode_event(bz.StartEvent(data=7)), target_step="parse", seq=1),
            bz.PendingEvent(
                event=event("tests.Item", n=2, note=None),
                source_step="parse",
                target_step="fan",
                attempt=3,
                seq=2,
                children=(  # a list when the files were written: the same bytes
                    bz.ChildMemo(index=0, run_id="child-0", result=STOP),
                    bz.ChildMemo(index=1, run_id="child-1", snapshot=child),
                ),
            ),
            bz.PendingEvent(event=event("tests.Item", n=0), source_step="parse"),  # seq 0: old
        ],
        collect_buffers={"join": [event("tests.Part", i=0), event("tests.Part", i=1)]},
        input_requests=[REQUEST],
        usage=bz.UsageTotals(prompt_tokens=10, completion_tokens=5, total_tokens=15, cost_usd=0.25),
        history=[
            bz.HistoryEntry(sequence=1, kind=bz.HistoryKind.RUN_STARTED, timestamp=1.7e9),
            bz.HistoryEntry(
                sequence=2,
                kind=bz.HistoryKind.STEP_COMPLETED,
                timestamp=1.7e9 + 1,
                step="parse",
                attempt=1,
                duration=0.5,
            ),
        ],
        metadata={"note": "hello", "keys": ["a", "b"]},
        session_refs={
            "k1": bz.SerializedRef(
                key="k1",
                lifetime=bz.RefLifetime.UNTIL_RUN_END,
                codec="pickle",
                type_path="m:C",
                data="AAEC",
            )
        },
        active_time=12.5,
        routed_seq=2,
        fingerprint={"parse": StepShape(accepts=["blazen.StartEvent"], emits=["tests.Item"])},
    )


def records() -> list[bz.JournalRecord]:
    """The journal after `base`: a step's commit, a sub-workflow's end with a retry, an
    answer recorded by `store.respond`, the run's end."""
    return [
        bz.JournalRecord(
            seq=1,
            at=1.7e9 + 2,
            step="parse",
            consumed=1,
            routed=[
                bz.PendingEvent(
                    event=event("tests.Item", n=4), source_step="parse", target_step="fan", seq=3
                ),
                bz.PendingEvent(
                    event=event("tests.Part", i=2),
                    source_step="parse",
                    target_step="join",
                    attempt=2,
                    seq=4,
                ),
            ],
            requests=[encode_event(bz.InputRequestEvent(prompt="more?", request_id="r-2"))],
            state_set={"pair": encode_value((1, 2), key="pair")},
            state_deleted=["count"],
            buffers=[
                BufferOp(step="join", event=event("tests.Part", i=2)),
                BufferOp(step="join", event=event("tests.Part", i=0), taken=True),
            ],
            usage=bz.UsageTotals(prompt_tokens=1, completion_tokens=2, total_tokens=3),
            history=[
                bz.HistoryEntry(sequence=3, kind=bz.HistoryKind.STEP_COMPLETED, timestamp=1.7e9 + 2)
            ],
            refs_dropped=["k1"],
        ),
        bz.JournalRecord(
            seq=2,
            at=1.7e9 + 3,
            step="fan",
            child_of=2,
            child=bz.ChildMemo(index=2, run_id="child-2", result=STOP),
            retried=3,
            attempt=2,
        ),
        bz.JournalRecord(seq=3, at=1.7e9 + 4, answered=REQUEST_ID, response=ANSWER),
        bz.JournalRecord(
            seq=4,
            at=1.7e9 + 5,
            step="fan",
            consumed=3,
            status=bz.RunStatus.COMPLETED,
            result=STOP,
            active_time=13.0,
        ),
    ]


def submitted() -> bz.WorkflowSnapshot:
    """A run of workflow "quick" as `WorkflowClient.submit` stored it: its start event in the
    metadata, as builtins (the map layout written literally, as that release wrote it)."""
    start = {"type_id": "blazen.StartEvent", "payload": {"data": 7}}
    return msgspec.structs.replace(
        empty_run("submitted-1"),
        workflow_name="quick",
        created_at=CREATED,
        metadata={"__blazen_submitted_start": start},
    )


def map_layout(value: Any) -> Any:
    """`value` as builtins with every Struct a map of its fields, those at their defaults left
    out: how releases before snapshot version 3 (journal version 2) wrote events, pending
    events and child memos (which left out defaults), and what their readers accepted."""
    if isinstance(value, msgspec.Struct):
        return {
            field.encode_name: map_layout(getattr(value, field.name))
            for field in msgspec.structs.fields(value)
            if not _is_default(field, getattr(value, field.name))
        }
    if isinstance(value, list | tuple):
        return [map_layout(item) for item in value]
    if isinstance(value, dict):
        return {key: map_layout(item) for key, item in value.items()}
    return msgspec.to_builtins(value)


def _is_default(field: msgspec.structs.FieldInfo, value: Any) -> bool:
    if field.default_factory is not msgspec.NODEFAULT:
        return bool(value == field.default_factory())
    return field.default is not msgspec.NODEFAULT and bool(value == field.default)
