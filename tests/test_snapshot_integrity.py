"""Hostile snapshots: whatever the bytes, resume gives the right result or a SnapshotError.

Tampered snapshots (resealed with a correct checksum, as an attacker would) are checked
against the workflow; corrupt bytes are caught by the checksum; values that could not
survive a snapshot are refused where they enter the run.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings, strategies as st

import blazen_trio as bz

Raw = dict[str, Any]


class Item(bz.Event):
    n: int


class Done(bz.Event):
    n: int


class Other(bz.Event):
    pass


class Held:
    """A picklable object for a session ref."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Held)

    __hash__ = object.__hash__


def greeter() -> bz.Workflow:
    """start -> two Items -> `work` (5 s) -> `join` collects -> "Hello, <name>!"."""

    @bz.step
    async def fan(ctx: bz.Context, ev: bz.StartEvent) -> list[Item]:
        ctx.set("name", ev.data)
        ctx.refs.insert(Held(), lifetime=bz.RefLifetime.UNTIL_EXPLICIT_DROP)
        return [Item(n=0), Item(n=1)]

    @bz.step
    async def work(ev: Item) -> Done:
        await trio.sleep(5 * (ev.n + 1))
        return Done(n=ev.n)

    @bz.step
    async def join(ctx: bz.Context, ev: Done) -> bz.StopEvent | None:
        if ctx.collect_events(ev, [Done, Done]) is None:
            return None
        return bz.StopEvent(result=f"Hello, {ctx.get('name')}!")

    @bz.step
    async def unused(ev: Other) -> bz.StopEvent:
        return bz.StopEvent()

    return bz.Workflow("greeter", [fan, work, join, unused], history=True, validate=False)


async def paused_snapshot() -> bz.WorkflowSnapshot:
    """Paused at 7 s: Done(0) in join's buffer, Item(1) pending for `work`."""
    async with greeter().start("Ada") as handler:
        await trio.sleep(7)
        await handler.pause(cancel_in_flight=True)
        snapshot = await handler.snapshot()
        await handler.abort()
    return snapshot


def reseal(raw: Raw) -> bytes:
    """Encode an edited document with a correct checksum (an attacker's snapshot)."""
    body = msgspec.json.encode(raw)
    return msgspec.json.encode(
        {"version": raw.get("version", 2), "crc32": zlib.crc32(body), "snapshot": msgspec.Raw(body)}
    )


def document(snapshot: bz.WorkflowSnapshot) -> Raw:
    raw: Raw = msgspec.json.decode(snapshot.to_json())["snapshot"]
    return raw


async def resume_both_ways(data: bytes) -> Any:
    """Resume with `run` and with `start`; both must agree (a result or a SnapshotError)."""
    snapshot = bz.WorkflowSnapshot.from_json(data)
    result = (await greeter().run(resume=snapshot)).result
    async with greeter().start(resume=snapshot) as handler:
        assert (await handler.result()).result == result
    return result


async def test_an_untampered_snapshot_resumes(autojump_clock: trio.testing.MockClock) -> None:
    assert await resume_both_ways(reseal(document(await paused_snapshot()))) == "Hello, Ada!"


# Where a pending event's fields are in its array (`PendingEvent` is array-like).
_AT = {field.name: index for index, field in enumerate(msgspec.structs.fields(bz.PendingEvent))}


def _pending(raw: Raw, step: str) -> list[Any]:
    found: list[Any] = next(p for p in raw["pending_events"] if p[_AT["target_step"]] == step)
    return found


def _set_pending(field: str, value: Any) -> Callable[[Raw], None]:
    def change(raw: Raw) -> None:
        _pending(raw, "work")[_AT[field]] = value

    return change


def _set_type_id(raw: Raw) -> None:
    _pending(raw, "work")[_AT["event"]][0] = "x.Nope"  # an event is [type_id, payload]


TAMPERINGS: list[tuple[str, Callable[[Raw], None], str]] = [
    ("unknown type id", _set_type_id, "x.Nope"),
    (
        "retargeted to a step that does not accept it",
        _set_pending("target_step", "unused"),
        "does not accept",
    ),
    ("buffer of a missing step", lambda r: r["collect_buffers"].update(gone=[]), "'gone'"),
    ("work for a missing step", _set_pending("target_step", "x"), "'x'"),
    (
        "dropped refs not a list",
        lambda r: r["metadata"].update({"__blazen_dropped_session_refs": 5}),
        "list of str",
    ),
    ("attempt 0", _set_pending("attempt", 0), "attempt"),
    ("negative attempt", _set_pending("attempt", -(2**62)), "attempt"),
    ("usage count past 64 bits", lambda r: r["usage"].update(total_tokens=2**70), "total"),
    ("unknown ref lifetime", lambda r: _ref(r).update(lifetime="forever"), "lifetime"),
    ("unknown ref codec", lambda r: _ref(r).update(codec="json"), "codec"),
    ("ref under another key", lambda r: _ref(r).update(key="other"), "key"),
    ("ref data not base64", lambda r: _ref(r).update(data="!!"), "session ref"),
]


