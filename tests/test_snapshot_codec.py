"""WorkflowSnapshot bytes: exact round trips in both formats, and SnapshotError for bad input."""

from __future__ import annotations

import datetime as dt
import math
import zlib
from collections.abc import Callable
from typing import Any

import _legacy_formats as legacy
import msgspec
import pytest
from _legacy_formats import map_layout
from _snapshot_strategies import snapshots
from hypothesis import given, strategies as st

from blazen_trio import DynamicEvent, SnapshotError, StartEvent
from blazen_trio._codec import (
    DEFAULT_MIGRATIONS,
    SNAPSHOT_VERSION,
    WorkflowSnapshot,
    check_workflow_name,
    decode_event,
    decode_value,
    encode_event,
    encode_value,
)
from blazen_trio._journal import fold
from blazen_trio._records import (
    ChildMemo,
    EncodedEvent,
    HistoryEntry,
    HistoryKind,
    PendingEvent,
    RefLifetime,
    SerializedRef,
    UsageTotals,
)

Raw = dict[str, Any]
Decode = Callable[..., WorkflowSnapshot]
CREATED = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)


def make_snapshot(**changes: Any) -> WorkflowSnapshot:
    fields: dict[str, Any] = {
        "workflow_name": "greeter",
        "run_id": "7d6c1a52-5f0e-4c3c-9d53-0d6f1f3c2a10",
        "created_at": CREATED,
        "status": "paused",
        "state": {
            "count": encode_value(3, key="count"),
            "seen": encode_value({"a", "b"}, key="seen"),
            "when": encode_value(CREATED, key="when"),
            "big": encode_value(2**80, key="big"),
        },
        "pending_events": [
            PendingEvent(
                event=encode_event(StartEvent(data={"name": "Ada", "tags": ("x", "y")})),
                source_step=None,
                target_step="parse",
                attempt=2,
            )
        ],
        "collect_buffers": {"join": [encode_event(StartEvent(data=1))]},
        "input_requests": [
            EncodedEvent(type_id="blazen.InputRequestEvent", payload={"prompt": "?"})
        ],
        "usage": UsageTotals(prompt_tokens=10, completion_tokens=5, total_tokens=15, cost_usd=0.25),
        "history": [
            HistoryEntry(sequence=1, kind=HistoryKind.RUN_STARTED, timestamp=1.7e9),
            HistoryEntry(
                sequence=2,
                kind=HistoryKind.STEP_COMPLETED,
                timestamp=1.7e9 + 1,
                step="parse",
                duration=0.5,
            ),
        ],
        "metadata": {"note": "hello", "keys": ["a", "b"]},
        "session_refs": {
            "k1": SerializedRef(
                key="k1",
                lifetime=RefLifetime.UNTIL_RUN_END,
                codec="pickle",
                type_path="m:C",
                data="AAEC",
            )
        },
        "active_time": 12.5,
    }
    fields.update(changes)
    return WorkflowSnapshot(**fields)


SAMPLE = make_snapshot()


def sealed(encode: Callable[[Any], bytes], *, binary: bool) -> Callable[[Any], bytes]:
    """Encode a raw document as `to_bytes` / `to_json` would: sealed with the CRC-32 of its
    bytes, unless it claims to be a version 0 or 1 document (those were written bare); a
    `binary` format seals a version 3 document as a bin, earlier ones embedded."""

    def seal(raw: Any) -> bytes:
        version = raw.get("version") if isinstance(raw, dict) else None
        if not isinstance(raw, dict) or (type(version) is int and version < 2):
            return encode(raw)
        body = encode(raw)
        as_bin = binary and type(version) is int and version >= 3
        document = body if as_bin else msgspec.Raw(body)
        return encode({"version": version, "crc32": zlib.crc32(body), "snapshot": document})

    return seal


msgpack_sealed = sealed(msgspec.msgpack.encode, binary=True)
json_sealed = sealed(msgspec.json.encode, binary=False)
FORMATS: list[tuple[str, Callable[[Any], bytes], Decode]] = [
    ("msgpack", msgpack_sealed, WorkflowSnapshot.from_bytes),
    ("json", json_sealed, WorkflowSnapshot.from_json),
]
by_format = pytest.mark.parametrize(
    ("encode", "decode"), [(enc, dec) for _, enc, dec in FORMATS], ids=[f for f, _, _ in FORMATS]
)


