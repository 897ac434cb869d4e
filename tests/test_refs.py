"""Session refs: the registry, its lifetimes, the pause policies and restore."""

from __future__ import annotations

import base64
import pickle
import threading
import uuid
from collections.abc import Iterator
from typing import Any, Self

import msgspec
import pytest
from _ref_objects import Connection
from hypothesis import given, strategies as st

import blazen_trio as bz
from blazen_trio._records import (
    SESSION_REF_KEY,
    RefLifetime,
    SerializedRef,
    SessionPausePolicy,
    SessionRef,
)
from blazen_trio._refs import (
    DROPPED_REFS_METADATA_KEY,
    MAX_SESSION_REFS,
    SessionRefRegistry,
)


class PicklableWithProtocol:
    """Picklable too, so a protocol codec proves the protocol was preferred."""

    def __init__(self, value: int, *, via: str = "init") -> None:
        self.value = value
        self.via = via

    def __blazen_serialize__(self) -> bytes:
        return str(self.value).encode()

    @classmethod
    def __blazen_deserialize__(cls, data: bytes) -> Self:
        return cls(int(data), via="protocol")


class ProtocolRaises:
    def __blazen_serialize__(self) -> bytes:
        raise RuntimeError("connection is closed")

    @classmethod
    def __blazen_deserialize__(cls, data: bytes) -> Self:
        return cls()


class ProtocolReturnsText:
    def __blazen_serialize__(self) -> str:
        return "not bytes"

    @classmethod
    def __blazen_deserialize__(cls, data: bytes) -> Self:
        return cls()


class DeserializeRaises:
    def __blazen_serialize__(self) -> bytes:
        return b"x"

    @classmethod
    def __blazen_deserialize__(cls, data: bytes) -> Self:
        raise ValueError("schema changed")


class ReduceRaises:
    def __reduce__(self) -> Any:
        raise RuntimeError("no pickling today")


class Holder(bz.Event):
    conn: SessionRef
    label: str = ""


def _generator() -> Iterator[int]:
    yield 1


def unpicklable_values() -> list[Any]:
    """Objects whose pickling raises TypeError, PicklingError/AttributeError or RuntimeError."""
    return [threading.Lock(), lambda: None, _generator(), ReduceRaises()]


@pytest.fixture
def registry() -> SessionRefRegistry:
    return SessionRefRegistry()


# -- the registry -------------------------------------------------------------------------------


def test_insert_get_drop(registry: SessionRefRegistry) -> None:
    obj = object()
    ref = registry.insert(obj)
    assert isinstance(ref, SessionRef)
    assert str(uuid.UUID(ref.key)) == ref.key
    assert registry.get(ref) is obj
    assert ref in registry
    assert len(registry) == 1
    assert registry.keys() == [ref.key]
    assert list(registry) == [ref.key]
    assert registry.lifetime_of(ref) is RefLifetime.UNTIL_RUN_END
    registry.drop(ref)
    assert ref not in registry
    assert len(registry) == 0
    with pytest.raises(bz.SessionRefError, match=ref.key):
        registry.get(ref)


def test_get_and_drop_by_key_string(registry: SessionRefRegistry) -> None:
    obj = ["payload"]
    ref = registry.insert(obj)
    assert registry.get(ref.key) is obj
    assert ref.key in registry
    assert registry.lifetime_of(ref.key) is RefLifetime.UNTIL_RUN_END
    registry.drop(ref.key)
    assert ref.key not in registry


def test_each_insert_gets_a_fresh_key_even_for_the_same_object(
    registry: SessionRefRegistry,
) -> None:
    obj = object()
    first, second = registry.insert(obj), registry.insert(obj)
    assert first != second
    assert registry.get(first) is registry.get(second) is obj


def test_unknown_key_errors_name_the_key(registry: SessionRefRegistry) -> None:
    key = str(uuid.uuid4())
    with pytest.raises(bz.SessionRefError, match=key):
        registry.get(key)
    with pytest.raises(bz.SessionRefError, match=key):
        registry.get(SessionRef(key))
    with pytest.raises(bz.SessionRefError, match=key):
        registry.drop(key)
    with pytest.raises(bz.SessionRefError, match=key):
        registry.lifetime_of(key)


def test_dropping_twice_fails(registry: SessionRefRegistry) -> None:
    ref = registry.insert(1)
    registry.drop(ref)
    with pytest.raises(bz.SessionRefError, match="already"):
        registry.drop(ref)


