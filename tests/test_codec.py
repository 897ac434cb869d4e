"""The value and event codec: exact round trips through a JSON-native wire form, clear errors;
journal records and queued answers, of this version and of the map layout before it."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import math
import pathlib
import pickle
import threading
import uuid
import zlib
from decimal import Decimal
from typing import Any

import _legacy_formats as legacy
import attrs
import msgspec
import pytest
from _legacy_formats import map_layout
from _snapshot_strategies import snapshots, supported_values, wire_forms
from hypothesis import given, strategies as st

from blazen_trio import (
    DynamicEvent,
    Event,
    InputRequestEvent,
    InputResponseEvent,
    SnapshotError,
    StartEvent,
    StopEvent,
    UsageEvent,
    event_type_id,
)
from blazen_trio._codec import (
    JOURNAL_VERSION,
    WorkflowSnapshot,
    decode_encoded_event,
    decode_event,
    decode_record,
    decode_value,
    encode_encoded_event,
    encode_event,
    encode_record,
    encode_value,
    encoded_event_from_builtins,
    known_event_types,
    to_array_layout,
)
from blazen_trio._records import (
    BufferOp,
    EncodedEvent,
    JournalRecord,
    PendingEvent,
    SessionRef,
)

# --- values defined at module level, so the codec can name their classes --------------------


class Mood(enum.StrEnum):
    HAPPY = "happy"
    SAD = "sad"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Perm(enum.IntFlag):
    READ = 1
    WRITE = 2


class Corner(enum.Enum):
    TOP_LEFT = (0, 0)


@dataclasses.dataclass
class Rich:
    when: dt.datetime
    ident: uuid.UUID
    mood: Mood
    blob: bytes
    tags: set[str]
    pair: tuple[int, str]
    by_id: dict[int, str]
    price: Decimal
    ratio: float


@attrs.frozen
class RichAttrs:
    day: dt.date
    wait: dt.timedelta
    path: pathlib.PurePosixPath
    level: Level
    inner: Rich | None = None


class RichStruct(msgspec.Struct, frozen=True):
    when: dt.datetime
    ident: uuid.UUID
    blob: bytes
    tags: frozenset[int]
    levels: list[Level]


class Shipped(Event, type_id="tests.codec.Shipped"):
    when: dt.datetime
    ident: uuid.UUID
    mood: Mood
    blob: bytes
    tags: set[str]
    pair: tuple[int, int]
    note: Any = None


class Carrying(Event, type_id="tests.codec.Carrying"):
    ref: SessionRef


class Strict(Event, type_id="tests.codec.Strict", forbid_unknown_fields=True):
    n: int


class Checked(Event, type_id="tests.codec.Checked"):
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must be >= 0")


class Holder(msgspec.Struct):
    item: RichStruct
    rich: RichAttrs


class Counter(msgspec.Struct):
    """Each construction counts: rebuilding from its fields does not give it back."""

    n: int

    def __post_init__(self) -> None:
        self.n += 1

    def __reduce__(self) -> tuple[Any, ...]:
        return (_counter_at, (self.n,))


def _counter_at(n: int) -> Counter:
    counter = Counter(n=0)
    counter.n = n
    return counter


class Plain:
    """No cattrs support (a plain __init__ with arguments), but picklable and comparable."""

    def __init__(self, a: int, b: list[int]) -> None:
        self.a = a
        self.b = b

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plain) and (self.a, self.b) == (other.a, other.b)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value


@dataclasses.dataclass
class LooseField:
    """cattrs would give back a list for the set in `anything`: caught, so pickled instead."""

    anything: Any


NOW = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
IDENT = uuid.UUID("12345678-1234-5678-1234-567812345678")
RICH = Rich(
    when=NOW,
    ident=IDENT,
    mood=Mood.SAD,
    blob=b"\x00\xff",
    tags={"a", "b"},
    pair=(1, "x"),
    by_id={1: "one", -2: "minus two"},
    price=Decimal("19.90"),
    ratio=0.25,
)
SHIPPED = Shipped(
    when=NOW,
    ident=IDENT,
    mood=Mood.HAPPY,
    blob=b"abc",
    tags={"x"},
    pair=(1, 2),
    note={"nested": (1, NOW, b"z")},
)


# --- helpers ----------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (so 1 is not True, () is not [])."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, set | frozenset):
        return {(type(x), x) for x in a} == {(type(y), y) for y in b}
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, dt.datetime | dt.time):
        return bool(a == b and a.tzinfo == b.tzinfo and a.tzname() == b.tzname())
    return bool(a == b)


def assert_json_native(wire: Any) -> None:
    """Only None, bool, signed 64-bit int, finite float, str, list, dict with str keys."""
    if wire is None or type(wire) in (bool, str):
        return
    if type(wire) is int:
        assert -(2**63) <= wire < 2**63
    elif type(wire) is float:
        assert math.isfinite(wire)
    elif type(wire) is list:
        for item in wire:
            assert_json_native(item)
    elif type(wire) is dict:
        for key, item in wire.items():
            assert type(key) is str
            assert_json_native(item)
    else:
        pytest.fail(f"{type(wire).__name__} in a wire form: {wire!r}")


def through_both_formats(wire: Any) -> Any:
    """The wire form after JSON and after MessagePack; both must give it back unchanged."""
    from_json = msgspec.json.decode(msgspec.json.encode(wire))
    from_msgpack = msgspec.msgpack.decode(msgspec.msgpack.encode(wire))
    assert same(from_json, wire)
    assert same(from_msgpack, wire)
    return from_json


def round_trip(value: Any) -> tuple[Any, Any]:
    """(wire form, value decoded after a trip through JSON)."""
    wire = encode_value(value, key="k")
    assert_json_native(wire)
    return wire, decode_value(through_both_formats(wire), key="k")


def tag_of(wire: Any) -> str | None:
    return wire.get("$blazen") if isinstance(wire, dict) else None


# --- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [None, True, False, 0, 2**63 - 1, -(2**63), 1.5, -0.0, "", "héllo ✓", [1, "a"]]
)
def test_json_native_values_are_their_own_wire_form(value: Any) -> None:
    wire, back = round_trip(value)
    assert same(wire, value)
    assert same(back, value)


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        (2**63, "int"),
        (-(2**63) - 1, "int"),
        pytest.param(10**5000, "int", id="past-the-str-digit-limit"),
        (float("inf"), "float"),
        (float("-inf"), "float"),
        (b"\x00\x01\xfe", "bytes"),
        (bytearray(b"xy"), "bytearray"),
        ((1, (2, "b"), ()), "tuple"),
        ({1, "a", (2, 3)}, "set"),
        (frozenset({b"x", 4.5}), "frozenset"),
        ({1: "a", (1, 2): [3], None: {"x": b"y"}}, "dict"),
        ({"$blazen": "tuple", "v": [1]}, "dict"),  # looks like a tag: must stay a dict
        ({"__blazen_session_ref__": "abc"}, "dict"),  # looks like a ref: must stay a dict
        ({Mood.HAPPY: 1}, "dict"),  # a str subclass as key is not a plain str key
        (dt.datetime(2024, 1, 2, 3, 4, 5, 6), "type"),
        (NOW, "type"),
        (dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=-3))), "type"),
        (dt.date(1999, 12, 31), "type"),
        (dt.time(23, 59, 59, 999999), "type"),
        (dt.timedelta(days=-3, seconds=5, microseconds=7), "type"),
        (IDENT, "type"),
        (Decimal("-0.0100"), "type"),
        (Decimal("Infinity"), "type"),
        (Mood.SAD, "type"),
        (Level.HIGH, "type"),
        (Perm.READ | Perm.WRITE, "type"),
        (Corner.TOP_LEFT, "type"),
        (pathlib.PurePosixPath("/a/b c"), "type"),
        (pathlib.Path("relative/file.txt"), "type"),
        (complex(1.5, -2), "type"),
        (RICH, "type"),
        (
            RichAttrs(
                dt.date(2020, 2, 29), dt.timedelta(1), pathlib.PurePosixPath("x"), Level.LOW, RICH
            ),
            "type",
        ),
        (RichStruct(NOW, IDENT, b"b", frozenset({1, 2}), [Level.LOW]), "struct"),
        (SHIPPED, "struct"),
        (StartEvent(data={"a": [1, 2]}), "struct"),
        (Plain(1, [2, 3]), "pickle"),
        (LooseField({1, 2}), "pickle"),
        (dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1), "CET")), "pickle"),
        ("lone \ud800 surrogate", "pickle"),
    ],
)
def test_supported_values_round_trip_exactly(value: Any, tag: str) -> None:
    wire, back = round_trip(value)
    assert tag_of(wire) == tag
    assert same(back, value)


def test_containers_nest_and_keep_their_types() -> None:
    value = {
        "list": [(1, 2), {3}, frozenset({4}), b"5", bytearray(b"6"), {7: (8,)}],
        "deep": [[[[{"k": [NOW, IDENT, Mood.HAPPY, RICH]}]]]],
        "dict": {"a": {"b": {"c": 2**70}}},
    }
    wire, back = round_trip(value)
    assert same(back, value)
    assert isinstance(wire, dict)
    assert set(wire) == {"list", "deep", "dict"}  # plain str-keyed dicts stay plain


def test_a_struct_keeps_the_types_inside_its_any_fields() -> None:
    value = StopEvent(result={"when": NOW, "pair": (1, 2), "blob": b"x", "ids": {IDENT}})
    wire, back = round_trip(value)
    assert tag_of(wire) == "struct"
    assert same(back.result, value.result)
    assert type(back) is StopEvent


def test_a_struct_holding_structs_in_a_typed_field_uses_msgspec_inside_cattrs() -> None:
    value = RichAttrs(dt.date(2020, 1, 1), dt.timedelta(0), pathlib.PurePosixPath("/"), Level.LOW)
    holder = Holder(item=RichStruct(NOW, IDENT, b"", frozenset({1}), []), rich=value)
    wire, back = round_trip(holder)
    assert tag_of(wire) == "struct"
    assert back == holder


def test_a_struct_its_class_does_not_rebuild_falls_back_to_pickle() -> None:
    wire, back = round_trip(Counter(n=1))  # __post_init__ bumps n: not rebuilt as it was
    assert tag_of(wire) == "pickle"
    assert back == Counter(n=1)


def test_nan_round_trips_as_nan() -> None:
    wire, back = round_trip(float("nan"))
    assert wire == {"$blazen": "float", "v": "nan"}
    assert math.isnan(back)
    _, nested = round_trip({"x": [float("nan"), 1.0]})
    assert math.isnan(nested["x"][0])
    assert same(nested["x"][1], 1.0)


def test_a_struct_holding_nan_round_trips() -> None:
    value = RichStruct(NOW, IDENT, b"", frozenset(), [])
    _, back = round_trip({"s": value, "nan": float("nan")})
    assert back["s"] == value
    assert math.isnan(back["nan"])


def test_a_timezone_name_survives() -> None:
    named = dt.timezone(dt.timedelta(hours=1), "CET")
    value = dt.datetime(2024, 1, 1, 12, tzinfo=named)
    _, back = round_trip(value)
    assert back.tzname() == "CET"
    assert back == value


def nested_lists(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_nesting_up_to_the_limit_stays_readable() -> None:
    wire, back = round_trip(nested_lists(101))  # the outermost list is at depth 0
    assert tag_of(wire) is None
    assert back == nested_lists(101)


def test_deeper_nesting_is_pickled_whole() -> None:
    value = {"ok": 1, "deep": nested_lists(300)}
    wire, back = round_trip(value)
    assert tag_of(wire) == "pickle"
    assert back == value


def test_a_cycle_is_kept_by_pickle() -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    wire, back = round_trip(cyclic)
    assert tag_of(wire) == "pickle"
    assert back[0] == 1
    assert back[1] is back


@pytest.mark.parametrize(
    ("value", "type_name", "where"),
    [
        (threading.Lock(), "lock", ""),
        (lambda: None, "function", ""),
        ([1, {"a": threading.Lock()}], "lock", "at [1]['a']"),
        ({"a": (1, [threading.Lock()])}, "lock", "at ['a'][1][0]"),
    ],
)
def test_a_value_nothing_can_encode_names_the_key(value: Any, type_name: str, where: str) -> None:
    with pytest.raises(SnapshotError) as info:
        encode_value(value, key="the_key")
    message = str(info.value)
    assert "'the_key'" in message
    assert type_name in message
    assert where in message


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ({"$blazen": "nope", "v": 1}, "unknown tag"),
        ({"$blazen": 5, "v": 1}, "unknown tag"),
        ({"$blazen": "tuple"}, "keys"),
        ({"$blazen": "tuple", "v": [1], "extra": 2}, "keys"),
        ({"$blazen": "tuple", "v": "abc"}, "list"),
        ({"$blazen": "set", "v": [[1]]}, "unhashable"),
        ({"$blazen": "dict", "v": [[1]]}, "bad dict"),
        ({"$blazen": "dict", "v": [[[1], 2]]}, "bad dict"),
        ({"$blazen": "bytes", "v": "not base64!"}, "base64"),
        ({"$blazen": "bytearray", "v": 12}, "base64"),
        ({"$blazen": "int", "v": "0xzz"}, "bad int"),
        ({"$blazen": "int", "v": 5}, "bad int"),
        ({"$blazen": "float", "v": "1.5"}, "bad float"),
        ({"$blazen": "type", "t": "no_such_module_blazen:Thing", "v": 1}, "cannot import"),
        ({"$blazen": "type", "t": "uuid:NoSuchClass", "v": 1}, "cannot import"),
        ({"$blazen": "type", "t": "no colon", "v": 1}, "cannot import"),
        ({"$blazen": "type", "t": "os:path", "v": 1}, "not a class"),
        ({"$blazen": "type", "t": 7, "v": 1}, "not a class"),
        ({"$blazen": "type", "t": "uuid:UUID", "v": "not-a-uuid"}, "cannot rebuild"),
        (
            {"$blazen": "type", "t": "uuid:UUID", "v": {"$blazen": "pickle", "t": "x", "v": ""}},
            "inside the form",
        ),
        ({"$blazen": "struct", "t": "uuid:UUID", "v": {}}, "not a msgspec Struct"),
        ({"$blazen": "struct", "t": f"{__name__}:Checked", "v": [1]}, "dict of fields"),
        ({"$blazen": "struct", "t": f"{__name__}:Checked", "v": {}}, "cannot rebuild"),
        ({"$blazen": "struct", "t": f"{__name__}:Checked", "v": {"n": b"x"}}, "at .n"),
        ({"$blazen": "pickle", "t": "x", "v": _b64(b"not a pickle")}, "cannot unpickle"),
        ({"$blazen": "pickle", "t": "x", "v": "%%%"}, "base64"),
        ({"__blazen_session_ref__": 5}, "session ref"),
        ({"__blazen_session_ref__": "k", "other": 1}, "session ref"),
        (b"raw bytes", "bytes is not part of a wire form"),
        ((1, 2), "tuple is not part of a wire form"),
        ({1: "int key"}, "dict key"),
        ([1, {"a": {"$blazen": "nope"}}], "at [1]['a']"),
    ],
)
def test_a_bad_wire_form_raises_snapshot_error_naming_the_key(wire: Any, expected: str) -> None:
    with pytest.raises(SnapshotError) as info:
        decode_value(wire, key="the_key")
    assert "'the_key'" in str(info.value)
    assert expected in str(info.value)


def test_pickle_is_the_fallback_and_is_checked_to_load() -> None:
    wire = encode_value(Plain(1, [2]), key="k")
    assert isinstance(wire, dict)
    assert wire["t"] == f"{__name__}:Plain"
    assert isinstance(pickle.loads(base64.b64decode(wire["v"])), Plain)


def test_a_local_class_cannot_be_named_so_it_needs_pickle() -> None:
    @dataclasses.dataclass
    class Local:
        n: int

    with pytest.raises(SnapshotError, match=r"'loc'.*Local"):
        encode_value(Local(1), key="loc")


@given(supported_values)
def test_decode_inverts_encode(value: Any) -> None:
    wire = encode_value(value, key="k")
    assert_json_native(wire)
    assert same(decode_value(through_both_formats(wire), key="k"), value)


@given(wire_forms)
def test_wire_forms_are_stable_under_reencoding(wire: Any) -> None:
    assert_json_native(wire)
    assert same(encode_value(decode_value(wire, key="k"), key="k"), wire)


# --- session refs -----------------------------------------------------------------------------


def test_a_session_ref_has_its_documented_wire_form() -> None:
    ref = SessionRef(key="5f0c")
    wire = encode_value(ref, key="r")
    assert wire == {"__blazen_session_ref__": "5f0c"}
    assert decode_value(through_both_formats(wire), key="r") == ref
    _, back = round_trip({"refs": [ref, ref]})
    assert back == {"refs": [ref, ref]}


def test_a_session_ref_travels_in_events() -> None:
    event = Carrying(ref=SessionRef(key="abc"))
    encoded = encode_event(event)
    assert encoded.payload == {"ref": {"__blazen_session_ref__": "abc"}}
    assert decode_event(encoded, known_event_types([Carrying])) == event
    _, back = round_trip(event)  # as a state value: through cattrs and msgspec
    assert back == event


# --- events -----------------------------------------------------------------------------------

KNOWN = known_event_types([Shipped, Carrying, Strict, Checked])


def test_known_event_types_holds_the_builtins_and_the_given_types() -> None:
    assert KNOWN["tests.codec.Shipped"] is Shipped
    for builtin in (StartEvent, StopEvent, InputRequestEvent, InputResponseEvent, UsageEvent):
        assert KNOWN[event_type_id(builtin)] is builtin
    assert event_type_id(DynamicEvent) not in KNOWN


@pytest.mark.parametrize(
    "event",
    [
        SHIPPED,
        StartEvent(data={"when": NOW, "ids": {IDENT}, "raw": b"x"}),
        StopEvent(result=[RICH, (1, 2)]),
        InputRequestEvent(prompt="name?", request_id="r1", metadata={"n": 2**80}),
        InputResponseEvent(request_id="r1", response=Mood.HAPPY),
        UsageEvent(provider="p", model="m", prompt_tokens=3, cost_usd=0.5),
        Carrying(ref=SessionRef(key="x")),
    ],
)
def test_known_events_round_trip(event: Event) -> None:
    encoded = encode_event(event)
    assert encoded.type_id == event_type_id(event)
    assert list(encoded.payload) == list(type(event).__struct_fields__)
    assert_json_native(encoded.payload)
    for codec in (msgspec.json, msgspec.msgpack):
        encoded = codec.decode(codec.encode(encoded), type=EncodedEvent)
    back = decode_event(encoded, KNOWN)
    assert type(back) is type(event)
    assert back == event


def test_an_unknown_type_decodes_to_a_dynamic_event() -> None:
    encoded = encode_event(SHIPPED)
    dynamic = decode_event(encoded, known_event_types([]))
    assert isinstance(dynamic, DynamicEvent)
    assert dynamic.type_id == "tests.codec.Shipped"
    assert dynamic.data == encoded.payload


def test_a_dynamic_event_is_retyped_when_the_type_is_known() -> None:
    dynamic = decode_event(encode_event(SHIPPED), known_event_types([]))
    again = encode_event(dynamic)
    assert again == encode_event(SHIPPED)  # under its own carried type id, payload as is
    assert decode_event(again, KNOWN) == SHIPPED


def test_a_dynamic_event_with_non_wire_data_is_refused() -> None:
    with pytest.raises(SnapshotError, match=r"'some\.type'.*float nan at \['x'\]"):
        encode_event(DynamicEvent(type_id="some.type", data={"x": float("nan")}))


def test_an_unencodable_field_names_the_event_and_the_field() -> None:
    with pytest.raises(SnapshotError, match=r"field 'data' of event 'blazen\.StartEvent'"):
        encode_event(StartEvent(data=threading.Lock()))


def test_unknown_payload_fields_are_ignored_unless_the_class_forbids_them() -> None:
    encoded = EncodedEvent(type_id="tests.codec.Checked", payload={"n": 1, "gone": 2})
    assert decode_event(encoded, KNOWN) == Checked(n=1)
    strict = EncodedEvent(type_id="tests.codec.Strict", payload={"n": 1, "gone": 2})
    with pytest.raises(SnapshotError, match=r"'tests\.codec\.Strict'.*gone"):
        decode_event(strict, KNOWN)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({}, "n"),  # a required field is missing
        ({"n": -1}, "n must be >= 0"),  # the class's own check
        ({"n": {"$blazen": "bogus"}}, "field 'n'"),
    ],
)
def test_an_event_that_cannot_be_rebuilt_names_its_type_id(
    payload: dict[str, Any], expected: str
) -> None:
    with pytest.raises(SnapshotError) as info:
        decode_event(EncodedEvent(type_id="tests.codec.Checked", payload=payload), KNOWN)
    assert "'tests.codec.Checked'" in str(info.value)
    assert expected in str(info.value)


@given(st.dictionaries(st.text(max_size=5), supported_values, max_size=3))
def test_any_event_data_round_trips(data: dict[str, Any]) -> None:
    event = StartEvent(data=data)
    encoded = msgspec.json.decode(msgspec.json.encode(encode_event(event)), type=EncodedEvent)
    back = decode_event(encoded, KNOWN)
    assert isinstance(back, StartEvent)
    assert same(back.data, data)


@pytest.mark.parametrize("bad", [b"raw", msgspec.msgpack.Ext(1, b"x")])
def test_a_value_that_is_not_a_wire_form_fails_its_decoding_naming_the_key(bad: Any) -> None:
    """Decoding a snapshot checks structure only; each value is checked when resumed, here."""
    with pytest.raises(SnapshotError, match="key 'x'"):
        decode_value(bad, key="x")


# --- journal records and queued answers: this version's layout, and the maps before it -------


def sealed_record(version: int, body: bytes) -> bytes:
    """A journal record as `encode_record` seals it, claiming `version`."""
    return msgspec.msgpack.encode(
        {"version": version, "crc32": zlib.crc32(body), "record": msgspec.Raw(body)}
    )


def record_of(snapshot: WorkflowSnapshot) -> JournalRecord:
    """A journal record holding every part of `snapshot` that has events in it."""
    memos = [memo for item in snapshot.pending_events for memo in item.children]
    return JournalRecord(
        seq=1,
        at=1.5,
        routed=snapshot.pending_events,
        requests=snapshot.input_requests,
        response=snapshot.input_responses[0] if snapshot.input_responses else None,
        child=memos[0] if memos else None,
        buffers=[
            BufferOp(step=step, event=event, taken=index % 2 == 1)
            for step, events in snapshot.collect_buffers.items()
            for index, event in enumerate(events)
        ],
        result=snapshot.result,
        state_set=snapshot.state,
        history=snapshot.history,
        refs_inserted=snapshot.session_refs,
        usage=snapshot.usage,
    )


@given(snapshots)
def test_any_record_round_trips_and_reads_from_the_version_1_map_layout(
    snapshot: WorkflowSnapshot,
) -> None:
    record = record_of(snapshot)
    assert decode_record(encode_record(record)) == record
    version_1 = sealed_record(1, msgspec.msgpack.encode(map_layout(record)))
    assert decode_record(version_1) == record


def test_records_written_by_the_version_1_release_decode_to_the_same_records() -> None:
    """Bytes written by that release (tests/formats), not by a test's idea of them."""
    stored = msgspec.msgpack.decode((legacy.FORMATS / "journal_v1.msgpack").read_bytes())
    assert {msgspec.msgpack.decode(data)["version"] for data in stored} == {1}
    assert [decode_record(data) for data in stored] == legacy.records()