def _ref(raw: Raw) -> Raw:
    found: Raw = next(iter(raw["session_refs"].values()))
    return found


@pytest.mark.parametrize(
    ("tamper", "expected"), [(t, e) for _, t, e in TAMPERINGS], ids=[n for n, _, _ in TAMPERINGS]
)
async def test_a_tampered_snapshot_is_refused_naming_what_does_not_fit(
    autojump_clock: trio.testing.MockClock, tamper: Callable[[Raw], None], expected: str
) -> None:
    raw = document(await paused_snapshot())
    tamper(raw)
    with pytest.raises(bz.SnapshotError, match=expected):
        await resume_both_ways(reseal(raw))


async def test_an_input_request_with_a_list_for_an_id_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    raw = document(await paused_snapshot())
    request = bz.InputRequestEvent(prompt="?", request_id="r")
    wire = msgspec.json.decode(msgspec.json.encode(request))
    wire["request_id"] = ["not", "a", "str"]
    raw["input_requests"] = [["blazen.InputRequestEvent", wire]]
    with pytest.raises(bz.SnapshotError, match="request_id"):
        await resume_both_ways(reseal(raw))


async def test_an_inf_history_timestamp_is_refused_at_decode(
    autojump_clock: trio.testing.MockClock,
) -> None:
    snapshot = await paused_snapshot()
    raw = msgspec.to_builtins(snapshot)
    raw["history"][0]["timestamp"] = float("inf")
    body = msgspec.msgpack.encode(raw)
    data = msgspec.msgpack.encode(
        {"version": 2, "crc32": zlib.crc32(body), "snapshot": msgspec.Raw(body)}
    )
    with pytest.raises(bz.SnapshotError, match="timestamp"):
        bz.WorkflowSnapshot.from_bytes(data)


# -- values refused where they enter the run ------------------------------------------------