def raw_sample() -> Raw:
    """SAMPLE as the plain builtins the decoders see first."""
    raw: Raw = msgspec.to_builtins(SAMPLE)
    return raw


# --- round trips ------------------------------------------------------------------------------


@given(snapshots)
def test_msgpack_round_trip_is_exact(snapshot: WorkflowSnapshot) -> None:
    assert WorkflowSnapshot.from_bytes(snapshot.to_bytes()) == snapshot


@given(snapshots)
def test_json_round_trip_is_exact(snapshot: WorkflowSnapshot) -> None:
    assert WorkflowSnapshot.from_json(snapshot.to_json()) == snapshot


@given(snapshots)
def test_generated_state_and_events_decode(snapshot: WorkflowSnapshot) -> None:
    for key, wire in snapshot.state.items():
        decode_value(wire, key=key)
    for pending in snapshot.pending_events:
        dynamic = decode_event(pending.event, {})
        assert isinstance(dynamic, DynamicEvent)
        assert dynamic.data == pending.event.payload


def test_the_sample_round_trips_and_its_contents_decode() -> None:
    for back in (
        WorkflowSnapshot.from_bytes(SAMPLE.to_bytes()),
        WorkflowSnapshot.from_json(SAMPLE.to_json()),
        WorkflowSnapshot.from_json(SAMPLE.to_json().decode()),  # str is fine for JSON
        WorkflowSnapshot.from_bytes(bytearray(SAMPLE.to_bytes())),
        WorkflowSnapshot.from_bytes(memoryview(SAMPLE.to_bytes())),
    ):
        assert back == SAMPLE
        assert back.created_at.utcoffset() == dt.timedelta(0)
        assert decode_value(back.state["seen"], key="seen") == {"a", "b"}
        assert decode_value(back.state["big"], key="big") == 2**80
        event = decode_event(back.pending_events[0].event, {"blazen.StartEvent": StartEvent})
        assert event == StartEvent(data={"name": "Ada", "tags": ("x", "y")})


def test_pending_events_are_arrays_of_their_fields_in_order() -> None:
    """No field names per pending event: the fields in declaration order, the usually
    defaulted ones last."""
    event = EncodedEvent(type_id="blazen.StartEvent", payload={})
    memo = ChildMemo(index=0, run_id="c", result=event)
    pending = [
        PendingEvent(event=event, source_step="a", target_step="b", seq=1),
        PendingEvent(event=event, seq=2, attempt=3, children=(memo,)),
    ]
    snapshot = msgspec.structs.replace(SAMPLE, pending_events=pending)
    raw = msgspec.json.decode(snapshot.to_json())["snapshot"]["pending_events"]
    start = ["blazen.StartEvent", {}]
    assert raw == [
        [start, "a", "b", 1, 1, []],
        [start, None, None, 2, 3, [[0, "c", start, None]]],
    ]
    for back in (
        WorkflowSnapshot.from_bytes(snapshot.to_bytes()),
        WorkflowSnapshot.from_json(snapshot.to_json()),
    ):
        assert back.pending_events == pending


@by_format
def test_a_shorter_array_takes_the_defaults_of_its_missing_last_fields(
    encode: Callable[[Any], bytes], decode: Decode
) -> None:
    """Why a field added later must go last, with a default: arrays written before it
    still decode."""
    raw = raw_sample()
    raw["pending_events"] = [[["blazen.StartEvent", {}], "a"], [["blazen.StartEvent", {}]]]
    back = decode(encode(raw))
    event = EncodedEvent(type_id="blazen.StartEvent", payload={})
    assert back.pending_events == [
        PendingEvent(event=event, source_step="a"),
        PendingEvent(event=event),
    ]
    assert back.pending_events[1].children == ()


