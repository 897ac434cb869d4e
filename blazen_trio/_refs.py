"""Session refs: live, unserializable objects (connections, locks, clients) passed by handle.

Events carry a `SessionRef` (wire form `{"__blazen_session_ref__": "<uuid>"}`); the object itself
stays in the run's `SessionRefRegistry`. When the run is snapshotted, the registry serializes what
the run's `SessionPausePolicy` allows, and `SessionRefRegistry.restore` rebuilds those objects
under their original keys, so the refs inside the restored events still resolve.
"""

from __future__ import annotations

import base64
import pickle
import uuid
import warnings
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any, Literal, Protocol, Self, final

import attrs

from ._codec import resolve_type_path, type_path_of
from ._errors import SessionRefError, SessionRefsNotSerializable
from ._records import RefLifetime, SerializedRef, SessionPausePolicy, SessionRef
from ._util import NoPublicConstructor

DROPPED_REFS_METADATA_KEY = "__blazen_dropped_session_refs"
"""Snapshot metadata entry listing (sorted) the keys of refs dropped at the snapshot."""

MAX_SESSION_REFS = 10_000
"""At most this many live refs per run: a runaway loop fails fast instead of eating memory."""


class SessionRefSerializable(Protocol):
    """The opt-in serialization protocol used by `SessionPausePolicy.PICKLE_OR_SERIALIZE`.

    The class must be importable by `module:QualName` (not defined inside a function), since
    resume finds it by that path and calls `__blazen_deserialize__` with the bytes.
    """

    def __blazen_serialize__(self) -> bytes: ...

    @classmethod
    def __blazen_deserialize__(cls, data: bytes) -> Self: ...


@attrs.frozen
class _Entry:
    obj: Any
    lifetime: RefLifetime


