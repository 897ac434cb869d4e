"""WorkflowSnapshot: everything a run needs to go on elsewhere, as msgspec Structs.

Encoding and decoding go through `_codec` (the one place encoders are built). Decoding reads
the bytes into plain builtins first, checks `version` (newer: refused; older: migrated step by
step), then types them with `msgspec.convert`; every failure is a `SnapshotError`.
"""

from __future__ import annotations

import datetime as dt
import math
import types
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, Final

import msgspec

from . import _codec
from ._codec import EncodedEvent as EncodedEvent
from ._errors import SnapshotError
from ._history import HistoryEntry

SNAPSHOT_VERSION: Final = 1
"""The snapshot format this blazen_trio writes; older ones are migrated on decoding."""

Migration = Callable[[dict[str, Any]], dict[str, Any]]
"""Upgrades a raw snapshot (plain builtins) of version N to version N + 1."""

DEFAULT_MIGRATIONS: Final[Mapping[int, Migration]] = types.MappingProxyType({})
"""The built-in migrations, keyed by the version they upgrade from (none yet)."""


class SerializedRef(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A live session ref in serialized form, restored under its original key on resume."""

    key: str
    lifetime: str
    codec: str  # "pickle" or "protocol" (__blazen_serialize__ / __blazen_deserialize__)
    type_path: str  # "module:QualName" of the object's class
    data: str  # base64 of the serialized bytes


class PendingEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An event routed but not yet handled: it is delivered on resume.

    `target_step` is set when the event is owed to one step only (say, the input of an
    in-flight step put back); `attempt` is that invocation's attempt number.
    """

    event: EncodedEvent
    source_step: str | None = None
    target_step: str | None = None
    attempt: int = 1


class UsageTotals(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Token usage and cost summed over a run."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0


class WorkflowSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A run, paused or in motion, as plain data; `to_bytes()` / `from_bytes()` carry it.

    `state`, `metadata` and event payloads hold wire forms (`_codec.encode_value`), and
    construction checks that they are, so every snapshot encodes losslessly in both formats.
    `created_at` must be timezone-aware with a zero UTC offset. Raises `SnapshotError` when
    built from values that could not survive encoding.
    """

    version: int = SNAPSHOT_VERSION
    workflow_name: str
    run_id: str
    created_at: dt.datetime
    status: str
    state: dict[str, Any]
    pending_events: list[PendingEvent]
    collect_buffers: dict[str, list[EncodedEvent]]
    input_requests: list[EncodedEvent]
    usage: UsageTotals
    history: list[HistoryEntry]
    metadata: dict[str, Any]
    session_refs: dict[str, SerializedRef]
    active_time: float = 0.0
    """Seconds of active run time used so far (the workflow timeout counts only those)."""

    def __post_init__(self) -> None:
        # Decoding checks structure only: the values are checked when they are decoded on
        # resume (`decode_value` / `decode_event`), so reading a big snapshot stays fast.
        self._raise_problems(deep=not _DECODING.get())

    def validate(self) -> None:
        """Check every value is a wire form now, not when the snapshot is resumed.

        Construction checks this; decoding checks only the structure, since resuming decodes
        (and so checks) every value anyway. Raises `SnapshotError` saying where.
        """
        self._raise_problems(deep=True)

    def _raise_problems(self, *, deep: bool) -> None:
        problems = _problems(self, deep=deep)
        if problems:
            raise SnapshotError("invalid snapshot: " + "; ".join(problems))

    def to_bytes(self) -> bytes:
        """The snapshot as MessagePack."""
        try:
            return _codec.msgpack_encode(self)
        except Exception as exc:  # e.g. a str field holding lone surrogates
            raise SnapshotError(f"cannot encode snapshot as MessagePack: {exc}") from exc

    def to_json(self) -> bytes:
        """The snapshot as JSON (UTF-8 bytes)."""
        try:
            return _codec.json_encode(self)
        except Exception as exc:  # e.g. a str field holding lone surrogates
            raise SnapshotError(f"cannot encode snapshot as JSON: {exc}") from exc

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        migrations: Mapping[int, Migration] | None = None,
    ) -> WorkflowSnapshot:
        """Decode `to_bytes()` output; older versions are migrated, newer ones refused.

        `migrations` (version N -> function upgrading a raw dict to N + 1) are merged over
        `DEFAULT_MIGRATIONS`. Raises `SnapshotError` for anything that is not a valid snapshot.
        """
        _check_input(data, "from_bytes")
        if _peek_version(data, _MSGPACK_VERSION, "MessagePack") == SNAPSHOT_VERSION:
            return _decode_current(data, _MSGPACK_SNAPSHOT, "MessagePack")
        raw = _decode_raw(data, _codec.msgpack_decode_raw, "MessagePack")
        return _from_raw(raw, migrations)

    @classmethod
    def from_json(
        cls,
        data: bytes | bytearray | memoryview | str,
        *,
        migrations: Mapping[int, Migration] | None = None,
    ) -> WorkflowSnapshot:
        """Decode `to_json()` output (bytes or str); as `from_bytes` otherwise."""
        _check_input(data, "from_json")
        if _peek_version(data, _JSON_VERSION, "JSON") == SNAPSHOT_VERSION:
            return _decode_current(data, _JSON_SNAPSHOT, "JSON")
        raw = _decode_raw(data, _codec.json_decode_raw, "JSON")
        return _from_raw(raw, migrations)


def check_workflow_name(snapshot: WorkflowSnapshot, name: str) -> None:
    """Raise `SnapshotError` unless `snapshot` was taken from the workflow called `name`."""
    if snapshot.workflow_name != name:
        raise SnapshotError(f"snapshot is of workflow {snapshot.workflow_name!r}, not {name!r}")


_DECODING: ContextVar[bool] = ContextVar("blazen_trio_decoding_snapshot", default=False)


class _Version(msgspec.Struct):
    """Just the version of an encoded snapshot (the rest is skipped by the decoder)."""

    version: Any = 1  # snapshots before the field existed were version 1; checked below


_MSGPACK_VERSION: Final = msgspec.msgpack.Decoder(_Version)
_JSON_VERSION: Final = msgspec.json.Decoder(_Version)
_MSGPACK_SNAPSHOT: Final = msgspec.msgpack.Decoder(WorkflowSnapshot)
_JSON_SNAPSHOT: Final = msgspec.json.Decoder(WorkflowSnapshot)


def _check_input(data: object, method: str) -> None:
    text_too = method == "from_json"
    accepted = (bytes, bytearray, memoryview, str) if text_too else (bytes, bytearray, memoryview)
    if not isinstance(data, accepted):
        wanted = "bytes or str" if text_too else "bytes"
        raise SnapshotError(
            f"WorkflowSnapshot.{method} expects {wanted}, got {type(data).__name__}"
        )


def _peek_version(data: Any, decoder: Any, codec: str) -> int:
    try:
        version = decoder.decode(data).version
    except Exception as exc:  # DecodeError, ValidationError, RecursionError, ...
        raise SnapshotError(f"not a {codec} snapshot: {exc}") from exc
    if type(version) is not int:
        raise SnapshotError(f"snapshot version must be an int, got {version!r}")
    if version > SNAPSHOT_VERSION:
        raise SnapshotError(
            f"snapshot version {version} is newer than this blazen_trio supports "
            f"({SNAPSHOT_VERSION})"
        )
    return version


def _decode_current(data: Any, decoder: Any, codec: str) -> WorkflowSnapshot:
    """A current-version snapshot, typed by msgspec in one pass."""
    token = _DECODING.set(True)
    try:
        snapshot: WorkflowSnapshot = decoder.decode(data)
    except SnapshotError:  # from __post_init__: it already says what is wrong
        raise
    except Exception as exc:  # DecodeError, ValidationError, RecursionError, ...
        raise SnapshotError(f"invalid {codec} snapshot: {exc}") from exc
    finally:
        _DECODING.reset(token)
    return snapshot


def _decode_raw(data: Any, decode: Callable[[Any], dict[str, Any]], codec: str) -> dict[str, Any]:
    """An older snapshot as builtins, for the migrations."""
    try:
        return decode(data)
    except Exception as exc:  # DecodeError, ValidationError, RecursionError, ...
        raise SnapshotError(f"not a {codec} snapshot: {exc}") from exc


def _from_raw(raw: dict[str, Any], migrations: Mapping[int, Migration] | None) -> WorkflowSnapshot:
    version = raw.get("version", 1)  # snapshots before the field existed were version 1
    if type(version) is not int:
        raise SnapshotError(f"snapshot version must be an int, got {version!r}")
    if version > SNAPSHOT_VERSION:
        raise SnapshotError(
            f"snapshot version {version} is newer than this blazen_trio supports "
            f"({SNAPSHOT_VERSION})"
        )
    if version < SNAPSHOT_VERSION:
        raw = _migrate(raw, version, {**DEFAULT_MIGRATIONS, **(migrations or {})})
    try:
        return msgspec.convert(raw, WorkflowSnapshot)
    except SnapshotError:  # from __post_init__: it already says what is wrong
        raise
    except Exception as exc:  # ValidationError, RecursionError, ...
        raise SnapshotError(f"invalid snapshot: {exc}") from exc


def _migrate(
    raw: dict[str, Any], version: int, migrations: Mapping[int, Migration]
) -> dict[str, Any]:
    # Both formats hand migrations the same builtins (MessagePack gives datetimes, JSON strs).
    try:
        raw = msgspec.to_builtins(raw)
    except Exception as exc:  # a msgpack extension type, say
        raise SnapshotError(f"invalid snapshot: {exc}") from exc
    for from_version in range(version, SNAPSHOT_VERSION):
        step = migrations.get(from_version)
        if step is None:
            raise SnapshotError(
                f"snapshot version {version} is too old: no migration from version "
                f"{from_version} to {from_version + 1}"
            )
        try:
            upgraded = step(raw)
        except Exception as exc:  # the migration's own failure
            raise SnapshotError(
                f"migrating the snapshot from version {from_version} failed: {exc!r}"
            ) from exc
        if not isinstance(upgraded, dict):
            raise SnapshotError(
                f"the migration from version {from_version} returned "
                f"{type(upgraded).__name__}, not a dict"
            )
        raw = upgraded
    raw["version"] = SNAPSHOT_VERSION
    return raw


def _problems(snapshot: WorkflowSnapshot, *, deep: bool) -> list[str]:
    """What would keep `snapshot` from encoding losslessly, or break resuming it."""
    problems: list[str] = []
    if snapshot.version != SNAPSHOT_VERSION:
        problems.append(f"version is {snapshot.version!r}, not {SNAPSHOT_VERSION}")
    created = snapshot.created_at
    if not isinstance(created, dt.datetime) or created.utcoffset() != dt.timedelta(0):
        problems.append(f"created_at must be a UTC-aware datetime, got {created!r}")
    if not (math.isfinite(snapshot.active_time) and snapshot.active_time >= 0):
        problems.append(f"active_time must be finite and >= 0, got {snapshot.active_time!r}")
    if not math.isfinite(snapshot.usage.cost_usd):
        problems.append(f"usage.cost_usd must be finite, got {snapshot.usage.cost_usd!r}")

    if not deep:
        return problems

    def check(value: Any, where: str) -> None:
        problem = _codec.find_non_wire(value)
        if problem is not None:
            problems.append(f"{where} is not a wire form ({problem})")

    check(snapshot.state, "state")
    check(snapshot.metadata, "metadata")
    for index, pending in enumerate(snapshot.pending_events):
        check(pending.event.payload, f"pending_events[{index}]")
    for step, buffer in snapshot.collect_buffers.items():
        for index, event in enumerate(buffer):
            check(event.payload, f"collect_buffers[{step!r}][{index}]")
    for index, event in enumerate(snapshot.input_requests):
        check(event.payload, f"input_requests[{index}]")
    for entry in snapshot.history:
        for name in ("timestamp", "duration"):
            number = getattr(entry, name)
            if number is not None and not math.isfinite(number):
                problems.append(f"history entry {entry.sequence}: {name} is {number!r}")
    return problems
