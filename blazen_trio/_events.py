"""Events: immutable msgspec Structs with stable type ids, and the built-in event types."""

import uuid
import weakref
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, dataclass_transform

import msgspec
from msgspec import StructMeta

from ._errors import ValidationError

INT64_MAX: Final = 2**63 - 1

Count = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
"""A non-negative signed 64-bit count (tokens, sequence numbers): what both snapshot formats
carry exactly."""

# Weak, so classes made per test or per notebook cell do not pile up.
_classes_by_type_id: "weakref.WeakValueDictionary[str, type[Event]]" = weakref.WeakValueDictionary()


def _same_definition(a: type, b: type) -> bool:
    """Re-running a class statement (a notebook cell, a reloaded module) is not a clash."""
    return a.__module__ == b.__module__ and a.__qualname__ == b.__qualname__


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(msgspec.field,))
class _EventMeta(StructMeta):
    """Gives each Event class its type id (`type_id=` class keyword) and checks it is unique."""

    def __new__(
        mcls,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        *,
        type_id: str | None = None,
        **struct_options: Any,
    ) -> "_EventMeta":
        # msgspec applies kw_only to the fields a class declares, so every Event class needs it.
        struct_options.setdefault("kw_only", True)
        cls = super().__new__(mcls, name, bases, namespace, **struct_options)
        if type_id is not None and (not isinstance(type_id, str) or not type_id):
            raise ValidationError(
                [f"event class {cls.__qualname__}: type_id must be a non-empty str"]
            )
        resolved = type_id or f"{cls.__module__}.{cls.__qualname__}"
        earlier = _classes_by_type_id.get(resolved)
        if earlier is not None and not _same_definition(earlier, cls):
            raise ValidationError(
                [
                    f"event class {cls.__module__}.{cls.__qualname__} reuses type id "
                    f"{resolved!r}, already taken by {earlier.__module__}.{earlier.__qualname__}"
                ]
            )
        cls.__blazen_type_id__ = resolved  # type: ignore[attr-defined]  # set once, read-only after
        _classes_by_type_id[resolved] = cls  # type: ignore[assignment]  # cls is an Event class
        return cls


# Repeated on the class: type checkers read kw_only_default from the base class, not its metaclass.
@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(msgspec.field,))
class Event(
    msgspec.Struct, metaclass=_EventMeta, frozen=True, kw_only=True, type_id="blazen.Event"
):
    """Base class of every event: keyword fields, immutable, equal by value.

    The type id (`module.QualName` unless given with `class E(Event, type_id="...")`)
    is what snapshots store, so a stable explicit id lets events survive refactors.
    """

    __blazen_type_id__: ClassVar[str]

    if TYPE_CHECKING:  # the metaclass takes `type_id`; this tells type checkers it exists

        def __init_subclass__(cls, *, type_id: str | None = None, **options: Any) -> None: ...


def event_type_id(event: "Event | type[Event]") -> str:
    """The stable type id of an event or event class."""
    return event.__blazen_type_id__


class StartEvent(Event, type_id="blazen.StartEvent"):
    """Begins a run; `Workflow.run(value)` wraps a non-event value as `StartEvent(data=value)`."""

    data: Any = None


class StopEvent(Event, type_id="blazen.StopEvent"):
    """Ends a run; the first one committed wins and its `result` is the run's result."""

    result: Any = None


class DynamicEvent(Event, type_id="blazen.DynamicEvent"):
    """An event whose class is not known here; it keeps its type id and payload."""

    type_id: str
    data: dict[str, Any] = msgspec.field(default_factory=dict)


def _new_request_id() -> str:
    return str(uuid.uuid4())


class InputRequestEvent(Event, type_id="blazen.InputRequestEvent"):
    """A step asks a human (or `input_handler`) for input; the run records it as outstanding."""

    prompt: str
    request_id: str = msgspec.field(default_factory=_new_request_id)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class InputResponseEvent(Event, type_id="blazen.InputResponseEvent"):
    """The answer to an `InputRequestEvent`, routed to the steps that accept it."""

    request_id: str
    response: Any = None


class UsageEvent(Event, type_id="blazen.UsageEvent"):
    """Token usage and cost of one model call, summed by the run into its totals."""

    provider: str = ""
    model: str = ""
    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    total_tokens: Count = 0
    cost_usd: float = 0.0
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class StepStarted(Event, type_id="blazen.StepStarted"):
    """Lifecycle: an attempt of a step began."""

    step: str
    event_type: str
    attempt: int


class StepCompleted(Event, type_id="blazen.StepCompleted"):
    """Lifecycle: a step completed and its outputs were committed."""

    step: str
    duration: float


class StepErrored(Event, type_id="blazen.StepErrored"):
    """Lifecycle: an attempt of a step raised (it may be retried)."""

    step: str
    error: str
    attempt: int


class StreamLagged(Event, type_id="blazen.StreamLagged"):
    """A slow stream subscriber lost its `missed` oldest events; loss is never silent."""

    missed: int


class SubWorkflowEvent(Event, type_id="blazen.SubWorkflowEvent"):
    """An event a sub-workflow published, on its parent's stream: tagged with the child run."""

    run_id: str
    workflow: str
    event: Event


STREAM_ONLY_EVENTS: tuple[type[Event], ...] = (
    SubWorkflowEvent,
    UsageEvent,
    StepStarted,
    StepCompleted,
    StepErrored,
    StreamLagged,
)
"""Built-in events that only travel on the stream: no step needs to accept them."""

BUILTIN_EVENTS: tuple[type[Event], ...] = (
    StartEvent,
    StopEvent,
    InputRequestEvent,
    InputResponseEvent,
    *STREAM_ONLY_EVENTS,
)
"""Every built-in event a snapshot may hold (`DynamicEvent` travels under its own ids)."""