@final
@attrs.define(eq=False, repr=False)
class SessionRefRegistry:
    """The live objects of one run (shared with its sub-workflows), keyed by `SessionRef`.

    Synchronous and not thread-safe: use it from the Trio thread (steps, not worker threads).
    Holds at most `MAX_SESSION_REFS` live refs.
    """

    _entries: dict[str, _Entry] = attrs.field(factory=dict, init=False)
    # Keys whose objects a snapshot dropped, so `get` on them after resume says why.
    _dropped_at_snapshot: frozenset[str] = attrs.field(factory=frozenset, init=False)

    def __repr__(self) -> str:
        return f"<SessionRefRegistry live={len(self._entries)}>"

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        """The keys of the live refs, oldest first (a copy: dropping while iterating is safe)."""
        return iter(list(self._entries))

    def __contains__(self, ref: object) -> bool:
        if isinstance(ref, SessionRef):
            ref = ref.key
        return isinstance(ref, str) and ref in self._entries

    def insert(self, obj: Any, *, lifetime: RefLifetime = RefLifetime.UNTIL_RUN_END) -> SessionRef:
        """Keep `obj` for the run and return a fresh handle to it.

        Raises `SessionRefError` when `MAX_SESSION_REFS` refs are already live.
        """
        lifetime = RefLifetime(lifetime)
        if len(self._entries) >= MAX_SESSION_REFS:
            raise SessionRefError(
                f"session ref capacity exceeded: a run holds at most {MAX_SESSION_REFS} live "
                "refs; drop refs you no longer need"
            )
        key = str(uuid.uuid4())
        self._entries[key] = _Entry(obj, lifetime)
        return SessionRef(key)

    def get(self, ref: SessionRef | str) -> Any:
        """The object behind `ref` (a `SessionRef` or its key); `SessionRefError` if not live."""
        return self._entry(ref).obj

    def lifetime_of(self, ref: SessionRef | str) -> RefLifetime:
        """The lifetime `ref` was inserted with; `SessionRefError` if not live."""
        return self._entry(ref).lifetime

    def drop(self, ref: SessionRef | str) -> None:
        """Let go of `ref`'s object now; `SessionRefError` if not live."""
        key = _key_of(ref)
        self._entry(key)
        del self._entries[key]

    def keys(self) -> list[str]:
        """The keys of the live refs, oldest first."""
        return list(self._entries)

    def live_objects(self) -> dict[str, Any]:
        """A copy of the live objects by key, oldest first."""
        return {key: entry.obj for key, entry in self._entries.items()}

    def release(self, *lifetimes: RefLifetime) -> int:
        """Drop every ref whose lifetime is one of `lifetimes`; returns how many were dropped."""
        ending = {RefLifetime(lifetime) for lifetime in lifetimes}
        keys = [key for key, entry in self._entries.items() if entry.lifetime in ending]
        for key in keys:
            del self._entries[key]
        return len(keys)

    def serialize(
        self,
        policy: SessionPausePolicy,
        *,
        excluding: Collection[str] = (),
        only: Collection[str] | None = None,
    ) -> tuple[dict[str, SerializedRef], dict[str, Any]]:
        """The live refs in snapshot form under `policy`, and the snapshot metadata entries.

        Does not change the registry: the run releases `UNTIL_SNAPSHOT` refs once its snapshot is
        taken. Those refs are never serialized, under any policy. Refs dropped by the policy are
        listed (sorted) in `metadata[DROPPED_REFS_METADATA_KEY]` and reported with one
        `RuntimeWarning`.

        Raises `SessionRefsNotSerializable` with every failing key under `PICKLE_OR_ERROR`, and
        with every live key under `HARD_ERROR` (a refusal) when any ref would outlive the snapshot.
        Keys in `excluding` (inserted by attempts that will re-run) are left out; with `only`,
        just those keys are considered (a journal record carries the refs one commit inserted).
        """
        policy = SessionPausePolicy(policy)
        entries = self._entries if only is None else {k: self._entries[k] for k in only}
        kept = {
            key: entry
            for key, entry in entries.items()
            if entry.lifetime is not RefLifetime.UNTIL_SNAPSHOT and key not in excluding
        }
        if not kept:
            return {}, {}
        if policy is SessionPausePolicy.HARD_ERROR:
            raise SessionRefsNotSerializable(
                sorted(kept),
                f"SessionPausePolicy.HARD_ERROR refused the snapshot: {len(kept)} session "
                "ref(s) live",
            )
        if policy is SessionPausePolicy.WARN_DROP:
            dropped = sorted(kept)
            _warn_dropped(policy, dict.fromkeys(dropped, ""))
            return {}, {DROPPED_REFS_METADATA_KEY: dropped}

        serialized: dict[str, SerializedRef] = {}
        failures: dict[str, Exception] = {}
        for key, entry in kept.items():
            try:
                serialized[key] = _serialize_entry(
                    key, entry, use_protocol=policy is SessionPausePolicy.PICKLE_OR_SERIALIZE
                )
            except Exception as exc:  # any failure of user code / pickle marks this ref
                failures[key] = exc
        if not failures:
            return serialized, {}
        if policy is SessionPausePolicy.PICKLE_OR_ERROR:
            keys = sorted(failures)
            error = SessionRefsNotSerializable(keys)
            for key in keys:
                error.add_note(f"{key}: {_describe(kept[key].obj, failures[key])}")
            raise error from _one_cause("session refs failed to pickle", failures)
        # PICKLE_OR_SERIALIZE: what could not be serialized is dropped.
        _warn_dropped(
            policy, {key: _describe(kept[key].obj, failures[key]) for key in sorted(failures)}
        )
        return serialized, {DROPPED_REFS_METADATA_KEY: sorted(failures)}

    @classmethod
    def restore(
        cls, refs: Mapping[str, SerializedRef], *, dropped: Iterable[str] = ()
    ) -> SessionRefRegistry:
        """Rebuild a registry from a snapshot's refs, each under its original key and lifetime.

        `dropped` (the snapshot's `DROPPED_REFS_METADATA_KEY` list) makes `get` on those keys
        say that the snapshot dropped them. Unpickling runs code named by the snapshot: restore
        only snapshots you trust. Raises `SessionRefError` naming every ref that fails.
        """
        if len(refs) > MAX_SESSION_REFS:
            raise SessionRefError(
                f"cannot restore {len(refs)} session refs: a run holds at most "
                f"{MAX_SESSION_REFS} live refs"
            )
        registry = cls()
        failures: dict[str, Exception] = {}
        for key, serialized in refs.items():
            try:
                registry._entries[key] = _restore_entry(key, serialized)
            except Exception as exc:  # any failure of decoding / user code marks this ref
                failures[key] = exc
        if failures:
            details = "; ".join(
                f"{key} ({type(exc).__name__}: {exc})" for key, exc in sorted(failures.items())
            )
            raise SessionRefError(
                f"{len(failures)} session ref(s) could not be restored: {details}"
            ) from _one_cause("session refs failed to restore", failures)
        registry._dropped_at_snapshot = frozenset(dropped)
        return registry

    def _entry(self, ref: SessionRef | str) -> _Entry:
        key = _key_of(ref)
        try:
            return self._entries[key]
        except KeyError:
            if key in self._dropped_at_snapshot:
                raise SessionRefError(
                    f"session ref {key!r} was dropped when the run was snapshotted: its object "
                    "could not be serialized under the run's session pause policy"
                ) from None
            raise SessionRefError(
                f"no live session ref with key {key!r} (never inserted in this run, or already "
                "dropped or released)"
            ) from None


def _key_of(ref: SessionRef | str) -> str:
    if isinstance(ref, SessionRef):
        return ref.key
    if isinstance(ref, str):
        return ref
    raise TypeError(f"expected a SessionRef or its key (str), got {type(ref).__name__}")


def _has_protocol(cls: type) -> bool:
    # Looked up on the class, like any dunder protocol.
    return callable(getattr(cls, "__blazen_serialize__", None)) and callable(
        getattr(cls, "__blazen_deserialize__", None)
    )


