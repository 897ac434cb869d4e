"""The records every layer shares: run status, usage, results, and the wire Structs.

The bottom of the package (above only errors and events): plain data with no behaviour that
needs another module, so the codec, the state, the run loop and the stores can all speak it.
The snapshot's parts are msgspec Structs whose annotations carry their constraints
(`msgspec.Meta`, enums, `Literal`), so decoding refuses what encoding could not have produced.
"""

from enum import StrEnum
from typing import Annotated, Any, Final, Literal, final

import attrs
import msgspec

from ._events import INT64_MAX, Count, Event, StopEvent, UsageEvent

Attempt = Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]
"""An attempt number: 1 for the first attempt."""

SESSION_REF_KEY: Final = "__blazen_session_ref__"
"""The single key of a `SessionRef`'s wire form."""


class RunStatus(StrEnum):
    """Where a run is in its life; `str` so it compares equal to the plain names."""

    RUNNING = "running"
    PAUSED = "paused"
    WAITING_FOR_INPUT = "waiting_for_input"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"


class HistoryKind(StrEnum):
    """What a history entry records."""

    RUN_STARTED = "run_started"
    RUN_RESUMED = "run_resumed"
    EVENT_RECEIVED = "event_received"
    STEP_DISPATCHED = "step_dispatched"
    STEP_COMPLETED = "step_completed"
    STEP_FAILED = "step_failed"
    STEP_RETRIED = "step_retried"
    STEP_CANCELLED = "step_cancelled"
    CHILD_STARTED = "child_started"
    CHILD_FINISHED = "child_finished"
    INPUT_REQUESTED = "input_requested"
    INPUT_RECEIVED = "input_received"
    PAUSED = "paused"
    RESUMED = "resumed"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    ABORTED = "aborted"


@final
class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One thing that happened in a run; `sequence` strictly increases within the run.

    A msgspec Struct (not attrs) because history travels inside snapshots as-is.
    """

    sequence: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]
    kind: HistoryKind
    timestamp: float
    step: str | None = None
    event_type: str | None = None
    attempt: Attempt | None = None
    duration: float | None = None
    detail: str | None = None


@final
@attrs.frozen
class Usage:
    """Token totals summed over every `UsageEvent` the run emitted."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, event: UsageEvent) -> "Usage":
        return Usage(
            self.prompt_tokens + event.prompt_tokens,
            self.completion_tokens + event.completion_tokens,
            self.total_tokens + event.total_tokens,
        )


@final
@attrs.frozen
class WorkflowResult:
    """What a completed run produced.

    `session_refs` holds the live objects of refs inserted with
    `RefLifetime.UNTIL_EXPLICIT_DROP`, which outlive the run by design.
    """

    result: Any
    event: StopEvent
    run_id: str
    usage: Usage
    cost_usd: float
    history: tuple[HistoryEntry, ...] | None = None
    session_refs: dict[str, Any] = attrs.Factory(dict)


@final
@attrs.frozen
class StepCommit:
    """One step invocation's commit, as `Workflow.start(on_commit=...)` observers see it.

    `event` is the input the step consumed; `emitted` what it emitted (`ctx.send_event` calls,
    then its return value), in routing order; `attempt` the attempt that completed;
    `delivery` the routing order of the consumed event (with `run_id` and `step`, what
    `ctx.idempotency_key` is made of).
    """

    run_id: str
    step: str
    event: Event
    emitted: tuple[Event, ...]
    attempt: int
    delivery: int = 0


@final
class SessionRef(msgspec.Struct, frozen=True, rename={"key": SESSION_REF_KEY}):
    """A handle to a live object kept by the run; resolve it with `ctx.refs.get(ref)`.

    Only the key travels (in events, in snapshots). Type an event field as `SessionRef` so
    msgspec decodes it back into one; a field typed `Any` decodes to the plain wire dict.
    """

    key: str


class RefLifetime(StrEnum):
    """How long the run keeps a ref's object."""

    UNTIL_RUN_END = "until_run_end"
    """Released when the run ends (however it ends); serialized into snapshots."""
    UNTIL_EXPLICIT_DROP = "until_explicit_drop"
    """Kept until `drop()`; still live when the run ends, handed to the caller in the result."""
    UNTIL_SNAPSHOT = "until_snapshot"
    """Released when the run is snapshotted, under every policy; never serialized."""
    UNTIL_PARENT_FINISH = "until_parent_finish"
    """Kept while sub-workflows come and go; released when the owning (parent) run ends."""


class SessionPausePolicy(StrEnum):
    """What a snapshot does with the live refs (`UNTIL_SNAPSHOT` refs simply end there)."""

    PICKLE_OR_ERROR = "pickle_or_error"
    """Pickle every ref; if any fails, the snapshot fails with `SessionRefsNotSerializable`."""
    PICKLE_OR_SERIALIZE = "pickle_or_serialize"
    """Use the object's `__blazen_serialize__` protocol, else pickle; drop failures with a warning.

    An object whose class has the protocol is serialized by it only (never pickled).
    """
    WARN_DROP = "warn_drop"
    """Serialize nothing: drop every ref with one `RuntimeWarning`, keys kept in metadata."""
    HARD_ERROR = "hard_error"
    """Refuse to snapshot (`SessionRefError`) while any ref is live."""


