"""Hypothesis strategies for what a workflow's own property tests need.

`state_values()` (values `ctx.set` can hold that survive a snapshot), `events(MyEvent)`
(instances of an event class, fields drawn from their annotations) and `snapshots()` (valid
`WorkflowSnapshot`s of every shape).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

import attrs
import msgspec
from hypothesis import strategies as st

from .._codec import WorkflowSnapshot, builtin_event_problem, encode_value
from .._events import DynamicEvent, Event
from .._records import (
    ChildMemo,
    EncodedEvent,
    HistoryEntry,
    HistoryKind,
    PendingEvent,
    RefLifetime,
    RunStatus,
    SerializedRef,
    SessionRef,
    UsageTotals,
)
from ._checker import PausePoint

E = TypeVar("E", bound=Event)


def pause_plans(
    *, max_pauses: int = 3, max_delay: float = 10.0, max_checkpoints: int = 30
) -> st.SearchStrategy[list[PausePoint]]:
    """Lists of pause points: when to pause, in which mode, and how to resume."""
    point = st.builds(
        PausePoint,
        delay=st.floats(min_value=0.0, max_value=max_delay, allow_nan=False),
        checkpoints=st.integers(min_value=0, max_value=max_checkpoints),
        cancel_in_flight=st.booleans(),
        in_place=st.booleans(),
        codec=st.sampled_from(["msgpack", "json"]),
    )
    return st.lists(point, min_size=1, max_size=max_pauses)


_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class SampleShade(enum.StrEnum):
    """An enum that `state_values()` draws (importable, so snapshots name it)."""

    LIGHT = "light"
    DARK = "dark"


@dataclasses.dataclass(frozen=True)
class SampleDataclass:
    """A frozen dataclass that `state_values()` draws."""

    name: str
    size: int
    shade: SampleShade


@attrs.frozen
class SampleAttrs:
    """A frozen attrs class that `state_values()` draws."""

    label: str
    count: int


class SampleStruct(msgspec.Struct, frozen=True):
    """A frozen msgspec Struct that `state_values()` draws."""

    key: str
    when: dt.datetime


_UTC_OFFSETS = st.sampled_from(
    [
        None,
        dt.UTC,
        dt.timezone(dt.timedelta(hours=5, minutes=30)),
        dt.timezone(-dt.timedelta(hours=8)),
    ]
)

_INT64 = st.integers(_INT64_MIN, _INT64_MAX)


def _hashable_values() -> st.SearchStrategy[Any]:
    """Scalars and frozen records the codec keeps exactly, all hashable."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),  # unbounded: big ints are tagged
        st.floats(allow_nan=False),  # NaN != NaN would make equality checks useless
        st.text(),
        st.binary(),
        st.decimals(allow_nan=False),
        st.datetimes(timezones=_UTC_OFFSETS),
        st.dates(),
        st.times(timezones=_UTC_OFFSETS),
        st.timedeltas(),
        st.uuids(),
        st.sampled_from(SampleShade),
        st.builds(SampleDataclass, name=st.text(), size=_INT64, shade=st.sampled_from(SampleShade)),
        st.builds(SampleAttrs, label=st.text(), count=_INT64),
        st.builds(SampleStruct, key=st.text(), when=st.datetimes(timezones=_UTC_OFFSETS)),
    )


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    hashable = _hashable_values()
    return st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
        st.dictionaries(st.integers(), children, max_size=3),
        # Keys the codec reserves: a user dict holding them must still come back as a dict.
        st.dictionaries(
            st.sampled_from(["$blazen", "__blazen_session_ref__"]), children, max_size=2
        ),
        st.frozensets(hashable, max_size=3),
        st.sets(hashable, max_size=3),
        st.builds(bytearray, st.binary(max_size=8)),
    )


