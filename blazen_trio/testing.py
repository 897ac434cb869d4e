"""Tools to property-test your own workflows: pause/resume invariant checkers and strategies.

    from hypothesis import given
    from blazen_trio.testing import check_pause_resume, pause_plans

    @given(plan=pause_plans())
    def test_my_workflow_survives_pauses(plan):
        check_pause_resume(my_workflow, {"n": 3}, plan)

The checker runs your workflow once without interruption and once paused at the planned
virtual times (each pause in either mode, its snapshot round-tripped through bytes and resumed
in a fresh run, or resumed in place), and asserts both give the same result, the same final
state, the same multiset of committed step executions and (with `Workflow(history=True)`) the
same failed attempts. The workflow must be deterministic: the same input gives the same events
and state whatever the task interleaving (use order-insensitive fan-in, derive
`InputRequestEvent.request_id` from the input, and do not let concurrent steps
read-modify-write one state key: a cancelled attempt's write is left alone once another step
has overwritten it).

The strategies generate what a workflow's own property tests need: `state_values()` (values
`ctx.set` can hold that survive a snapshot), `events(MyEvent)` (instances of an event class,
fields drawn from their annotations) and `snapshots()` (valid `WorkflowSnapshot`s of every
shape). Needs hypothesis (`pip install blazen_trio[testing]`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import types
import typing
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import attrs
import msgspec
import trio
import trio.testing
from hypothesis import strategies as st

from ._broadcast import EventStream
from ._codec import encode_event, encode_value
from ._errors import RunFinished, UnknownInputRequest
from ._events import DynamicEvent, Event, InputRequestEvent, StreamLagged
from ._handler import WorkflowHandler
from ._history import HistoryEntry, HistoryKind
from ._refs import SessionRef
from ._run import WorkflowResult
from ._snapshot import EncodedEvent, PendingEvent, SerializedRef, UsageTotals, WorkflowSnapshot
from ._workflow import Workflow

Codec = Literal["msgpack", "json"]
Responder = Callable[[InputRequestEvent], Any]
Execution = tuple[str, bytes]
Failure = tuple[str | None, int | None, str | None]
E = TypeVar("E", bound=Event)

DEFAULT_TIME_LIMIT = 86_400.0
"""Virtual seconds a checked run may take before the checker calls it stuck."""

# =============================================================================================
# The pause/resume checker


@attrs.frozen
class PausePoint:
    """Wait `delay` virtual seconds and `checkpoints` scheduler turns, then pause.

    Then either resume in place (`in_place`) or snapshot, encode with `codec`, decode, and
    resume the snapshot in a fresh run.
    """

    delay: float = 0.0
    checkpoints: int = 0
    cancel_in_flight: bool = False
    in_place: bool = False
    codec: Codec = "msgpack"


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


@attrs.frozen
class RunRecord:
    """What a run produced, as the invariant checker compares it.

    `executions` counts committed step executions as `(step name, encoded input event)`;
    `failures` counts failed step attempts as `(step name, attempt, error text)`, read from
    the run's history (so empty unless `Workflow(history=True)`): with it, a retry count lost
    across a pause shows as extra failures. `resumes` is how many times the run was resumed
    from a snapshot.
    """

    result: Any
    state: dict[str, Any]
    executions: Counter[Execution]
    resumes: int = 0
    failures: Counter[Failure] = attrs.field(factory=Counter)


def _round_trip(snapshot: WorkflowSnapshot, codec: Codec) -> WorkflowSnapshot:
    if codec == "json":
        return WorkflowSnapshot.from_json(snapshot.to_json())
    return WorkflowSnapshot.from_bytes(snapshot.to_bytes())


async def _answer(handler: WorkflowHandler, request: InputRequestEvent, respond: Responder) -> bool:
    """Answer one request; False once the run has ended."""
    try:
        await handler.respond_to_input(request.request_id, respond(request))
    except UnknownInputRequest:
        pass  # answered already (seen twice: after a lag, say)
    except RunFinished:
        return False
    return True


async def _answer_requests(
    handler: WorkflowHandler, events: EventStream, respond: Responder
) -> None:
    """Play the human: answer every input request the run announces on `events`."""
    async with events:
        async for event in events:
            if isinstance(event, StreamLagged):
                # Announcements may be lost: answer whatever is still outstanding.
                for request in handler.pending_input_requests:
                    if not await _answer(handler, request, respond):
                        return
            elif isinstance(event, InputRequestEvent) and not await _answer(
                handler, event, respond
            ):
                return


class _Recorder:
    """Runs segments of one logical run and adds up what they committed."""

    def __init__(self, workflow: Workflow, respond: Responder | None) -> None:
        self.workflow = workflow
        self.respond = respond
        self.executions: Counter[Execution] = Counter()

    async def segment(
        self,
        input: Any,
        resume: WorkflowSnapshot | None,
        body: Callable[[WorkflowHandler], Any],
    ) -> Any:
        async with self.workflow.start(None if resume else input, resume=resume) as handler:
            run = handler._run
            run.commit_log = []
            # Subscribed here, before the first checkpoint, so no request can be missed; replay
            # brings the requests a resumed run announced while restoring.
            events = handler.stream_events(replay=True) if self.respond is not None else None
            try:
                async with trio.open_nursery() as nursery:
                    if events is not None and self.respond is not None:
                        nursery.start_soon(_answer_requests, handler, events, self.respond)
                    outcome = await body(handler)
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                # The run's error (or the responder's), not a group around it.
                if len(group.exceptions) == 1:
                    raise group.exceptions[0]  # noqa: B904  # its own cause stays attached
                raise
            finally:
                self.executions.update(
                    (step, msgspec.json.encode(encode_event(ev))) for step, ev in run.commit_log
                )
            return outcome

    def record(self, handler: WorkflowHandler, result: WorkflowResult, resumes: int) -> RunRecord:
        failures: Counter[Failure] = Counter(
            (entry.step, entry.attempt, entry.detail)
            for entry in result.history or ()
            if entry.kind is HistoryKind.STEP_FAILED
        )
        state = dict(handler._run.state.values)
        return RunRecord(result.result, state, self.executions, resumes, failures)


async def run_uninterrupted(
    workflow: Workflow, input: Any, *, respond: Responder | None = None
) -> RunRecord:
    """Run once, start to finish, recording the invariant's observables.

    `respond(request)` answers each `InputRequestEvent` (through `respond_to_input`); without
    it a workflow that asks for input never finishes.
    """
    recorder = _Recorder(workflow, respond)

    async def finish(handler: WorkflowHandler) -> RunRecord:
        result = await handler.result()
        return recorder.record(handler, result, 0)

    record: RunRecord = await recorder.segment(input, None, finish)
    return record


async def run_with_pauses(
    workflow: Workflow,
    input: Any,
    plan: list[PausePoint],
    *,
    respond: Responder | None = None,
) -> RunRecord:
    """Run with a pause at each point of `plan`; resume in place or from bytes.

    Each delay counts from the previous pause's resume (or from the start). A point reached
    after the run ended is skipped.
    """
    recorder = _Recorder(workflow, respond)
    snapshot: WorkflowSnapshot | None = None
    resumes = 0
    points = list(plan)

    async def pause_then_finish(handler: WorkflowHandler) -> RunRecord | WorkflowSnapshot:
        nonlocal resumes
        while points:
            point = points.pop(0)
            await trio.sleep(point.delay)
            for _ in range(point.checkpoints):
                await trio.lowlevel.checkpoint()
            try:
                await handler.pause(cancel_in_flight=point.cancel_in_flight)
                if point.in_place:
                    await handler.resume()
                    continue
                taken = _round_trip(await handler.snapshot(), point.codec)
            except RunFinished:
                break  # the run ended first: nothing left to pause
            resumes += 1
            await handler.abort()
            return taken
        result = await handler.result()
        return recorder.record(handler, result, resumes)

    while True:
        outcome = await recorder.segment(input, snapshot, pause_then_finish)
        if isinstance(outcome, RunRecord):
            return outcome
        snapshot = outcome


def _diff(what: str, expected: object, actual: object) -> str:
    return (
        f"{what} differs after pause/resume:\n"
        f"  uninterrupted: {expected!r}\n"
        f"  paused:        {actual!r}"
    )


def assert_same_run(expected: RunRecord, actual: RunRecord) -> None:
    """Result, final state, committed executions and failed attempts must be equal.

    Raises `AssertionError` saying what differs.
    """
    assert actual.result == expected.result, _diff("result", expected.result, actual.result)
    assert actual.state == expected.state, _diff("final state", expected.state, actual.state)
    assert actual.failures == expected.failures, _diff(
        "failed attempts", dict(expected.failures), dict(actual.failures)
    )
    missing = expected.executions - actual.executions
    extra = actual.executions - expected.executions
    assert not missing, f"committed step executions missing after pause/resume: {dict(missing)!r}"
    assert not extra, f"extra committed step executions after pause/resume: {dict(extra)!r}"


def check_pause_resume(
    workflow: Workflow,
    input: Any,
    plan: list[PausePoint],
    *,
    respond: Responder | None = None,
    time_limit: float = DEFAULT_TIME_LIMIT,
) -> RunRecord:
    """Assert the lossless-pause invariant for one plan, in virtual time; a sync call.

    Runs its own `trio.run` with a `MockClock` (autojump), so call it from a sync test (a
    hypothesis `@given` test, say), not from inside a Trio run. A run that takes more than
    `time_limit` virtual seconds (a deadlock, a request nobody answers) fails the check.
    Returns the paused run's record (e.g. to assert that it really was resumed).
    """

    async def both() -> RunRecord:
        with trio.move_on_after(time_limit) as limit:
            expected = await run_uninterrupted(workflow, input, respond=respond)
            actual = await run_with_pauses(workflow, input, plan, respond=respond)
        if limit.cancelled_caught:
            raise AssertionError(
                f"workflow {workflow.name!r} did not finish within {time_limit} virtual seconds "
                f"(plan {plan!r}): stuck, or waiting for input nobody gives?"
            )
        assert_same_run(expected, actual)
        return actual

    record: RunRecord = trio.run(both, clock=trio.testing.MockClock(autojump_threshold=0))
    return record


# =============================================================================================
# Strategies

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
    return strategy


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
            lifetime=draw(st.sampled_from(["until_run_end", "until_explicit_drop"])),
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
    return st.builds(
        WorkflowSnapshot,
        workflow_name=_NAMES,
        run_id=st.uuids().map(str),
        created_at=st.datetimes(timezones=st.just(dt.UTC)),
        status=st.sampled_from(["running", "paused", "waiting_for_input"]),
        state=st.dictionaries(st.text(max_size=8), _wire_forms(), max_size=4),
        pending_events=st.lists(
            st.builds(
                PendingEvent,
                event=encoded,
                source_step=st.none() | _NAMES,
                target_step=st.none() | _NAMES,
                attempt=st.integers(1, 10),
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
    )


__all__ = [
    "DEFAULT_TIME_LIMIT",
    "PausePoint",
    "RunRecord",
    "SampleAttrs",
    "SampleDataclass",
    "SampleShade",
    "SampleStruct",
    "assert_same_run",
    "check_pause_resume",
    "events",
    "pause_plans",
    "run_uninterrupted",
    "run_with_pauses",
    "snapshots",
    "state_values",
]