def test_deeply_nested_state_still_round_trips() -> None:
    deep: Any = "leaf"
    for _ in range(100):
        deep = (deep, {1: [deep]}) if isinstance(deep, str) else ({1: deep},)
    snapshot = make_snapshot(state={"deep": encode_value(deep, key="deep")})
    for back in (
        WorkflowSnapshot.from_bytes(snapshot.to_bytes()),
        WorkflowSnapshot.from_json(snapshot.to_json()),
    ):
        assert back == snapshot
        assert decode_value(back.state["deep"], key="deep") == deep


def test_a_snapshot_without_a_version_is_read_as_version_1() -> None:
    raw = map_layout(SAMPLE)  # version 1 wrote maps; `version` is left out at its default
    assert "version" not in raw
    assert WorkflowSnapshot.from_json(msgspec.json.encode(raw)) == SAMPLE
    assert WorkflowSnapshot.from_bytes(msgspec.msgpack.encode(raw)) == SAMPLE


# --- bad input --------------------------------------------------------------------------------


@by_format
def test_empty_input_is_refused(encode: Callable[[Any], bytes], decode: Decode) -> None:
    with pytest.raises(SnapshotError):
        decode(b"")


def test_every_truncation_is_refused() -> None:
    for data, decode in (
        (SAMPLE.to_bytes(), WorkflowSnapshot.from_bytes),
        (SAMPLE.to_json(), WorkflowSnapshot.from_json),
    ):
        for length in range(len(data)):
            with pytest.raises(SnapshotError):
                decode(data[:length])


@given(st.binary())
def test_random_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        WorkflowSnapshot.from_bytes(data)
    with pytest.raises(SnapshotError):
        WorkflowSnapshot.from_json(data)


@given(st.binary(min_size=1), st.integers(min_value=0))
def test_corrupted_bytes_are_refused_or_decode_to_a_valid_snapshot(
    noise: bytes, position: int
) -> None:
    for data, decode in (
        (SAMPLE.to_bytes(), WorkflowSnapshot.from_bytes),
        (SAMPLE.to_json(), WorkflowSnapshot.from_json),
    ):
        at = position % len(data)
        corrupted = data[:at] + noise + data[at + len(noise) :]
        try:
            snapshot = decode(corrupted)
        except SnapshotError:
            continue
        assert isinstance(snapshot, WorkflowSnapshot)  # a lucky byte flip can still be valid


def _set(path: tuple[str | int, ...], value: Any) -> Callable[[Raw], None]:
    def change(raw: Raw) -> None:
        target: Any = raw
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return change


def _delete(name: str) -> Callable[[Raw], None]:
    def change(raw: Raw) -> None:
        del raw[name]

    return change


@by_format
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_set(("run_id",), 5), "run_id"),
        (_set(("workflow_name",), None), "workflow_name"),
        (_delete("workflow_name"), "workflow_name"),
        (_delete("state"), "state"),
        (_set(("pending_events",), "x"), "pending_events"),
        (_set(("pending_events", 0, 4), "2"), "pending_events[0].attempt"),
        (_set(("pending_events", 0, 0), ["x"]), "length 2, got 1 - at `$.pending_events[0].event`"),
        (_set(("pending_events", 0, 0), {"type_id": "x", "payload": {}}), "got `object` - at `$"),
        (_set(("created_at",), "not a date"), "created_at"),
        (_set(("created_at",), "2024-01-01T00:00:00"), "created_at"),
        (_set(("created_at",), "2024-01-01T00:00:00+02:00"), "UTC-aware"),
        (_set(("state",), [1, 2]), "state"),
        (_set(("state", "x"), {"$blazen": "int", "v": 2**63}), "int outside signed 64-bit"),
        (_set(("usage", "prompt_tokens"), "ten"), "prompt_tokens"),
        (_set(("collect_buffers",), {"join": [1]}), "collect_buffers"),
        (_set(("history", 0, "kind"), "no_such_kind"), "kind"),
        (_set(("session_refs", "k1"), {}), "session_refs"),
        (_set(("active_time",), -1.0), "active_time"),
        (_set(("version",), "1"), "version must be an int"),
        (_set(("version",), True), "version must be an int"),
        (_set(("version",), 4), "snapshot version 4 is newer than this blazen_trio supports (3)"),
        (_set(("version",), 0), "no migration from version 0 to 1"),
    ],
)
def test_a_wrong_field_is_refused(
    encode: Callable[[Any], bytes],
    decode: Decode,
    change: Callable[[Raw], None],
    expected: str,
) -> None:
    raw = raw_sample()
    change(raw)
    with pytest.raises(SnapshotError) as info:
        decode(encode(raw)).validate()  # structure at decode, values at the latest here
    assert expected in str(info.value)