def state_values(*, max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Values a step may `ctx.set` that a snapshot keeps exactly, without pickle.

    Scalars (big ints, finite floats, str, bytes, Decimal, datetime/date/time with fixed UTC
    offsets, timedelta, UUID, an enum) and records (a dataclass, an attrs class, a msgspec
    Struct), nested in lists, tuples, dicts (str, int and reserved keys), sets, frozensets and
    bytearrays. NaN is left out: it is not equal to itself.
    """
    return st.recursive(_hashable_values(), _containers, max_leaves=max_leaves)


def _wire_values() -> st.SearchStrategy[Any]:
    """JSON-native values, as found inside wire forms."""
    return st.recursive(
        st.one_of(
            st.none(),
            st.booleans(),
            _INT64,
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(),
        ),
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8), children, max_size=4),
        ),
        max_leaves=10,
    )


def _bounded(base: type, meta: msgspec.Meta) -> st.SearchStrategy[Any] | None:
    """A strategy honouring a `msgspec.Meta`'s bounds for numbers and lengths, if it can."""
    if base is int:
        low = meta.ge if meta.ge is not None else (meta.gt + 1 if meta.gt is not None else None)
        high = meta.le if meta.le is not None else (meta.lt - 1 if meta.lt is not None else None)
        return st.integers(
            None if low is None else math.ceil(low), None if high is None else math.floor(high)
        )
    if base is float:
        return st.floats(
            min_value=meta.ge if meta.ge is not None else meta.gt,
            max_value=meta.le if meta.le is not None else meta.lt,
            exclude_min=meta.ge is None and meta.gt is not None,
            exclude_max=meta.le is None and meta.lt is not None,
            allow_nan=False,
        )
    if base in (str, bytes) and meta.pattern is None:
        sized = st.text if base is str else st.binary
        return sized(min_size=meta.min_length or 0, max_size=meta.max_length)
    return None


def _for_type(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy for values of annotation `tp` (as msgspec resolved it)."""
    if tp is Any or tp is object:
        return state_values()
    if tp is None or tp is types.NoneType:
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is float:
        return st.floats(allow_nan=False)
    if tp is SessionRef:
        return st.builds(SessionRef, key=st.uuids().map(str))
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return _structs(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        metas = [meta for meta in args[1:] if isinstance(meta, msgspec.Meta)]
        bounded = _bounded(args[0], metas[0]) if len(metas) == 1 else None
        return bounded if bounded is not None else _for_type(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return st.one_of([_for_type(arg) for arg in args])
    if origin is Literal:
        return st.sampled_from(args)
    if origin in (list, Sequence):
        return st.lists(_for_type(args[0] if args else Any), max_size=4)
    if origin in (set, frozenset):
        items = _hashable_values() if not args or args[0] is Any else _for_type(args[0])
        return st.builds(origin, st.sets(items, max_size=3))
    if origin is tuple:
        if not args:
            return st.tuples()
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(_for_type(args[0]), max_size=4).map(tuple)
        return st.tuples(*(_for_type(arg) for arg in args))
    if origin in (dict, Mapping):
        key, value = args if args else (str, Any)
        keys = st.text(max_size=8) if key is Any else _for_type(key)
        return st.dictionaries(keys, _for_type(value), max_size=4)
    return st.from_type(tp)


def _deferred(tp: Any) -> st.SearchStrategy[Any]:
    """`_for_type(tp)`, built when first drawn from (a Struct may contain itself)."""
    return st.deferred(lambda: _for_type(tp))


def _structs(cls: type[Any]) -> st.SearchStrategy[Any]:
    if cls is DynamicEvent:  # its data is kept as wire forms, as in a snapshot
        return st.builds(
            DynamicEvent,
            type_id=st.text(min_size=1, max_size=16),
            data=st.dictionaries(st.text(max_size=8), _wire_values(), max_size=3),
        )
    fields = {field.name: _deferred(field.type) for field in msgspec.structs.fields(cls)}
    return st.builds(cls, **fields)


def events(event_type: type[E]) -> st.SearchStrategy[E]:
    """Instances of `event_type`, each field drawn from its annotation.

    Fields typed `Any` (or containers of `Any`) get `state_values()`; nested Structs, unions,
    literals, containers, `SessionRef` and `msgspec.Meta` bounds on numbers and lengths are
    followed; other types go to `hypothesis.strategies.from_type`. Every field is given, so
    default factories (a fresh `request_id`) are not used.
    """
    if not (isinstance(event_type, type) and issubclass(event_type, Event)):
        raise TypeError(f"events() takes an Event subclass, got {event_type!r}")
    strategy: st.SearchStrategy[E] = _structs(event_type)
    # Built-in events the engine reads must be valid to enter a run (finite cost, say).
    return strategy.filter(lambda event: builtin_event_problem(event) is None)


_NAMES = st.text(min_size=1, max_size=16)
_SECONDS = st.floats(min_value=0, max_value=1e12)
_COUNTS = st.integers(0, _INT64_MAX)


def _wire_forms() -> st.SearchStrategy[Any]:
    return state_values().map(lambda value: encode_value(value, key="generated"))


def _encoded_events() -> st.SearchStrategy[EncodedEvent]:
    return st.builds(
        EncodedEvent,
        type_id=_NAMES,
        payload=st.dictionaries(st.text(max_size=8), _wire_forms(), max_size=3),
    )


@st.composite
def _session_refs(draw: st.DrawFn) -> dict[str, SerializedRef]:
    keys = draw(st.lists(st.uuids().map(str), max_size=3, unique=True))
    return {
        key: SerializedRef(
            key=key,
            lifetime=draw(
                st.sampled_from([RefLifetime.UNTIL_RUN_END, RefLifetime.UNTIL_EXPLICIT_DROP])
            ),
            codec=draw(st.sampled_from(["pickle", "protocol"])),
            type_path=draw(_NAMES),
            data=draw(st.binary(max_size=16)).hex(),
        )
        for key in keys
    }


def snapshots() -> st.SearchStrategy[WorkflowSnapshot]:
    """Valid `WorkflowSnapshot`s of every shape, for codec and storage round-trip tests.

    Their state and event payloads are real wire forms of `state_values()`; event type ids,
    step names and session refs are arbitrary, so they are for encoding, storing and decoding,
    not for resuming.
    """
    encoded = _encoded_events()
    children = st.builds(
        ChildMemo,
        index=st.integers(0, 10),
        run_id=_NAMES,
        result=st.none() | encoded,
        snapshot=st.none() | st.binary(max_size=16),
    )
    return st.builds(
        WorkflowSnapshot,
        workflow_name=_NAMES,
        run_id=st.uuids().map(str),
        created_at=st.datetimes(timezones=st.just(dt.UTC)),
        status=st.sampled_from([RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.WAITING_FOR_INPUT]),
        state=st.dictionaries(st.text(max_size=8), _wire_forms(), max_size=4),
        pending_events=st.lists(
            st.builds(
                PendingEvent,
                event=encoded,
                source_step=st.none() | _NAMES,
                target_step=st.none() | _NAMES,
                seq=_COUNTS,
                attempt=st.integers(1, 10),
                children=st.lists(children, max_size=2).map(tuple),
            ),
            max_size=3,
        ),
        collect_buffers=st.dictionaries(_NAMES, st.lists(encoded, max_size=2), max_size=2),
        input_requests=st.lists(encoded, max_size=2),
        usage=st.builds(
            UsageTotals,
            prompt_tokens=_COUNTS,
            completion_tokens=_COUNTS,
            total_tokens=_COUNTS,
            cost_usd=st.floats(allow_nan=False, allow_infinity=False),
        ),
        history=st.lists(
            st.builds(
                HistoryEntry,
                sequence=st.integers(1, _INT64_MAX),
                kind=st.sampled_from(HistoryKind),
                timestamp=_SECONDS,
                step=st.none() | _NAMES,
                event_type=st.none() | _NAMES,
                attempt=st.none() | st.integers(1, 10),
                duration=st.none() | _SECONDS,
                detail=st.none() | st.text(),
            ),
            max_size=3,
        ),
        metadata=st.dictionaries(st.text(max_size=8), _wire_values(), max_size=3),
        session_refs=_session_refs(),
        active_time=_SECONDS,
        result=st.none() | encoded,
        input_responses=st.lists(encoded, max_size=2),
    )
