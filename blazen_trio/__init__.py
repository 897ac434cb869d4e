"""blazen_trio: an event-driven, pausable workflow engine for Trio applications."""

from ._broadcast import (
    EventStream as EventStream,
    StreamStatistics as StreamStatistics,
    SubscriberStatistics as SubscriberStatistics,
)
from ._client import WorkflowClient as WorkflowClient
from ._codec import WorkflowSnapshot as WorkflowSnapshot
from ._context import Context as Context
from ._errors import (
    CheckpointStoreError as CheckpointStoreError,
    InputUnanswerable as InputUnanswerable,
    NoHandler as NoHandler,
    RunCrashed as RunCrashed,
    RunFinished as RunFinished,
    RunHeld as RunHeld,
    RunSuspended as RunSuspended,
    SessionRefError as SessionRefError,
    SessionRefsNotSerializable as SessionRefsNotSerializable,
    SnapshotError as SnapshotError,
    StepFailed as StepFailed,
    StepTimeout as StepTimeout,
    UnknownInputRequest as UnknownInputRequest,
    ValidationError as ValidationError,
    WorkflowAborted as WorkflowAborted,
    WorkflowError as WorkflowError,
    WorkflowStalled as WorkflowStalled,
    WorkflowTimeout as WorkflowTimeout,
)
from ._events import (
    DynamicEvent as DynamicEvent,
    Event as Event,
    InputRequestEvent as InputRequestEvent,
    InputResponseEvent as InputResponseEvent,
    StartEvent as StartEvent,
    StepCompleted as StepCompleted,
    StepErrored as StepErrored,
    StepStarted as StepStarted,
    StopEvent as StopEvent,
    StreamLagged as StreamLagged,
    SubWorkflowEvent as SubWorkflowEvent,
    UsageEvent as UsageEvent,
    event_type_id as event_type_id,
)
from ._handler import RunStatistics as RunStatistics, WorkflowHandler as WorkflowHandler
from ._records import (
    CheckpointInfo as CheckpointInfo,
    ChildMemo as ChildMemo,
    EncodedEvent as EncodedEvent,
    HistoryEntry as HistoryEntry,
    HistoryKind as HistoryKind,
    JournalRecord as JournalRecord,
    PendingEvent as PendingEvent,
    RefLifetime as RefLifetime,
    RunInfo as RunInfo,
    RunStatus as RunStatus,
    SerializedRef as SerializedRef,
    SessionPausePolicy as SessionPausePolicy,
    SessionRef as SessionRef,
    StepCommit as StepCommit,
    Usage as Usage,
    UsageTotals as UsageTotals,
    WorkflowResult as WorkflowResult,
)
from ._refs import (
    SessionRefRegistry as SessionRefRegistry,
    SessionRefSerializable as SessionRefSerializable,
    StepRefs as StepRefs,
)
from ._retry import RetryPolicy as RetryPolicy
from ._sqlite import SqliteCheckpointStore as SqliteCheckpointStore
from ._steps import StepSpec as StepSpec, step as step
from ._stores import (
    CheckpointStore as CheckpointStore,
    MemoryCheckpointStore as MemoryCheckpointStore,
)
from ._util import fixup_module_metadata as _fixup_module_metadata
from ._worker import (
    Worker as Worker,
    WorkerStatistics as WorkerStatistics,
    open_worker as open_worker,
)
from ._workflow import (
    GraphEdge as GraphEdge,
    Workflow as Workflow,
    WorkflowGraph as WorkflowGraph,
)

__version__ = "0.1.0"

_fixup_module_metadata(__name__, globals())
del _fixup_module_metadata