def test_records_are_written_at_version_2_with_array_events() -> None:
    assert JOURNAL_VERSION == 2
    record = legacy.records()[0]
    sealed = msgspec.msgpack.decode(encode_record(record))
    assert sealed["version"] == 2
    routed = sealed["record"]["routed"]
    assert routed[0] == [["tests.Item", {"n": 4}], "parse", "fan", 3, 1, []]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (sealed_record(3, msgspec.msgpack.encode({"seq": 1, "at": 0.0})), "version 3 is newer"),
        (sealed_record(0, msgspec.msgpack.encode({"seq": 1, "at": 0.0})), "0 never existed"),
        (sealed_record(2, msgspec.msgpack.encode({"seq": 0, "at": 0.0})), "`$.seq`"),
        (
            sealed_record(2, msgspec.msgpack.encode({"seq": 1, "at": 0.0, "routed": [[["t"]]]})),
            "at least length 2, got 1 - at `$.routed[0].event`",
        ),
        (
            sealed_record(1, msgspec.msgpack.encode({"seq": 1, "at": 0.0, "routed": [{}]})),
            "PendingEvent: required field 'event' is missing",
        ),
        (encode_record(legacy.records()[0])[:-1], "not a journal record"),
        (encode_record(legacy.records()[0])[:-2] + b"xx", "CRC-32 does not match"),
    ],
    ids=["newer", "version 0", "bad field", "short array", "v1 missing field", "cut", "corrupt"],
)
def test_a_record_that_cannot_be_read_is_refused_saying_why(data: bytes, expected: str) -> None:
    with pytest.raises(SnapshotError) as info:
        decode_record(data)
    assert expected in str(info.value)