def _one_step(body: Callable[[bz.Context], Any]) -> bz.Workflow:
    @bz.step
    async def only(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent | bz.InputRequestEvent:
        return body(ctx)  # type: ignore[no-any-return]  # each test returns what it tests

    @bz.step
    async def answered(ev: bz.InputResponseEvent) -> bz.StopEvent:
        return bz.StopEvent()

    return bz.Workflow("one", [only, answered])


@pytest.mark.parametrize(
    "usage",
    [
        bz.UsageEvent(prompt_tokens=len("some text") / 4),  # type: ignore[arg-type]
        bz.UsageEvent(total_tokens=-1),
        bz.UsageEvent(total_tokens=2**64),
        bz.UsageEvent(cost_usd=float("nan")),
        bz.UsageEvent(model=5),  # type: ignore[arg-type]
    ],
)
async def test_malformed_usage_fails_the_step_that_emits_it(usage: bz.UsageEvent) -> None:
    def emit(ctx: bz.Context) -> bz.StopEvent:
        ctx.emit_usage(usage)
        return bz.StopEvent()

    with pytest.raises(bz.StepFailed) as caught:
        await _one_step(emit).run()
    assert isinstance(caught.value.__cause__, ValueError)
    assert "emit_usage" in str(caught.value.__cause__)


async def test_usage_totals_cannot_overflow_a_snapshot() -> None:
    def emit(ctx: bz.Context) -> bz.StopEvent:
        ctx.emit_usage(bz.UsageEvent(total_tokens=2**63 - 1))
        ctx.emit_usage(bz.UsageEvent(total_tokens=1))
        return bz.StopEvent()

    with pytest.raises(bz.StepFailed, match="emit_usage"):
        await _one_step(emit).run()


async def test_an_input_request_with_an_int_id_fails_the_step() -> None:
    def ask(ctx: bz.Context) -> bz.InputRequestEvent:
        return bz.InputRequestEvent(prompt="?", request_id=12345)  # type: ignore[arg-type]

    async with _one_step(ask).start() as handler:
        with pytest.raises(bz.StepFailed, match="request_id"):
            await handler.result()


async def test_an_error_text_with_lone_surrogates_still_snapshots(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[int] = []

    @bz.step(retry=bz.RetryPolicy(max_attempts=3, initial_delay=1))
    async def flaky(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise FileNotFoundError(os.fsdecode(b"/tmp/\xff"))
        await trio.sleep(10)
        return bz.StopEvent(result="ok")

    async with bz.Workflow("flaky", [flaky], history=True).start() as handler:
        await trio.sleep(5)
        await handler.pause(cancel_in_flight=True)
        snapshot = await handler.snapshot()
        await handler.abort()
    for data, decode in (
        (snapshot.to_bytes(), bz.WorkflowSnapshot.from_bytes),
        (snapshot.to_json(), bz.WorkflowSnapshot.from_json),
    ):
        back = decode(data)
        failed = [e for e in back.history if e.kind is bz.HistoryKind.STEP_FAILED]
        assert failed[0].detail is not None
        assert "\\udcff" in failed[0].detail


# -- the property: any corruption or tampering --------------------------------------------------

_SAMPLE: list[bytes] = []


def sample_bytes() -> bytes:
    """The paused greeter's snapshot as JSON, made once (a trio run of its own)."""
    if not _SAMPLE:
        snapshot = trio.run(paused_snapshot, clock=trio.testing.MockClock(autojump_threshold=0))
        _SAMPLE.append(snapshot.to_json())
    return _SAMPLE[0]


def outcome(data: bytes) -> Any:
    """The resumed result, or the SnapshotError class; anything else fails the property."""

    async def resume() -> Any:
        try:
            return await resume_both_ways(data)
        except bz.SnapshotError:
            return bz.SnapshotError

    return trio.run(resume, clock=trio.testing.MockClock(autojump_threshold=0))


@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
@settings(max_examples=60)
def test_a_bit_flip_resumes_exactly_or_is_refused(position: int, bit: int) -> None:
    data = bytearray(sample_bytes())
    data[position % len(data)] ^= 1 << bit
    assert outcome(bytes(data)) in ("Hello, Ada!", bz.SnapshotError)


@given(length=st.integers(min_value=0))
@settings(max_examples=30)
def test_a_truncation_is_refused(length: int) -> None:
    data = sample_bytes()
    assert outcome(data[: length % len(data)]) is bz.SnapshotError


# Structural edits an attacker can reseal; user data (state values, event payloads) is left
# alone: changing it legitimately changes the result.
_NOT_USER_DATA = ("state", "data", "metadata", "history")


def _is_event(node: Any) -> bool:
    """An encoded event, `[type_id, payload]` (no other part of a snapshot is a str and a
    dict): its payload is user data."""
    return type(node) is list and len(node) == 2 and type(node[0]) is str and type(node[1]) is dict


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if path and path[-1] in _NOT_USER_DATA:
        return []
    found = [path] if path else []
    if _is_event(node):
        found.append((*path, 0))
    elif isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*path, index))
    return found


_WRONG_TYPES = st.sampled_from([None, -7, 0, 2**65, 1.5, "x", [], {}, [1], {"a": 1}, True])


@given(data=st.data())
@settings(max_examples=60)
def test_a_resealed_structural_edit_resumes_exactly_or_is_refused(data: st.DataObject) -> None:
    raw = msgspec.json.decode(sample_bytes())["snapshot"]
    path = data.draw(st.sampled_from(_paths(raw)))
    parent = raw
    for part in path[:-1]:
        parent = parent[part]
    # Deleting a field is structural; deleting an entry keyed by a step or a ref is not.
    keyed_by_name = len(path) > 1 and path[-2] in ("collect_buffers", "session_refs")
    if data.draw(st.booleans()) and isinstance(parent, dict) and not keyed_by_name:
        del parent[path[-1]]
    else:
        replacement = data.draw(_WRONG_TYPES)
        if type(replacement) is type(parent[path[-1]]):
            return  # not a structural edit
        parent[path[-1]] = replacement
    assert outcome(reseal(raw)) in ("Hello, Ada!", bz.SnapshotError), path


class Base(bz.Event):
    n: int


class Sub(Base):
    """Never named by a step: it travels as a subclass of what the steps declare."""


async def test_an_undeclared_subclass_of_a_declared_type_is_retyped_on_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @bz.step
    async def emit(ev: bz.StartEvent) -> Base:
        return Sub(n=1)

    @bz.step
    async def take(ev: Base) -> bz.StopEvent:
        await trio.sleep(5)
        return bz.StopEvent(result=type(ev).__name__)

    wf = bz.Workflow("subclass", [emit, take])
    async with wf.start() as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        snapshot = bz.WorkflowSnapshot.from_bytes((await handler.snapshot()).to_bytes())
        await handler.abort()
    assert (await wf.run(resume=snapshot)).result == "Sub"