@final
class SerializedRef(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A live session ref in serialized form, restored under its original key on resume."""

    key: str
    lifetime: RefLifetime
    codec: Literal["pickle", "protocol"]  # protocol: __blazen_serialize__ / __blazen_deserialize__
    type_path: str  # "module:QualName" of the object's class
    data: str  # base64 of the serialized bytes


@final
class EncodedEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False, array_like=True):
    """An event in a snapshot: its type id and `{field name: wire form}`.

    Array-like, as are `ChildMemo` and `PendingEvent`: on the wire a list of the fields in
    declaration order, so a snapshot does not repeat field names per event. A field added
    later goes last, with a default, so that older (shorter) lists still decode.
    """

    type_id: str
    payload: dict[str, Any]


@final
class ChildMemo(msgspec.Struct, frozen=True, kw_only=True, gc=False, array_like=True):
    """A sub-workflow of a step invocation, kept so a re-run of the step does not redo it.

    `index` counts the `ctx.run_workflow` calls of the invocation. A finished child has its
    `result` (the StopEvent); one still going has its sealed snapshot, to resume from.
    """

    index: Count
    run_id: str
    result: EncodedEvent | None = None
    snapshot: bytes | None = None


@final
class PendingEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False, array_like=True):
    """An event routed but not yet handled: it is delivered on resume.

    `target_step` is set when the event is owed to one step only (say, the input of an
    in-flight step put back); `attempt` is that invocation's attempt number. The fields that
    are usually at their defaults come last.
    """

    event: EncodedEvent
    source_step: str | None = None
    target_step: str | None = None
    seq: Count = 0
    """The run's routing order of the event (0 in snapshots written before it was kept)."""
    attempt: Attempt = 1
    children: tuple[ChildMemo, ...] = ()
    """Sub-workflows the delivery's step started: finished ones, and snapshots of the others.
    A tuple: decoding gives every pending event the one empty tuple, not a list of its own."""


@final
class UsageTotals(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Token usage and cost summed over a run."""

    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    total_tokens: Count = 0
    cost_usd: float = 0.0


@final
class StepShape(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a step accepts and emits (type ids, sorted): a part of a workflow's fingerprint."""

    accepts: list[str]
    emits: list[str]


@final
class BufferOp(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One change a commit made to a step's collect buffer: an event added or taken."""

    step: str
    event: EncodedEvent
    taken: bool = False


@final
class JournalRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False, omit_defaults=True):
    """What one commit changed in a run: the unit a durable run writes before routing.

    A step's commit names the delivery it consumed (`step`, `consumed`); the run's start, an
    input response and the run's end have no step. Values are wire forms, so a store folds
    records into a snapshot (`_journal.apply`) without running any user code.
    """

    seq: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]
    """Position in the run's journal: 1, 2, ... with no gaps."""
    at: float
    """Wall-clock time of the commit (seconds since the epoch)."""
    step: str | None = None
    consumed: Count | None = None
    """The `seq` of the pending delivery to `step` that this commit consumed."""
    retried: Count | None = None
    """The `seq` of a pending delivery to `step` that failed and will be tried at `attempt`."""
    child_of: Count | None = None
    """The `seq` of the pending delivery to `step` whose invocation finished `child`."""
    child: ChildMemo | None = None
    """A sub-workflow that finished: a re-run of its step takes this result, not a new run."""
    attempt: Attempt = 1
    routed: list[PendingEvent] = []
    requests: list[EncodedEvent] = []
    """Input requests made by this commit, now outstanding."""
    answered: str | None = None
    """The input request this record answered."""
    response: EncodedEvent | None = None
    """The answer (`InputResponseEvent`) recorded by `store.respond`, for the run to route
    when it is recovered; a live run routes its answers at once (`routed`)."""
    responses_routed: bool = False
    """The recovered run routed the answers that `store.respond` recorded."""
    state_set: dict[str, Any] = {}
    state_deleted: list[str] = []
    buffers: list[BufferOp] = []
    refs_inserted: dict[str, SerializedRef] = {}
    refs_dropped: list[str] = []
    usage: UsageTotals = UsageTotals()
    """What this commit added to the run's usage totals."""
    history: list[HistoryEntry] = []
    status: RunStatus | None = None
    """The run's status from this record on, when it changed."""
    result: EncodedEvent | None = None
    """The StopEvent, when this record completed the run."""
    error: str | None = None
    """The run's error, when this record failed or aborted it."""
    active_time: Annotated[float, msgspec.Meta(ge=0)] | None = None


@final
@attrs.frozen
class RunInfo:
    """A run as a checkpoint store lists it."""

    run_id: str
    workflow_name: str
    status: RunStatus
    created_at: float
    updated_at: float
    seq: int
    """The last journal record written."""


@final
@attrs.frozen
class CheckpointInfo:
    """One committed step of a stored run (`store.history(run_id)`)."""

    seq: int
    step: str | None
    at: float
