"""blazen_trio: an event-driven, pausable workflow engine for Trio applications."""

from ._broadcast import EventStream as EventStream, StreamStatistics as StreamStatistics
from ._context import Context as Context
from ._errors import (
    NoHandler as NoHandler,
)
from ._errors import (
    RunFinished as RunFinished,
)
from ._errors import (
    SessionRefError as SessionRefError,
)
from ._errors import (
    SessionRefsNotSerializable as SessionRefsNotSerializable,
)
from ._errors import (
    SnapshotError as SnapshotError,
)
from ._errors import (
    StepFailed as StepFailed,
)
from ._errors import (
    StepTimeout as StepTimeout,
)
from ._errors import (
    UnknownInputRequest as UnknownInputRequest,
)
from ._errors import (
    ValidationError as ValidationError,
)
from ._errors import (
    WorkflowAborted as WorkflowAborted,
)
from ._errors import (
    WorkflowError as WorkflowError,
)
from ._errors import (
    WorkflowStalled as WorkflowStalled,
)
from ._errors import (
    WorkflowTimeout as WorkflowTimeout,
)
from ._events import (
    DynamicEvent as DynamicEvent,
)
from ._events import (
    Event as Event,
)
from ._events import (
    InputRequestEvent as InputRequestEvent,
)
from ._events import (
    InputResponseEvent as InputResponseEvent,
)
from ._events import (
    StartEvent as StartEvent,
)
from ._events import (
    StepCompleted as StepCompleted,
)
from ._events import (
    StepErrored as StepErrored,
)
from ._events import (
    StepStarted as StepStarted,
)
from ._events import (
    StopEvent as StopEvent,
)
from ._events import (
    StreamLagged as StreamLagged,
)
from ._events import (
    UsageEvent as UsageEvent,
)
from ._events import (
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
)
from ._retry import RetryPolicy as RetryPolicy
from ._run import RunStatus as RunStatus
from ._run import Usage as Usage
from ._run import WorkflowResult as WorkflowResult
from ._steps import StepSpec as StepSpec
from ._steps import step as step
from ._workflow import (
    GraphEdge as GraphEdge,
)
from ._workflow import (
    Workflow as Workflow,
)
from ._workflow import (
    WorkflowGraph as WorkflowGraph,
)

__version__ = "0.1.0"