@by_format
@pytest.mark.parametrize("top", [[1, 2], "snapshot", 5, None])
def test_a_top_level_that_is_not_an_object_is_refused(
    encode: Callable[[Any], bytes], decode: Decode, top: Any
) -> None:
    with pytest.raises(SnapshotError, match=r"not a (JSON|MessagePack) snapshot") as info:
        decode(encode(top))
    assert isinstance(info.value.__cause__, msgspec.MsgspecError)


def test_msgpack_only_values_in_wire_fields_are_refused() -> None:
    for bad in (float("nan"), float("inf"), b"raw", 2**64 - 1, msgspec.msgpack.Ext(1, b"x")):
        raw = raw_sample()
        raw["state"]["x"] = bad
        decoded = WorkflowSnapshot.from_bytes(msgpack_sealed(raw))
        with pytest.raises(SnapshotError, match=r"state is not a wire form .*\['x'\]"):
            decoded.validate()


def test_nesting_too_deep_for_the_decoder_is_refused() -> None:
    depth = 5000
    nested = b"[" * depth + b"]" * depth
    with pytest.raises(SnapshotError):
        WorkflowSnapshot.from_json(b'{"state": {"x": ' + nested + b"}}")
    with pytest.raises(SnapshotError):
        WorkflowSnapshot.from_bytes(b"\x81\xa5state\x81\xa1x" + b"\x91" * depth + b"\x90")


@pytest.mark.parametrize("data", ["snapshot", None, 12, 1.5, ["a"], {"a": 1}])
def test_a_non_bytes_argument_is_refused(data: Any) -> None:
    with pytest.raises(SnapshotError, match="expects bytes"):
        WorkflowSnapshot.from_bytes(data)
    if not isinstance(data, str):  # from_json takes str as well
        with pytest.raises(SnapshotError, match="expects bytes or str"):
            WorkflowSnapshot.from_json(data)


def test_each_format_refuses_the_other() -> None:
    with pytest.raises(SnapshotError, match="MessagePack"):
        WorkflowSnapshot.from_bytes(SAMPLE.to_json())
    with pytest.raises(SnapshotError, match="JSON"):
        WorkflowSnapshot.from_json(SAMPLE.to_bytes())


def test_decode_errors_keep_their_cause() -> None:
    with pytest.raises(SnapshotError) as info:
        WorkflowSnapshot.from_bytes(SAMPLE.to_bytes()[:-1])
    assert isinstance(info.value.__cause__, msgspec.DecodeError)


# --- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"state": {"x": float("nan")}}, "state is not a wire form (float nan at ['x'])"),
        ({"state": {"x": (1, 2)}}, "tuple is not a wire type"),
        ({"state": {"x": [[[[[[2**64]]]]]]}}, "int outside signed 64-bit"),
        ({"metadata": {"x": {1: 2}}}, "dict key 1"),
        ({"metadata": {"x": "\ud800"}}, "lone surrogates"),
        ({"input_requests": [EncodedEvent(type_id="t", payload={"b": b"x"})]}, "input_requests[0]"),
        ({"collect_buffers": {"s": [EncodedEvent(type_id="t", payload={"f": math.inf})]}}, "'s'"),
        ({"created_at": dt.datetime(2024, 1, 1)}, "UTC-aware"),
        ({"version": 4}, "version is 4, not 3"),
        ({"active_time": math.nan}, "active_time"),
        ({"active_time": -0.5}, "active_time"),
        ({"usage": UsageTotals(cost_usd=math.inf)}, "cost_usd"),
        (
            {"history": [HistoryEntry(sequence=1, kind=HistoryKind.PAUSED, timestamp=math.nan)]},
            "timestamp",
        ),
    ],
)
def test_a_snapshot_that_could_not_survive_encoding_is_refused(
    changes: dict[str, Any], expected: str
) -> None:
    with pytest.raises(SnapshotError) as info:
        make_snapshot(**changes)
    assert expected in str(info.value)