def test_get_rejects_what_is_not_a_ref(registry: SessionRefRegistry) -> None:
    with pytest.raises(TypeError, match="SessionRef"):
        registry.get(42)  # type: ignore[arg-type]  # the wrong type is the point of the test
    assert 42 not in registry


def test_capacity_is_exactly_max_session_refs(registry: SessionRefRegistry) -> None:
    assert MAX_SESSION_REFS == 10_000
    refs = [registry.insert(i) for i in range(MAX_SESSION_REFS)]
    assert len(registry) == MAX_SESSION_REFS
    with pytest.raises(bz.SessionRefError, match="10000"):
        registry.insert("one too many")
    assert len(registry) == MAX_SESSION_REFS
    registry.drop(refs[0])
    extra = registry.insert("fits again")
    assert registry.get(extra) == "fits again"
    with pytest.raises(bz.SessionRefError, match="capacity"):
        registry.insert("over again")


def test_live_objects_is_a_copy_in_insertion_order(registry: SessionRefRegistry) -> None:
    refs = [registry.insert(i) for i in range(5)]
    objects = registry.live_objects()
    assert objects == {ref.key: i for i, ref in enumerate(refs)}
    objects.clear()
    assert len(registry) == 5
    assert registry.keys() == [ref.key for ref in refs]


def test_dropping_while_iterating_is_safe(registry: SessionRefRegistry) -> None:
    for i in range(3):
        registry.insert(i)
    for key in registry:
        registry.drop(key)
    assert len(registry) == 0


def test_repr_does_not_dump_the_objects(registry: SessionRefRegistry) -> None:
    registry.insert("secret-token")
    assert repr(registry) == "<SessionRefRegistry live=1>"


def test_enums_use_lower_case_values() -> None:
    assert [lifetime.value for lifetime in RefLifetime] == [
        "until_run_end",
        "until_explicit_drop",
        "until_snapshot",
        "until_parent_finish",
    ]
    assert [policy.value for policy in SessionPausePolicy] == [
        "pickle_or_error",
        "pickle_or_serialize",
        "warn_drop",
        "hard_error",
    ]


# -- the wire form ------------------------------------------------------------------------------


def test_session_ref_wire_form(registry: SessionRefRegistry) -> None:
    ref = registry.insert(object())
    encoded = msgspec.json.encode(ref)
    assert msgspec.json.decode(encoded) == {SESSION_REF_KEY: ref.key}
    assert SESSION_REF_KEY == "__blazen_session_ref__"
    assert msgspec.json.decode(encoded, type=SessionRef) == ref


def test_session_ref_inside_an_event_round_trips(registry: SessionRefRegistry) -> None:
    obj = object()
    event = Holder(conn=registry.insert(obj), label="db")
    encoded = msgspec.json.encode(event)
    assert msgspec.json.decode(encoded)["conn"] == {SESSION_REF_KEY: event.conn.key}
    decoded = msgspec.json.decode(encoded, type=Holder)
    assert decoded == event
    assert registry.get(decoded.conn) is obj


@given(key=st.text())
def test_session_ref_round_trips_json_and_msgpack(key: str) -> None:
    ref = SessionRef(key)
    assert msgspec.json.decode(msgspec.json.encode(ref), type=SessionRef) == ref
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(ref), type=SessionRef) == ref
    assert hash(ref) == hash(SessionRef(key))


# -- lifetimes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lifetime", list(RefLifetime))
def test_release_drops_exactly_the_given_lifetime(
    registry: SessionRefRegistry, lifetime: RefLifetime
) -> None:
    refs = {each: registry.insert(each.value, lifetime=each) for each in RefLifetime}
    assert registry.release(lifetime) == 1
    assert refs[lifetime] not in registry
    assert {registry.lifetime_of(key) for key in registry} == set(RefLifetime) - {lifetime}
    assert registry.release(lifetime) == 0


def test_run_end_keeps_only_explicit_drop_refs(registry: SessionRefRegistry) -> None:
    for lifetime in RefLifetime:
        registry.insert(lifetime.value, lifetime=lifetime)
        registry.insert(lifetime.value, lifetime=lifetime)
    assert registry.release(RefLifetime.UNTIL_SNAPSHOT) == 2
    assert registry.release(RefLifetime.UNTIL_RUN_END, RefLifetime.UNTIL_PARENT_FINISH) == 4
    assert list(registry.live_objects().values()) == ["until_explicit_drop"] * 2
    assert registry.release() == 0
    assert len(registry) == 2