def _serialize_entry(key: str, entry: _Entry, *, use_protocol: bool) -> SerializedRef:
    cls = type(entry.obj)
    type_path = type_path_of(cls)
    if use_protocol and _has_protocol(cls):
        # Resume finds the class by this path, so check now that it leads back here.
        try:
            found = resolve_type_path(type_path)
        except Exception:  # any import failure means the same thing here
            found = None
        if found is not cls:
            raise TypeError(
                f"class {type_path} is not importable under that path (defined in a function?)"
            )
        data = entry.obj.__blazen_serialize__()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(
                f"{type_path}.__blazen_serialize__ returned {type(data).__name__}, not bytes"
            )
        codec: Literal["pickle", "protocol"] = "protocol"
        raw = bytes(data)
    else:
        codec = "pickle"
        raw = pickle.dumps(entry.obj, protocol=pickle.HIGHEST_PROTOCOL)
    return SerializedRef(
        key=key,
        lifetime=entry.lifetime,
        codec=codec,
        type_path=type_path,
        data=base64.b64encode(raw).decode("ascii"),
    )


def _restore_entry(key: str, serialized: SerializedRef) -> _Entry:
    if serialized.key != key:
        raise ValueError(f"stored under key {key!r} but names key {serialized.key!r}")
    lifetime = RefLifetime(serialized.lifetime)
    raw = base64.b64decode(serialized.data, validate=True)
    if serialized.codec == "pickle":
        obj = pickle.loads(raw)  # trusted input only; documented on `restore`
    elif serialized.codec == "protocol":
        cls = resolve_type_path(serialized.type_path)
        deserialize = getattr(cls, "__blazen_deserialize__", None)
        if not callable(deserialize):
            raise TypeError(f"{serialized.type_path} has no __blazen_deserialize__")
        obj = deserialize(raw)
    else:
        raise ValueError(f"unknown session ref codec {serialized.codec!r}")
    return _Entry(obj, lifetime)


def _describe(obj: Any, exc: Exception) -> str:
    return f"{type_path_of(type(obj))}: {type(exc).__name__}: {exc}"


def _one_cause(message: str, failures: Mapping[str, Exception]) -> Exception:
    excs = list(failures.values())
    return excs[0] if len(excs) == 1 else ExceptionGroup(message, excs)


def _warn_dropped(policy: SessionPausePolicy, reasons: Mapping[str, str]) -> None:
    listed = ", ".join(f"{key} ({why})" if why else key for key, why in reasons.items())
    warnings.warn(
        f"{len(reasons)} session ref(s) dropped from the snapshot under "
        f"SessionPausePolicy.{policy.name}: {listed}; after resume, get() on them raises "
        "SessionRefError",
        RuntimeWarning,
        stacklevel=3,
    )


@attrs.define(slots=True, eq=False)
class RefInsert:
    """Undo record: a ref inserted by a step attempt that did not complete is let go."""

    registry: SessionRefRegistry
    key: str

    def undo(self, state: object, virtual: set[int] | None) -> None:
        if virtual is None and self.key in self.registry:
            self.registry.drop(self.key)

    def settle(self, state: object) -> None:
        pass


@attrs.define(slots=True, eq=False)
class RefDrop:
    """Log record: a step attempt dropped a ref (drops are not undone; the journal needs it)."""

    key: str

    def undo(self, state: object, virtual: set[int] | None) -> None:
        pass

    def settle(self, state: object) -> None:
        pass


@final
class StepRefs(metaclass=NoPublicConstructor):
    """The run's session-ref registry as one step attempt sees it.

    Refs the attempt inserts are let go if it does not complete (it failed before a retry, or a
    pause cancelled it), like its state writes: no committed event can refer to them.
    """

    __slots__ = ("_log", "_registry")

    def __init__(self, registry: SessionRefRegistry, log: list[Any]) -> None:
        self._registry = registry
        self._log = log

    def insert(self, obj: Any, *, lifetime: RefLifetime = RefLifetime.UNTIL_RUN_END) -> SessionRef:
        """Keep `obj` for the run; see `SessionRefRegistry.insert`."""
        ref = self._registry.insert(obj, lifetime=lifetime)
        self._log.append(RefInsert(self._registry, ref.key))
        return ref

    def get(self, ref: SessionRef | str) -> Any:
        return self._registry.get(ref)

    def lifetime_of(self, ref: SessionRef | str) -> RefLifetime:
        return self._registry.lifetime_of(ref)

    def drop(self, ref: SessionRef | str) -> None:
        self._registry.drop(ref)
        self._log.append(RefDrop(_key_of(ref)))

    def keys(self) -> list[str]:
        return self._registry.keys()

    def __len__(self) -> int:
        return len(self._registry)

    def __contains__(self, ref: object) -> bool:
        return ref in self._registry
