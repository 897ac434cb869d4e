"""blazen_trio: an event-driven, pausable workflow engine for Trio applications."""

from ._broadcast import EventStream as EventStream, StreamStatistics as StreamStatistics
from ._context import Context as Context
from ._errors import (
    NoHandler as NoHandler,
    RunFinished as RunFinished,
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
    UsageEvent as UsageEvent,
    event_type_id as event_type_id,
)
from ._handler import WorkflowHandler as WorkflowHandler
from ._history import HistoryEntry as HistoryEntry, HistoryKind as HistoryKind
from ._refs import (
    RefLifetime as RefLifetime,
    SessionPausePolicy as SessionPausePolicy,
    SessionRef as SessionRef,
    SessionRefRegistry as SessionRefRegistry,
    SessionRefSerializable as SessionRefSerializable,
    StepRefs as StepRefs,
)
from ._retry import RetryPolicy as RetryPolicy
from ._run import RunStatus as RunStatus, Usage as Usage, WorkflowResult as WorkflowResult
from ._snapshot import (
    EncodedEvent as EncodedEvent,
    PendingEvent as PendingEvent,
    UsageTotals as UsageTotals,
    WorkflowSnapshot as WorkflowSnapshot,
)
from ._steps import StepSpec as StepSpec, step as step
from ._workflow import (
    GraphEdge as GraphEdge,
    Workflow as Workflow,
    WorkflowGraph as WorkflowGraph,
)

__version__ = "0.1.0"