def test_insert_accepts_a_lifetime_value_string(registry: SessionRefRegistry) -> None:
    ref = registry.insert(1, lifetime="until_snapshot")  # type: ignore[arg-type]  # str value
    assert registry.lifetime_of(ref) is RefLifetime.UNTIL_SNAPSHOT
    with pytest.raises(ValueError, match="forever"):
        registry.insert(1, lifetime="forever")  # type: ignore[arg-type]  # invalid on purpose


# -- policies -----------------------------------------------------------------------------------


def test_pickle_or_error_pickles_every_live_ref(registry: SessionRefRegistry) -> None:
    plain = registry.insert({"a": [1, 2]})
    forever = registry.insert(b"bytes", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
    parent = registry.insert(3.5, lifetime=RefLifetime.UNTIL_PARENT_FINISH)
    refs, metadata = registry.serialize(SessionPausePolicy.PICKLE_OR_ERROR)
    assert metadata == {}
    assert set(refs) == {plain.key, forever.key, parent.key}
    stored = refs[plain.key]
    assert stored.key == plain.key
    assert stored.codec == "pickle"
    assert stored.type_path == "builtins:dict"
    assert stored.lifetime == "until_run_end"
    assert pickle.loads(base64.b64decode(stored.data)) == {"a": [1, 2]}
    assert refs[forever.key].lifetime == "until_explicit_drop"
    assert refs[parent.key].lifetime == "until_parent_finish"


def test_pickle_or_error_lists_every_failure(registry: SessionRefRegistry) -> None:
    bad = [registry.insert(value) for value in unpicklable_values()]
    registry.insert("fine")
    registry.insert(threading.Lock(), lifetime=RefLifetime.UNTIL_SNAPSHOT)  # ends, not a failure
    with pytest.raises(bz.SessionRefsNotSerializable) as info:
        registry.serialize(SessionPausePolicy.PICKLE_OR_ERROR)
    assert info.value.keys == tuple(sorted(ref.key for ref in bad))
    assert isinstance(info.value, bz.SessionRefError)
    notes = "\n".join(info.value.__notes__)
    assert "_thread:lock" in notes or "_thread:RLock" in notes
    assert "no pickling today" in notes
    assert isinstance(info.value.__cause__, ExceptionGroup)
    assert len(info.value.__cause__.exceptions) == len(bad)


def test_pickle_or_error_ignores_the_protocol(registry: SessionRefRegistry) -> None:
    ref = registry.insert(Connection("db://x"))
    with pytest.raises(bz.SessionRefsNotSerializable) as info:
        registry.serialize(SessionPausePolicy.PICKLE_OR_ERROR)
    assert info.value.keys == (ref.key,)
    assert isinstance(info.value.__cause__, TypeError)


def test_pickle_or_serialize_prefers_the_protocol(registry: SessionRefRegistry) -> None:
    conn = registry.insert(Connection("db://main"))
    both = registry.insert(PicklableWithProtocol(7))
    plain = registry.insert([1, 2, 3])
    refs, metadata = registry.serialize(SessionPausePolicy.PICKLE_OR_SERIALIZE)
    assert metadata == {}
    assert refs[conn.key].codec == "protocol"
    assert refs[conn.key].type_path == "_ref_objects:Connection"
    assert base64.b64decode(refs[conn.key].data) == b"db://main"
    assert refs[both.key].codec == "protocol"
    assert refs[plain.key].codec == "pickle"
    restored = SessionRefRegistry.restore(refs)
    assert restored.get(conn).dsn == "db://main"
    assert restored.get(conn).restored is True
    assert restored.get(both).via == "protocol"
    assert restored.get(plain) == [1, 2, 3]


def test_pickle_or_serialize_drops_what_it_cannot_serialize(
    registry: SessionRefRegistry,
) -> None:
    class LocalConnection(Connection):  # has the protocol, but resume could not import it
        pass

    kept = registry.insert(Connection("db://kept"))
    dropped = [
        registry.insert(threading.Lock()),
        registry.insert(ProtocolRaises()),
        registry.insert(ProtocolReturnsText()),
        registry.insert(LocalConnection("db://local")),
    ]
    with pytest.warns(RuntimeWarning, match="PICKLE_OR_SERIALIZE") as record:
        refs, metadata = registry.serialize(SessionPausePolicy.PICKLE_OR_SERIALIZE)
    assert len(record) == 1
    message = str(record[0].message)
    assert all(ref.key in message for ref in dropped)
    assert "connection is closed" in message
    assert "not bytes" in message
    assert "not importable" in message
    assert set(refs) == {kept.key}
    assert metadata == {DROPPED_REFS_METADATA_KEY: sorted(ref.key for ref in dropped)}


def test_warn_drop_drops_everything_with_one_warning(registry: SessionRefRegistry) -> None:
    refs = [
        registry.insert("picklable"),
        registry.insert(Connection("db://x")),
        registry.insert(threading.Lock(), lifetime=RefLifetime.UNTIL_EXPLICIT_DROP),
    ]
    snapshot_only = registry.insert("ends", lifetime=RefLifetime.UNTIL_SNAPSHOT)
    with pytest.warns(RuntimeWarning, match="WARN_DROP") as record:
        serialized, metadata = registry.serialize(SessionPausePolicy.WARN_DROP)
    assert len(record) == 1
    assert all(ref.key in str(record[0].message) for ref in refs)
    assert snapshot_only.key not in str(record[0].message)
    assert serialized == {}
    assert metadata == {DROPPED_REFS_METADATA_KEY: sorted(ref.key for ref in refs)}


def test_hard_error_refuses_while_any_ref_is_live(registry: SessionRefRegistry) -> None:
    refs = [registry.insert("a"), registry.insert("b", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)]
    refused = "HARD_ERROR refused the snapshot"
    with pytest.raises(bz.SessionRefsNotSerializable, match=refused) as info:
        registry.serialize(SessionPausePolicy.HARD_ERROR)
    assert info.value.keys == tuple(sorted(ref.key for ref in refs))
    assert all(ref.key in str(info.value) for ref in refs)


@pytest.mark.parametrize("policy", list(SessionPausePolicy))
def test_until_snapshot_refs_are_never_serialized(
    registry: SessionRefRegistry, policy: SessionPausePolicy
) -> None:
    ref = registry.insert("ends at the snapshot", lifetime=RefLifetime.UNTIL_SNAPSHOT)
    assert registry.serialize(policy) == ({}, {})
    assert ref in registry  # serialize leaves the registry alone; the run releases it
    assert registry.release(RefLifetime.UNTIL_SNAPSHOT) == 1


@pytest.mark.parametrize("policy", list(SessionPausePolicy))
def test_an_empty_registry_serializes_to_nothing(
    registry: SessionRefRegistry, policy: SessionPausePolicy
) -> None:
    assert registry.serialize(policy) == ({}, {})


@pytest.mark.parametrize(
    "policy", [SessionPausePolicy.PICKLE_OR_SERIALIZE, SessionPausePolicy.WARN_DROP]
)
def test_serialize_does_not_change_the_registry(
    registry: SessionRefRegistry, policy: SessionPausePolicy
) -> None:
    for lifetime in RefLifetime:
        registry.insert(threading.Lock(), lifetime=lifetime)
    before = registry.live_objects()
    with pytest.warns(RuntimeWarning, match="dropped"):
        registry.serialize(policy)
    assert registry.live_objects() == before


def test_serialize_accepts_a_policy_value_string(registry: SessionRefRegistry) -> None:
    registry.insert(1)
    refs, _ = registry.serialize("pickle_or_error")  # type: ignore[arg-type]  # str value
    assert len(refs) == 1


# -- restore ------------------------------------------------------------------------------------


def test_restore_keeps_keys_and_lifetimes(registry: SessionRefRegistry) -> None:
    refs = {
        lifetime: registry.insert({"lifetime": lifetime.value}, lifetime=lifetime)
        for lifetime in RefLifetime
        if lifetime is not RefLifetime.UNTIL_SNAPSHOT
    }
    serialized, _ = registry.serialize(SessionPausePolicy.PICKLE_OR_ERROR)
    restored = SessionRefRegistry.restore(serialized)
    assert sorted(restored.keys()) == sorted(ref.key for ref in refs.values())
    for lifetime, ref in refs.items():
        assert restored.get(ref) == {"lifetime": lifetime.value}
        assert restored.lifetime_of(ref) is lifetime


def test_restore_through_a_msgpack_encoded_snapshot(registry: SessionRefRegistry) -> None:
    ref = registry.insert(Connection("db://wire"))
    serialized, _ = registry.serialize(SessionPausePolicy.PICKLE_OR_SERIALIZE)
    wire = msgspec.msgpack.encode(serialized)
    decoded = msgspec.msgpack.decode(wire, type=dict[str, SerializedRef])
    assert SessionRefRegistry.restore(decoded).get(ref).dsn == "db://wire"


def test_restored_refs_resolve_from_restored_events(registry: SessionRefRegistry) -> None:
    event = Holder(conn=registry.insert(Connection("db://event")))
    serialized, _ = registry.serialize(SessionPausePolicy.PICKLE_OR_SERIALIZE)
    event_again = msgspec.json.decode(msgspec.json.encode(event), type=Holder)
    restored = SessionRefRegistry.restore(serialized)
    assert restored.get(event_again.conn).dsn == "db://event"


def test_refs_dropped_at_the_snapshot_say_so_after_restore(
    registry: SessionRefRegistry,
) -> None:
    lock_ref = registry.insert(threading.Lock())
    with pytest.warns(RuntimeWarning, match=lock_ref.key):
        serialized, metadata = registry.serialize(SessionPausePolicy.PICKLE_OR_SERIALIZE)
    restored = SessionRefRegistry.restore(serialized, dropped=metadata[DROPPED_REFS_METADATA_KEY])
    with pytest.raises(bz.SessionRefError, match="dropped when the run was snapshotted"):
        restored.get(lock_ref)
    with pytest.raises(bz.SessionRefError, match="never inserted"):
        restored.get(str(uuid.uuid4()))


def _valid(key: str) -> SerializedRef:
    return SerializedRef(
        key=key,
        lifetime=RefLifetime.UNTIL_RUN_END,
        codec="pickle",
        type_path="builtins:int",
        data=base64.b64encode(pickle.dumps(1)).decode(),
    )


@pytest.mark.parametrize(
    "change",
    [
        {"data": "not base64 !!"},
        {"data": base64.b64encode(b"not a pickle").decode()},
        {"codec": "yaml"},
        {"lifetime": "forever"},
        {"key": "another-key"},
        {"codec": "protocol", "type_path": "no_such_module_xyz:Thing"},
        {"codec": "protocol", "type_path": f"{__name__}:NoSuchClass"},
        {"codec": "protocol", "type_path": "no colon"},
        {"codec": "protocol", "type_path": "builtins:int"},  # no __blazen_deserialize__
        {"codec": "protocol", "type_path": f"{__name__}:DeserializeRaises"},
    ],
)
def test_restore_failures_name_the_key(change: dict[str, str]) -> None:
    key = str(uuid.uuid4())
    broken = msgspec.structs.replace(_valid(key), **change)
    good_key = str(uuid.uuid4())
    with pytest.raises(bz.SessionRefError, match=key) as info:
        SessionRefRegistry.restore({key: broken, good_key: _valid(good_key)})
    assert good_key not in str(info.value)
    assert isinstance(info.value.__cause__, Exception)


def test_restore_names_every_failing_key() -> None:
    keys = [str(uuid.uuid4()) for _ in range(3)]
    refs = {key: msgspec.structs.replace(_valid(key), codec="yaml") for key in keys}
    with pytest.raises(bz.SessionRefError) as info:
        SessionRefRegistry.restore(refs)
    assert all(key in str(info.value) for key in keys)
    assert isinstance(info.value.__cause__, ExceptionGroup)


def test_restore_refuses_more_than_the_cap() -> None:
    one = _valid(str(uuid.uuid4()))
    refs = {str(i): one for i in range(MAX_SESSION_REFS + 1)}
    with pytest.raises(bz.SessionRefError, match="at most 10000"):
        SessionRefRegistry.restore(refs)


picklable = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(
    items=st.lists(st.tuples(picklable, st.sampled_from(list(RefLifetime))), max_size=20),
    policy=st.sampled_from(
        [SessionPausePolicy.PICKLE_OR_ERROR, SessionPausePolicy.PICKLE_OR_SERIALIZE]
    ),
)
def test_serialize_then_restore_round_trips(
    items: list[tuple[Any, RefLifetime]], policy: SessionPausePolicy
) -> None:
    registry = SessionRefRegistry()
    refs = [(registry.insert(obj, lifetime=lifetime), obj, lifetime) for obj, lifetime in items]
    serialized, metadata = registry.serialize(policy)
    assert metadata == {}
    registry.release(RefLifetime.UNTIL_SNAPSHOT)
    restored = SessionRefRegistry.restore(serialized)
    assert restored.keys() == registry.keys()
    for ref, obj, lifetime in refs:
        if lifetime is RefLifetime.UNTIL_SNAPSHOT:
            assert ref not in restored
        else:
            assert restored.get(ref) == obj
            assert restored.lifetime_of(ref) is lifetime