def test_a_str_utf8_cannot_carry_fails_encoding_with_snapshot_error() -> None:
    snapshot = make_snapshot(workflow_name="bad \ud800")
    with pytest.raises(SnapshotError, match="MessagePack"):
        snapshot.to_bytes()
    with pytest.raises(SnapshotError, match="JSON"):
        snapshot.to_json()


# --- migrations -------------------------------------------------------------------------------


def version_0() -> Raw:
    """An imagined version 0: `name` rather than `workflow_name`, and no `active_time`."""
    raw = raw_sample()
    raw["version"] = 0
    raw["name"] = raw.pop("workflow_name")
    raw["created_at"] = CREATED  # MessagePack writes a timestamp, JSON a str
    del raw["active_time"]
    return raw


def upgrade_0_to_1(raw: Raw) -> Raw:
    assert raw["version"] == 0
    assert isinstance(raw["created_at"], str)  # both formats hand over the same builtins
    upgraded = {key: value for key, value in raw.items() if key != "name"}
    upgraded["workflow_name"] = raw["name"]
    upgraded["active_time"] = 12.5
    return upgraded


@by_format
def test_an_older_version_is_migrated(encode: Callable[[Any], bytes], decode: Decode) -> None:
    assert decode(encode(version_0()), migrations={0: upgrade_0_to_1}) == SAMPLE


@by_format
def test_migrations_run_step_by_step(encode: Callable[[Any], bytes], decode: Decode) -> None:
    steps: list[int] = []

    def minus_1_to_0(raw: Raw) -> Raw:
        steps.append(-1)
        return {**raw, "version": 0}

    def zero_to_1(raw: Raw) -> Raw:
        steps.append(0)
        return upgrade_0_to_1(raw)

    raw = {**version_0(), "version": -1}
    assert decode(encode(raw), migrations={-1: minus_1_to_0, 0: zero_to_1}) == SAMPLE
    assert steps == [-1, 0]


@by_format
def test_a_missing_migration_is_refused(encode: Callable[[Any], bytes], decode: Decode) -> None:
    with pytest.raises(SnapshotError, match="no migration from version 0 to 1"):
        decode(encode(version_0()))
    raw = {**version_0(), "version": -1}
    with pytest.raises(SnapshotError, match="no migration from version -1 to 0"):
        decode(encode(raw), migrations={0: upgrade_0_to_1})


@by_format
def test_a_failing_migration_is_a_snapshot_error(
    encode: Callable[[Any], bytes], decode: Decode
) -> None:
    def broken(raw: Raw) -> Raw:
        raise KeyError("gone")

    with pytest.raises(SnapshotError, match="from version 0 failed") as info:
        decode(encode(version_0()), migrations={0: broken})
    assert isinstance(info.value.__cause__, KeyError)

    def not_a_dict(raw: Raw) -> Raw:
        return []  # type: ignore[return-value]  # a buggy migration, on purpose

    with pytest.raises(SnapshotError, match="returned list"):
        decode(encode(version_0()), migrations={0: not_a_dict})


@by_format
def test_a_migration_that_leaves_a_bad_snapshot_is_refused(
    encode: Callable[[Any], bytes], decode: Decode
) -> None:
    with pytest.raises(SnapshotError, match="workflow_name"):
        decode(encode(version_0()), migrations={0: lambda raw: raw})


@by_format
@pytest.mark.parametrize("version", [1, 2])
def test_map_layout_documents_of_versions_1_and_2_are_upgraded(
    encode: Callable[[Any], bytes], decode: Decode, version: int
) -> None:
    assert SNAPSHOT_VERSION == 3
    assert set(DEFAULT_MIGRATIONS) == {1, 2}
    raw = {**map_layout(SAMPLE), "version": version}  # version 1 written bare, 2 sealed
    assert decode(encode(raw)) == SAMPLE