def test_a_queued_answer_of_the_release_before_decodes_and_new_ones_are_arrays() -> None:
    old = (legacy.FORMATS / "answer_v1.msgpack").read_bytes()
    assert isinstance(msgspec.msgpack.decode(old), dict)
    assert decode_encoded_event(old) == legacy.ANSWER
    new = encode_encoded_event(legacy.ANSWER)
    assert isinstance(msgspec.msgpack.decode(new), list)
    assert decode_encoded_event(new) == legacy.ANSWER


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "not an encoded event"),
        (msgspec.msgpack.encode({"payload": {}}), "required field 'type_id' is missing"),
        (msgspec.msgpack.encode([1, {}]), "Expected `str`, got `int` - at `$.type_id`"),
    ],
)
def test_bytes_that_are_not_an_encoded_event_are_refused(data: bytes, expected: str) -> None:
    with pytest.raises(SnapshotError, match="not an encoded event") as info:
        decode_encoded_event(data)
    assert expected in str(info.value)


def test_an_encoded_event_reads_from_builtins_of_either_layout() -> None:
    event = EncodedEvent(type_id="t", payload={"a": [1]})
    assert encoded_event_from_builtins(msgspec.to_builtins(event)) == event
    assert encoded_event_from_builtins({"type_id": "t", "payload": {"a": [1]}}) == event
    with pytest.raises(SnapshotError, match="not an encoded event"):
        encoded_event_from_builtins("t")


def test_the_layout_upgrade_follows_the_type_and_leaves_everything_else_alone() -> None:
    upgrade = to_array_layout(dict[str, list[PendingEvent | None]])
    not_an_event = {"type_id": "x", "payload": {}}  # inside a payload (typed Any): user data
    raw = {"a": [{"event": {"type_id": "t", "payload": not_an_event}, "seq": 2}, None, [1]]}
    event = ["t", not_an_event]
    as_json = msgspec.json.decode(msgspec.json.encode(upgrade(raw)))
    assert as_json == {"a": [[event, None, None, 2, 1, []], None, [1]]}
    assert to_array_layout(int)(raw) is raw


def test_a_union_of_two_types_a_map_could_belong_to_cannot_be_upgraded() -> None:
    with pytest.raises(TypeError, match="cannot tell which member"):
        to_array_layout(EncodedEvent | dict[str, EncodedEvent])