@given(snapshots)
def test_any_snapshot_in_version_2_map_layout_upgrades_to_itself(
    snapshot: WorkflowSnapshot,
) -> None:
    raw = {**map_layout(snapshot), "version": 2}
    for encode, decode in (
        (msgpack_sealed, WorkflowSnapshot.from_bytes),
        (json_sealed, WorkflowSnapshot.from_json),
    ):
        assert decode(encode(raw)) == snapshot


@pytest.mark.parametrize(
    ("name", "decode"),
    [
        ("snapshot_v2.msgpack", WorkflowSnapshot.from_bytes),
        ("snapshot_v2.json", WorkflowSnapshot.from_json),
    ],
)
def test_a_snapshot_written_by_the_version_2_release_decodes_to_the_same_snapshot(
    name: str, decode: Decode
) -> None:
    """Bytes written by that release (tests/formats), not by a test's idea of them."""
    back = decode((legacy.FORMATS / name).read_bytes())
    child = back.pending_events[1].children[1].snapshot
    assert child is not None  # the running child's own snapshot: kept as it was, version 2
    assert msgspec.msgpack.decode(child)["version"] == 2
    assert WorkflowSnapshot.from_bytes(child) == legacy.child_snapshot()
    assert back == fold(legacy.base(child), legacy.records())
    assert back.result == legacy.STOP
    assert back.version == SNAPSHOT_VERSION


@by_format
def test_a_map_missing_a_required_field_fails_the_migration_naming_it(
    encode: Callable[[Any], bytes], decode: Decode
) -> None:
    raw = {**map_layout(SAMPLE), "version": 2}
    del raw["pending_events"][0]["event"]["type_id"]
    with pytest.raises(SnapshotError, match="EncodedEvent: required field 'type_id' is missing"):
        decode(encode(raw))


# --- the checksum -----------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_a_flipped_bit_in_the_document_is_refused(codec: str) -> None:
    data = SAMPLE.to_bytes() if codec == "msgpack" else SAMPLE.to_json()
    decode = WorkflowSnapshot.from_bytes if codec == "msgpack" else WorkflowSnapshot.from_json
    at = data.index(b"greeter") + 2  # inside the workflow name: still well-formed after a flip
    flipped = data[:at] + bytes([data[at] ^ 0x04]) + data[at + 1 :]
    with pytest.raises(SnapshotError, match="CRC-32 does not match"):
        decode(flipped)


@pytest.mark.parametrize("crc", [None, "x", -1, 0])
def test_a_missing_or_wrong_checksum_is_refused(crc: Any) -> None:
    body = msgspec.json.encode(raw_sample())
    data = msgspec.json.encode(
        {"version": SNAPSHOT_VERSION, "crc32": crc, "snapshot": msgspec.Raw(body)}
    )
    with pytest.raises(SnapshotError, match=r"crc32|CRC-32"):
        WorkflowSnapshot.from_json(data)


def test_messagepack_seals_the_document_as_a_bin() -> None:
    # A bin is skipped in O(1) when the seal is read; an embedded document is walked over.
    seal = msgspec.msgpack.decode(SAMPLE.to_bytes())
    assert seal["version"] == SNAPSHOT_VERSION
    assert type(seal["snapshot"]) is bytes
    assert zlib.crc32(seal["snapshot"]) == seal["crc32"]
    assert WorkflowSnapshot.from_bytes(msgspec.msgpack.encode(seal)) == SAMPLE


def test_the_json_form_stays_readable() -> None:
    sealed_json = msgspec.json.decode(SAMPLE.to_json())
    assert sealed_json["version"] == 3
    assert sealed_json["snapshot"]["workflow_name"] == "greeter"
    assert zlib.crc32(msgspec.json.encode(sealed_json["snapshot"])) == sealed_json["crc32"]
    with pytest.raises(TypeError):
        DEFAULT_MIGRATIONS[0] = upgrade_0_to_1  # type: ignore[index]  # read-only, on purpose


# --- workflow name ----------------------------------------------------------------------------


def test_check_workflow_name() -> None:
    check_workflow_name(SAMPLE, "greeter")  # the same workflow: no error
    with pytest.raises(SnapshotError) as info:
        check_workflow_name(SAMPLE, "other")
    assert str(info.value) == "snapshot is of workflow 'greeter', not 'other'"
