"""The snapshot codec: user values and events to a JSON-native "wire form" and back.

The one place where the cattrs converter and the msgspec encoders/decoders are built (once, at
import, with every hook registered before first use). Nothing here knows the run loop.

A wire form holds only None, bool, int (signed 64-bit), finite float, str (encodable as UTF-8),
list and dict with str keys, so msgspec's JSON and MessagePack both carry it unchanged. What
those cannot say directly is tagged `{"$blazen": TAG, ...}`:

| tag | for | fields |
|---|---|---|
| `tuple`, `set`, `frozenset` | those containers | `v`: the items, encoded (sets: sorted) |
| `dict` | a dict with a non-str or reserved key | `v`: `[[k, v], ...]`, encoded |
| `bytes`, `bytearray` | those | `v`: base64 |
| `int` | an int outside signed 64-bit | `v`: `hex(value)` (no digit limit, unlike `str`) |
| `float` | NaN and the infinities | `v`: `"nan"`, `"inf"`, `"-inf"` |
| `struct` | a msgspec Struct (an Event...) | `t`: `"module:QualName"`, `v`: `{field: encoded}` |
| `type` | what cattrs round-trips exactly | `t`: `"module:QualName"`, `v`: its form, encoded |
| `pickle` | the rest, if pickle can | `t`: the type (for messages), `v`: base64 of the pickle |

A `SessionRef` is `{"__blazen_session_ref__": key}`, as in events. A dict of the user's that
holds `$blazen` or `__blazen_session_ref__` is tagged `dict`, so it is never mistaken for either.
Aliasing is not kept: a list referenced twice is decoded as two equal lists.
"""

import base64
import binascii
import datetime as dt
import decimal
import enum
import functools
import math
import pathlib
import pickle
import pkgutil
import re
import types
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from typing import Annotated, Any, Final, final

import attrs
import cattrs
import msgspec
from cattrs.preconf.json import make_converter

from ._errors import SnapshotError
from ._events import (
    BUILTIN_EVENTS,
    Count,
    DynamicEvent,
    Event,
    InputRequestEvent,
    InputResponseEvent,
    UsageEvent,
    event_type_id,
)
from ._records import (
    SESSION_REF_KEY,
    EncodedEvent,
    HistoryEntry,
    JournalRecord,
    PendingEvent,
    RunStatus,
    SerializedRef,
    SessionRef,
    StepShape,
    UsageTotals,
)

TAG: Final = "$blazen"
"""The reserved key of a tagged wire form."""

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_PICKLE_PROTOCOL: Final = 5

# Deeper values are pickled whole. A level of value nesting is at most 3 levels of wire form,
# so wire forms stay well inside msgspec's decoding depth (the interpreter's recursion limit).
_MAX_DEPTH: Final = 100
_MAX_WIRE_DEPTH: Final = 400


# ---------------------------------------------------------------------------------------------
# The cattrs converter: JSON preconf, tightened so that what it produces is plain builtins and
# what it rebuilds is the very value (hooks that would lose information raise instead, and the
# value then goes to pickle).


class _NotExact(ValueError):
    """A hook's text form would not give back the same value (e.g. a zoneinfo timezone)."""


def _is_struct(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, msgspec.Struct)


def _enum_value(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _is_pure_path(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, pathlib.PurePath)


def _exact_iso(
    parse: Callable[[str], dt.datetime | dt.time],
) -> Callable[[dt.datetime | dt.time], str]:
    """ISO text of a datetime or time, refused unless parsing it gives back the same tzinfo."""

    def unstructure(value: dt.datetime | dt.time) -> str:
        text = value.isoformat()
        back = parse(text)
        # timezone equality compares offsets only, so compare names too; a zoneinfo zone is
        # equal only to itself, so it is refused here (and pickled whole).
        if (
            back.tzinfo != value.tzinfo
            or back.tzname() != value.tzname()
            or back.fold != value.fold
        ):
            raise _NotExact(f"{value!r} does not survive ISO 8601 text")
        return text

    return unstructure


def _structure_str(parse: Callable[[str], Any]) -> Callable[[Any, Any], Any]:
    def structure(raw: Any, _cls: Any) -> Any:
        if type(raw) is not str:
            raise TypeError(f"expected str, got {type(raw).__name__}")
        return parse(raw)

    return structure


def _structure_timedelta(raw: Any, _cls: Any) -> dt.timedelta:
    if type(raw) is not list or len(raw) != 3 or any(type(part) is not int for part in raw):
        raise TypeError("expected [days, seconds, microseconds]")
    return dt.timedelta(days=raw[0], seconds=raw[1], microseconds=raw[2])


def _structure_complex(raw: Any, _cls: Any) -> complex:
    if type(raw) is not list or len(raw) != 2 or any(type(part) is not float for part in raw):
        raise TypeError("expected [real, imag]")
    return complex(raw[0], raw[1])


def _structure_path(raw: Any, cls: type[pathlib.PurePath]) -> pathlib.PurePath:
    if type(raw) is not str:
        raise TypeError(f"expected str, got {type(raw).__name__}")
    return cls(raw)


def _make_converter() -> cattrs.Converter:
    converter = make_converter()
    converter.register_unstructure_hook(dt.datetime, _exact_iso(dt.datetime.fromisoformat))
    converter.register_structure_hook(dt.datetime, _structure_str(dt.datetime.fromisoformat))
    converter.register_unstructure_hook(dt.time, _exact_iso(dt.time.fromisoformat))
    converter.register_structure_hook(dt.time, _structure_str(dt.time.fromisoformat))
    converter.register_structure_hook(dt.date, _structure_str(dt.date.fromisoformat))
    converter.register_unstructure_hook(dt.timedelta, lambda v: [v.days, v.seconds, v.microseconds])
    converter.register_structure_hook(dt.timedelta, _structure_timedelta)
    converter.register_unstructure_hook(decimal.Decimal, str)
    converter.register_structure_hook(decimal.Decimal, _structure_str(decimal.Decimal))
    converter.register_unstructure_hook(uuid.UUID, str)
    converter.register_structure_hook(uuid.UUID, _structure_str(uuid.UUID))
    converter.register_unstructure_hook(complex, lambda v: [v.real, v.imag])
    converter.register_structure_hook(complex, _structure_complex)
    converter.register_unstructure_hook_func(_is_pure_path, str)
    converter.register_structure_hook_func(_is_pure_path, _structure_path)
    # The JSON preconf passes str and int enums through as enum objects; the wire wants their
    # values. Singledispatch is consulted first and finds `str` before `Enum` in a StrEnum's
    # MRO, so the scalar hooks themselves unwrap enums.
    converter.register_unstructure_hook(enum.Enum, _enum_value)
    for scalar in (str, int, float):
        converter.register_unstructure_hook(scalar, _enum_value)
    # msgspec Structs (Events included) by msgspec itself: it knows renames, tags, array_like.
    converter.register_unstructure_hook_func(_is_struct, msgspec.to_builtins)
    converter.register_structure_hook_func(_is_struct, lambda raw, cls: msgspec.convert(raw, cls))
    return converter


_CONVERTER: Final = _make_converter()

# msgspec: untyped encoders, and decoders into raw builtins (snapshots are version-checked and
# migrated as plain dicts before `msgspec.convert` types them).
_MSGPACK_ENCODER: Final = msgspec.msgpack.Encoder()
_JSON_ENCODER: Final = msgspec.json.Encoder()
_MSGPACK_RAW_DECODER: Final = msgspec.msgpack.Decoder(dict[str, Any])
_JSON_RAW_DECODER: Final = msgspec.json.Decoder(dict[str, Any])


# ---------------------------------------------------------------------------------------------
# Values


class _Unencodable(Exception):
    """Internal: a value neither cattrs nor pickle can carry; `path` grows as it unwinds."""

    def __init__(self, value: Any, reason: str) -> None:
        super().__init__(reason)
        self.type_name = _type_name(type(value))
        self.reason = reason
        self.path: list[str] = []


class _Undecodable(Exception):
    """Internal: a malformed wire form; `path` grows as it unwinds."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _where(path: list[str]) -> str:
    """`path` (innermost first) as ` at ['a'][0]`; a very deep one is cut short."""
    if not path:
        return ""
    outer = path[::-1]
    shown = "".join(outer[:8]) + ("..." if len(outer) > 8 else "")
    return f" at {shown}"


def is_utf8(value: str) -> bool:
    """True unless the str holds lone surrogates, which UTF-8 (so JSON, MessagePack) refuses."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def resolve_type_path(type_path: str) -> Any:
    """What `module:QualName` names, importing the module (errors propagate)."""
    if type_path.count(":") != 1:
        raise ValueError(f"{type_path!r} is not of the form 'module:QualName'")
    return pkgutil.resolve_name(type_path)


def type_path_of(cls: type) -> str:
    """`module:QualName` of a class (whether importing it gives `cls` back is not checked)."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _type_path(cls: type) -> str | None:
    """`module:QualName` if importing that gives back `cls`, else None (a local class...)."""
    if "<" in cls.__qualname__:
        return None
    path = type_path_of(cls)
    try:
        found = resolve_type_path(path)
    except Exception:  # any failure to import it means it cannot be named
        return None
    return path if found is cls else None


def _b64(data: bytes | bytearray) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if type(text) is not str:
        raise _Undecodable(f"expected base64 str, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Undecodable(f"bad base64: {exc}") from exc


def _encode_items(value: Iterable[Any], objects: bool, depth: int) -> list[Any]:
    out: list[Any] = []
    index = 0
    try:
        for index, item in enumerate(value):  # noqa: B007  # `index` is read on failure
            out.append(_encode(item, objects, depth))
    except _Unencodable as exc:
        exc.path.append(f"[{index}]")
        raise
    return out


def _canonical(items: list[Any]) -> list[Any]:
    """A set's encoded items in a fixed order, so equal sets have equal wire forms."""
    return sorted(items, key=_JSON_ENCODER.encode)


def _encode(value: Any, objects: bool, depth: int = 0) -> Any:
    """The wire form of `value`; with `objects=False`, only builtins are allowed (no type/pickle).

    `depth` counts the containers around `value`. Raises `_Unencodable`, or `RecursionError`
    for a cycle or nesting deeper than `_MAX_DEPTH`.
    """
    if depth > _MAX_DEPTH:
        raise RecursionError(f"nested more than {_MAX_DEPTH} deep")
    depth += 1
    cls = type(value)
    if value is None or cls is bool:
        return value
    if cls is str:
        if is_utf8(value):
            return value
    elif cls is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return value
        return {TAG: "int", "v": hex(value)}
    elif cls is float:
        if math.isfinite(value):
            return value
        return {TAG: "float", "v": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    elif cls is list:
        return _encode_items(value, objects, depth)
    elif cls is dict:
        if TAG not in value and SESSION_REF_KEY not in value:
            out: dict[str, Any] = {}
            key: Any = None
            try:
                for key, item in value.items():
                    if type(key) is not str or not is_utf8(key):
                        break
                    out[key] = _encode(item, objects, depth)
                else:
                    return out
            except _Unencodable as exc:
                exc.path.append(f"[{key!r}]")
                raise
        pairs = ([k, v] for k, v in value.items())
        return {TAG: "dict", "v": _encode_items(pairs, objects, depth)}
    elif cls is tuple:
        return {TAG: "tuple", "v": _encode_items(value, objects, depth)}
    elif cls is set:
        return {TAG: "set", "v": _canonical(_encode_items(value, objects, depth))}
    elif cls is frozenset:
        return {TAG: "frozenset", "v": _canonical(_encode_items(value, objects, depth))}
    elif cls is bytes:
        return {TAG: "bytes", "v": _b64(value)}
    elif cls is bytearray:
        return {TAG: "bytearray", "v": _b64(value)}
    if not objects:
        raise _Unencodable(value, "not a builtin")
    return _encode_object(value, depth)


_FAILED: Final = object()


def _try_cattrs(value: Any, depth: int) -> Any:
    """cattrs' form of `value`, encoded, if structuring it gives back an equal value of its type."""
    cls = type(value)
    try:
        raw = _CONVERTER.unstructure(value)
        wire = _encode(raw, objects=False, depth=depth)
        back = _CONVERTER.structure(raw, cls)
        if type(back) is cls and bool(back == value):
            return wire
    except Exception:  # cattrs, the hooks and user __eq__ may raise anything: not exact
        pass
    return _FAILED


def _pickle(value: Any, type_path: str | None) -> dict[str, Any]:
    try:
        data = pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
        pickle.loads(data)  # proves it will load (unpickling can fail where pickling did not)
    except Exception as exc:  # pickle raises many kinds (PicklingError, TypeError, ...)
        raise _Unencodable(
            value,
            f"cattrs cannot round-trip it and pickle failed ({type(exc).__name__}: {exc})",
        ) from exc
    return {TAG: "pickle", "t": type_path or _type_name(type(value)), "v": _b64(data)}


def _try_struct(value: msgspec.Struct, depth: int) -> Any:
    """`{field: wire form}` of a Struct if its class rebuilds it from those fields.

    Field by field (as events are), so a field typed `Any` keeps its value's type, where
    `msgspec.to_builtins` would turn a datetime into a str.
    """
    cls = type(value)
    fields: dict[str, Any] = {}
    for name in cls.__struct_fields__:
        try:
            fields[name] = _encode(getattr(value, name), objects=True, depth=depth)
        except _Unencodable as exc:
            exc.path.append(f".{name}")
            raise
    try:
        if bool(cls(**{name: getattr(value, name) for name in fields}) == value):
            return fields
    except Exception:  # __post_init__ or a user __eq__ may raise anything: not exact
        pass
    return _FAILED


def _encode_object(value: Any, depth: int) -> Any:
    cls = type(value)
    if cls is SessionRef:
        return {SESSION_REF_KEY: value.key}
    if cls.__module__ == "__main__":  # it would resume only in this very process
        raise _Unencodable(
            value,
            "its class is defined in __main__ (the script being run), which a process "
            "resuming the snapshot cannot import; define the class in an importable module",
        )
    type_path = _type_path(cls)
    if type_path is not None:
        if isinstance(value, msgspec.Struct):
            wire = _try_struct(value, depth)
            if wire is not _FAILED:
                return {TAG: "struct", "t": type_path, "v": wire}
        wire = _try_cattrs(value, depth)
        if wire is not _FAILED:
            return {TAG: "type", "t": type_path, "v": wire}
    return _pickle(value, type_path)


def _encode_top(value: Any, what: str) -> Any:
    try:
        return _encode(value, objects=True)
    except _Unencodable as exc:
        raise SnapshotError(
            f"cannot snapshot {what}: the value{_where(exc.path)} of type {exc.type_name} "
            f"cannot be encoded: {exc.reason}"
        ) from exc.__cause__
    except RecursionError as exc:
        # A cycle (or very deep nesting): pickle keeps cycles, so try it on the whole value.
        try:
            return _pickle(value, _type_path(type(value)))
        except _Unencodable:
            raise SnapshotError(
                f"cannot snapshot {what}: the value (of type {_type_name(type(value))}) "
                "is cyclic or nested too deeply, and pickle failed too"
            ) from exc


def encode_value(value: Any, *, key: str) -> Any:
    """The wire form of one state value: JSON-native builtins that decode to an equal value.

    Raises `SnapshotError` naming `key`, the place inside the value and its type when neither
    cattrs (checked: it must give back an equal value of the same type) nor pickle can carry it.
    """
    return _encode_top(value, f"key {key!r}")


def _expect_keys(wire: dict[str, Any], keys: frozenset[str]) -> None:
    if wire.keys() != keys:
        raise _Undecodable(
            f"tag {wire[TAG]!r} wants the keys {sorted(keys)}, got {sorted(map(str, wire))}"
        )


_ITEMS_KEYS: Final = frozenset({TAG, "v"})
_TYPED_KEYS: Final = frozenset({TAG, "t", "v"})


def _decode_items(items: Any, objects: bool) -> list[Any]:
    if type(items) is not list:
        raise _Undecodable(f"expected a list of items, got {type(items).__name__}")
    out: list[Any] = []
    index = 0
    try:
        for index, item in enumerate(items):  # noqa: B007  # `index` is read on failure
            out.append(_decode(item, objects))
    except _Undecodable as exc:
        exc.path.append(f"[{index}]")
        raise
    return out


def _resolve_class(type_path: Any) -> type:
    try:
        cls = resolve_type_path(type_path) if type(type_path) is str else None
    except Exception as exc:  # importing runs arbitrary module code
        raise _Undecodable(f"cannot import type {type_path!r}: {exc!r}") from exc
    if not isinstance(cls, type):
        raise _Undecodable(f"{type_path!r} is not a class")
    return cls


def _decode_tagged(wire: dict[str, Any], objects: bool) -> Any:
    tag = wire[TAG]
    if tag in ("tuple", "set", "frozenset"):
        _expect_keys(wire, _ITEMS_KEYS)
        items = _decode_items(wire["v"], objects)
        try:
            return tuple(items) if tag == "tuple" else (set if tag == "set" else frozenset)(items)
        except TypeError as exc:  # unhashable items
            raise _Undecodable(f"bad {tag}: {exc}") from exc
    if tag == "dict":
        _expect_keys(wire, _ITEMS_KEYS)
        pairs = _decode_items(wire["v"], objects)
        try:
            return {k: v for k, v in pairs}  # noqa: C416  # each pair must unpack to two
        except (TypeError, ValueError) as exc:
            raise _Undecodable(f"bad dict: {exc}") from exc
    if tag in ("bytes", "bytearray"):
        _expect_keys(wire, _ITEMS_KEYS)
        data = _unb64(wire["v"])
        return data if tag == "bytes" else bytearray(data)
    if tag == "int":
        _expect_keys(wire, _ITEMS_KEYS)
        text = wire["v"]
        try:
            if type(text) is not str:
                raise TypeError(f"expected str, got {type(text).__name__}")
            return int(text, 16)
        except (TypeError, ValueError) as exc:
            raise _Undecodable(f"bad int: {exc}") from exc
    if tag == "float":
        _expect_keys(wire, _ITEMS_KEYS)
        if wire["v"] not in ("nan", "inf", "-inf"):
            raise _Undecodable(f"bad float {wire['v']!r}")
        return float(wire["v"])
    if objects and tag == "type":
        _expect_keys(wire, _TYPED_KEYS)
        cls = _resolve_class(wire["t"])
        raw = _decode(wire["v"], objects=False)
        try:
            return _CONVERTER.structure(raw, cls)
        except Exception as exc:  # cattrs and user hooks may raise anything
            raise _Undecodable(f"cannot rebuild {wire['t']}: {exc!r}") from exc
    if objects and tag == "struct":
        _expect_keys(wire, _TYPED_KEYS)
        cls = _resolve_class(wire["t"])
        if not issubclass(cls, msgspec.Struct):
            raise _Undecodable(f"{wire['t']!r} is not a msgspec Struct")
        if type(wire["v"]) is not dict:
            raise _Undecodable(f"expected a dict of fields, got {type(wire['v']).__name__}")
        fields: dict[str, Any] = {}
        name: Any = None
        try:
            for name, field_wire in wire["v"].items():
                fields[name] = _decode(field_wire, objects=True)
        except _Undecodable as exc:
            exc.path.append(f".{name}")
            raise
        try:
            return cls(**fields)
        except Exception as exc:  # a missing field, or the class's own checks
            raise _Undecodable(f"cannot rebuild {wire['t']}: {exc!r}") from exc
    if objects and tag == "pickle":
        _expect_keys(wire, _TYPED_KEYS)
        data = _unb64(wire["v"])
        try:
            return pickle.loads(data)
        except Exception as exc:  # unpickling may raise anything
            raise _Undecodable(f"cannot unpickle {wire['t']!r}: {exc!r}") from exc
    if tag in ("type", "struct", "pickle"):
        raise _Undecodable(f"tag {tag!r} inside the form of a 'type' tag")
    raise _Undecodable(f"unknown tag {tag!r}")


def _decode(wire: Any, objects: bool) -> Any:
    cls = type(wire)
    if wire is None or cls is str or cls is bool or cls is int or cls is float:
        return wire
    if cls is list:
        return _decode_items(wire, objects)
    if cls is dict:
        if TAG in wire:
            return _decode_tagged(wire, objects)
        if SESSION_REF_KEY in wire:
            if not objects or len(wire) != 1 or type(wire[SESSION_REF_KEY]) is not str:
                raise _Undecodable("malformed session ref")
            return SessionRef(key=wire[SESSION_REF_KEY])
        out: dict[str, Any] = {}
        key: Any = None
        try:
            for key, item in wire.items():
                if type(key) is not str:
                    raise _Undecodable(f"dict key of type {type(key).__name__}")
                out[key] = _decode(item, objects)
        except _Undecodable as exc:
            exc.path.append(f"[{key!r}]")
            raise
        return out
    raise _Undecodable(f"{cls.__name__} is not part of a wire form")


def _decode_top(wire: Any, what: str) -> Any:
    try:
        return _decode(wire, objects=True)
    except _Undecodable as exc:
        raise SnapshotError(
            f"cannot restore {what}: bad wire form{_where(exc.path)}: {exc.reason}"
        ) from (exc.__cause__ or exc)
    except RecursionError as exc:
        raise SnapshotError(f"cannot restore {what}: wire form nested too deeply") from exc


def decode_value(wire: Any, *, key: str) -> Any:
    """The value a wire form stands for (the inverse of `encode_value`).

    Imports the modules named by `type` tags and unpickles `pickle` tags: decode only
    snapshots you trust. Raises `SnapshotError` naming `key` for any malformed or
    unloadable part.
    """
    return _decode_top(wire, f"key {key!r}")


def find_non_wire(value: Any) -> str | None:
    """What keeps `value` from being a wire form (e.g. `"float nan at ['a'][0]"`), or None."""
    try:
        _check_wire(value)
    except _Undecodable as exc:
        return f"{exc.reason}{_where(exc.path)}"
    except RecursionError:
        return "nested too deeply"
    return None


def _check_wire(value: Any, depth: int = 0) -> None:
    if depth > _MAX_WIRE_DEPTH:
        raise _Undecodable(f"nested more than {_MAX_WIRE_DEPTH} deep")
    depth += 1
    cls = type(value)
    if value is None or cls is bool:
        return
    if cls is str:
        if not is_utf8(value):
            raise _Undecodable("str with lone surrogates")
        return
    if cls is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _Undecodable("int outside signed 64-bit")
        return
    if cls is float:
        if not math.isfinite(value):
            raise _Undecodable(f"float {value!r}")
        return
    if cls is list:
        index = 0
        try:
            for index, item in enumerate(value):  # noqa: B007  # `index` is read on failure
                _check_wire(item, depth)
        except _Undecodable as exc:
            exc.path.append(f"[{index}]")
            raise
        return
    if cls is dict:
        key: Any = None
        try:
            for key, item in value.items():
                if type(key) is not str or not is_utf8(key):
                    raise _Undecodable(f"dict key {key!r}")
                _check_wire(item, depth)
        except _Undecodable as exc:
            exc.path.append(f"[{key!r}]")
            raise
        return
    raise _Undecodable(f"{cls.__name__} is not a wire type")


# ---------------------------------------------------------------------------------------------
# Events


_MAIN_ID: Final = "__main__."


def _by_name(types: Iterable[type[Event]]) -> dict[str, set[type[Event]]]:
    named: dict[str, set[type[Event]]] = {}
    for cls in types:
        named.setdefault(cls.__qualname__, set()).add(cls)
    return named


def unportable_event_ids(types: Iterable[type[Event]]) -> dict[str, list[str]]:
    """`__main__` ids of `types` that `known_event_types` cannot alias -> the ids sharing it.

    A process that imports the script as a module could not tell which class is meant.
    """
    return {
        event_type_id(cls): sorted(event_type_id(other) for other in found if other is not cls)
        for found in _by_name(types).values()
        if len(found) > 1
        for cls in found
        if event_type_id(cls).startswith(_MAIN_ID)
    }


def known_event_types(types: Iterable[type[Event]]) -> dict[str, type[Event]]:
    """Type id -> class for `types` and the built-in events, for `decode_event`.

    A script's events have ids `__main__.Name`, which the classes lose where the script is
    imported as a module; so `__main__.Name` also stands for the one class of `types` named
    `Name` (for none if several are). `DynamicEvent` is not among them: it never travels
    under its own type id.
    """
    classes = set(types)
    known = {
        _MAIN_ID + name: next(iter(found))
        for name, found in _by_name(classes).items()
        if len(found) == 1
    }
    known.update((event_type_id(cls), cls) for cls in BUILTIN_EVENTS)
    known.update((event_type_id(cls), cls) for cls in classes)
    return known


# Built-in events whose fields the engine reads, so their types must hold (msgspec does not
# check at construction): a float token count or an int request id would break every later
# snapshot.
_CHECKED_EVENTS: Final = frozenset({UsageEvent, InputRequestEvent, InputResponseEvent})


def builtin_event_problem(event: Event) -> str | None:
    """What makes a built-in event unfit to enter a run or a snapshot, or None."""
    cls = type(event)
    if cls not in _CHECKED_EVENTS:
        return None
    try:
        msgspec.convert(msgspec.structs.asdict(event), cls)
    except msgspec.ValidationError as exc:
        return f"{cls.__name__}: {exc}"
    if isinstance(event, UsageEvent) and not math.isfinite(event.cost_usd):
        return f"UsageEvent: cost_usd must be finite, got {event.cost_usd!r}"
    return None


def encode_event(event: Event) -> EncodedEvent:
    """An event as its type id and `{field name: wire form}`.

    A `DynamicEvent` is written under the type id it carries, with its data as the payload
    (already wire forms), so a workflow that knows that type re-types it on decoding.
    Raises `SnapshotError` naming the type id and field when a field cannot be encoded.
    """
    if type(event) is DynamicEvent:
        problem = find_non_wire(event.data)
        if problem is not None:
            raise SnapshotError(
                f"cannot snapshot DynamicEvent {event.type_id!r}: its data is not a wire form "
                f"({problem})"
            )
        return EncodedEvent(type_id=event.type_id, payload=dict(event.data))
    type_id = event_type_id(event)
    payload = {
        name: _encode_top(getattr(event, name), f"field {name!r} of event {type_id!r}")
        for name in type(event).__struct_fields__
    }
    return EncodedEvent(type_id=type_id, payload=payload)


def decode_event(encoded: EncodedEvent, known: Mapping[str, type[Event]]) -> Event:
    """The event `encoded` stands for: an instance of `known[type_id]`, else a `DynamicEvent`.

    Payload entries that are not fields of the class are ignored (as msgspec does), unless the
    class forbids unknown fields. Raises `SnapshotError` naming the type id when a field cannot
    be decoded or the class refuses the fields.
    """
    cls = known.get(encoded.type_id)
    if cls is None:
        return DynamicEvent(type_id=encoded.type_id, data=dict(encoded.payload))
    fields = cls.__struct_fields__
    unknown = encoded.payload.keys() - set(fields)
    if unknown and cls.__struct_config__.forbid_unknown_fields:
        raise SnapshotError(
            f"cannot restore event {encoded.type_id!r}: unknown fields {sorted(unknown)}"
        )
    kwargs = {
        name: _decode_top(wire, f"field {name!r} of event {encoded.type_id!r}")
        for name, wire in encoded.payload.items()
        if name in fields
    }
    try:
        event = cls(**kwargs)
    except Exception as exc:  # a missing field, or the class's own __post_init__ checks
        raise SnapshotError(
            f"cannot restore event {encoded.type_id!r} as {_type_name(cls)}: {exc}"
        ) from exc
    problem = builtin_event_problem(event)
    if problem is not None:
        raise SnapshotError(f"cannot restore event {encoded.type_id!r}: {problem}")
    return event


# ---------------------------------------------------------------------------------------------
# Layouts: the map layout of older versions to today's array-like Structs

Upgrade = Callable[[Any], Any]
"""Rewrites a raw value (plain builtins, as decoded untyped) into today's layout."""

_REQUIRED: Final = object()


def to_array_layout(target: Any) -> Upgrade:
    """The upgrade of raw values of type `target` written while its array-like Structs were
    maps: each such map becomes the list of the Struct's fields in order (a field the map
    left out takes its default). Walks `target`'s Structs, collections, dicts and optionals;
    what is not a map where one was written is left for the typed decoding to judge.
    """
    return _layout_upgrade(msgspec.inspect.type_info(target)) or _unchanged


def _unchanged(raw: Any) -> Any:
    return raw


def _layout_upgrade(info: msgspec.inspect.Type) -> Upgrade | None:
    """The upgrade of a value of `info`; None when no array-like Struct can be inside it."""
    if isinstance(info, msgspec.inspect.StructType):
        fields = [(f.encode_name, _layout_upgrade(f.type), _raw_default(f)) for f in info.fields]
        if info.array_like:
            return functools.partial(_map_to_array, info.cls.__name__, fields)
        changed = [(name, upgrade) for name, upgrade, _ in fields if upgrade is not None]
        return functools.partial(_upgrade_fields, changed) if changed else None
    if isinstance(info, msgspec.inspect.CollectionType):
        item = _layout_upgrade(info.item_type)
        return None if item is None else functools.partial(_upgrade_items, item)
    if isinstance(info, msgspec.inspect.DictType):
        value = _layout_upgrade(info.value_type)
        return None if value is None else functools.partial(_upgrade_values, value)
    if isinstance(info, msgspec.inspect.UnionType):
        found = [upgrade for upgrade in map(_layout_upgrade, info.types) if upgrade is not None]
        if len(found) > 1:  # a map could be either member: refuse the type, at import
            raise TypeError(f"cannot tell which member of {info} a raw value belongs to")
        return found[0] if found else None
    return None


def _raw_default(field: msgspec.inspect.Field) -> Any:
    if field.required:
        return _REQUIRED
    factory = field.default_factory
    return msgspec.to_builtins(field.default if factory is msgspec.NODEFAULT else factory())


def _map_to_array(name: str, fields: list[tuple[str, Upgrade | None, Any]], raw: Any) -> Any:
    if type(raw) is not dict:
        return raw
    out: list[Any] = []
    for key, upgrade, default in fields:
        if key in raw:
            out.append(raw[key] if upgrade is None else upgrade(raw[key]))
        elif default is _REQUIRED:
            raise ValueError(f"{name}: required field {key!r} is missing")
        else:
            out.append(default)
    return out


def _upgrade_fields(fields: list[tuple[str, Upgrade]], raw: Any) -> Any:
    if type(raw) is not dict:
        return raw
    return {**raw, **{key: upgrade(raw[key]) for key, upgrade in fields if key in raw}}


def _upgrade_items(upgrade: Upgrade, raw: Any) -> Any:
    return [upgrade(item) for item in raw] if type(raw) is list else raw


def _upgrade_values(upgrade: Upgrade, raw: Any) -> Any:
    return {key: upgrade(value) for key, value in raw.items()} if type(raw) is dict else raw


_ERROR_PATH: Final = re.compile(r"`\$([^`]*)`$")
_PATH_PART: Final = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


def _name_fields(error: Exception, target: Any) -> str:
    """`error`'s message, a msgspec path in it (`$.pending_events[1][4]`) naming the fields of
    array-like Structs rather than their positions (`$.pending_events[1].attempt`)."""
    return _ERROR_PATH.sub(lambda found: _named_path(found[1], target), str(error))


def _named_path(path: str, target: Any) -> str:
    info: msgspec.inspect.Type | None = msgspec.inspect.type_info(target)
    named = "`$"
    for name, index in _PATH_PART.findall(path):
        if isinstance(info, msgspec.inspect.UnionType):  # an optional: its other type
            info = next(t for t in info.types if not isinstance(t, msgspec.inspect.NoneType))
        if isinstance(info, msgspec.inspect.StructType):
            field = info.fields[int(index)] if index else _field_named(info, name)
            named, info = f"{named}.{field.name}", field.type
        elif isinstance(info, msgspec.inspect.CollectionType):
            named, info = f"{named}[{index}]", info.item_type
        elif isinstance(info, msgspec.inspect.DictType):
            named, info = f"{named}[{index}]", info.value_type
        else:  # inside an `Any`: as msgspec wrote it
            named, info = named + (f".{name}" if name else f"[{index}]"), None
    return named + "`"


def _field_named(info: msgspec.inspect.StructType, encode_name: str) -> msgspec.inspect.Field:
    return next(field for field in info.fields if field.encode_name == encode_name)


# ---------------------------------------------------------------------------------------------
# Snapshots

SNAPSHOT_VERSION: Final = 3
"""The snapshot format this blazen_trio writes; older ones are migrated on decoding.

Version 3 writes events, pending events and child memos as arrays of their fields (see
`EncodedEvent`). Version 2 sealed the document: `{"version": 2, "crc32": N, "snapshot":
{...}}`, N the CRC-32 of the exact bytes of `snapshot`. Version 1 was the bare document, with
no checksum.
"""

Migration = Callable[[dict[str, Any]], dict[str, Any]]
"""Upgrades a raw snapshot (plain builtins) of version N to version N + 1."""


@final
class WorkflowSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A run, paused or in motion, as plain data; `to_bytes()` / `from_bytes()` carry it.

    `state`, `metadata` and event payloads hold wire forms (`encode_value`), and
    construction checks that they are, so every snapshot encodes losslessly in both formats.
    `created_at` must be timezone-aware with a zero UTC offset. Raises `SnapshotError` when
    built from values that could not survive encoding.
    """

    version: int = SNAPSHOT_VERSION
    workflow_name: str
    run_id: str
    created_at: Annotated[dt.datetime, msgspec.Meta(tz=True)]
    status: RunStatus
    state: dict[str, Any]
    pending_events: list[PendingEvent]
    collect_buffers: dict[str, list[EncodedEvent]]
    input_requests: list[EncodedEvent]
    usage: UsageTotals
    history: list[HistoryEntry]
    metadata: dict[str, Any]
    session_refs: dict[str, SerializedRef]
    active_time: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Seconds of active run time used so far (the workflow timeout counts only those)."""
    journal_seq: Count = 0
    """The last journal record this snapshot includes (durable runs; 0 otherwise)."""
    routed_seq: Count = 0
    """The highest routing order given so far: a resumed run numbers on from it, so no
    delivery (nor `ctx.idempotency_key`) is ever numbered twice."""
    result: EncodedEvent | None = None
    """The StopEvent of a completed run (as a store keeps finished runs)."""
    error: str | None = None
    """What a failed or aborted run ended with (as a store keeps finished runs)."""
    input_responses: list[EncodedEvent] = []
    """Answers recorded by `store.respond` while no process held the run; routed on resume."""
    fingerprint: dict[str, StepShape] | None = None
    """The workflow's steps when the snapshot was taken: what each accepts and emits."""

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
        """The snapshot as MessagePack, sealed with a CRC-32 of its bytes."""
        return _seal(self, _MSGPACK, "MessagePack")

    def to_json(self) -> bytes:
        """The snapshot as JSON (UTF-8 bytes), sealed with a CRC-32 of its bytes."""
        return _seal(self, _JSON, "JSON")

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        migrations: Mapping[int, Migration] | None = None,
    ) -> "WorkflowSnapshot":
        """Decode `to_bytes()` output; older versions are migrated, newer ones refused.

        `migrations` (version N -> function upgrading a raw dict to N + 1) are merged over
        `DEFAULT_MIGRATIONS`. Raises `SnapshotError` for anything that is not a valid snapshot:
        corrupt bytes (the checksum), a wrong shape, a value out of range.
        """
        _check_input(data, "from_bytes")
        return _unseal(data, _MSGPACK, "MessagePack", migrations)

    @classmethod
    def from_json(
        cls,
        data: bytes | bytearray | memoryview | str,
        *,
        migrations: Mapping[int, Migration] | None = None,
    ) -> "WorkflowSnapshot":
        """Decode `to_json()` output (bytes or str); as `from_bytes` otherwise."""
        _check_input(data, "from_json")
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogatepass")
        return _unseal(data, _JSON, "JSON", migrations)


def _from_version_1(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 2 changed only the sealing around the document, not the document."""
    return raw


_SNAPSHOT_TO_ARRAYS: Final = to_array_layout(WorkflowSnapshot)


def _from_version_2(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 3 writes events, pending events and child memos as arrays, not maps."""
    upgraded: dict[str, Any] = _SNAPSHOT_TO_ARRAYS(raw)
    return upgraded


DEFAULT_MIGRATIONS: Final[Mapping[int, Migration]] = types.MappingProxyType(
    {1: _from_version_1, 2: _from_version_2}
)
"""The built-in migrations, keyed by the version they upgrade from."""


def check_workflow_name(snapshot: WorkflowSnapshot, name: str) -> None:
    """Raise `SnapshotError` unless `snapshot` was taken from the workflow called `name`."""
    if snapshot.workflow_name != name:
        raise SnapshotError(f"snapshot is of workflow {snapshot.workflow_name!r}, not {name!r}")


_DECODING: ContextVar[bool] = ContextVar("blazen_trio_decoding_snapshot", default=False)


class _Sealed(msgspec.Struct, frozen=True):
    """The encoded form of a snapshot: its document's exact bytes and their CRC-32.

    Read first, skipping over the document; a version 1 snapshot (the bare document) reads as
    `version` only, with `snapshot` empty.
    """

    version: Any = 1  # snapshots before the field existed were version 1; checked below
    crc32: Any = None
    snapshot: msgspec.Raw = msgspec.Raw()


class _SealedBin(msgspec.Struct, frozen=True):
    """`_Sealed` as MessagePack writes it since version 3: the document as a bin, which
    reading the seal skips in O(1), where an embedded document is walked over (a third of a
    millisecond per megabyte). JSON has no bin: it embeds the document."""

    version: int
    crc32: int
    snapshot: bytes


_BIN_MARKERS: Final = frozenset({0xC4, 0xC5, 0xC6})  # MessagePack's bin 8, bin 16, bin 32
_MSGPACK_BIN: Final = msgspec.msgpack.Decoder(memoryview)


def _msgpack_document(sealed: msgspec.Raw) -> msgspec.Raw | memoryview:
    """The sealed document's bytes, without a copy: a bin's content, or (version 2) the
    embedded document itself. `sealed` is one whole MessagePack object (the seal decoded)."""
    if len(sealed) and memoryview(sealed)[0] in _BIN_MARKERS:
        return _MSGPACK_BIN.decode(sealed)
    return sealed


def _embedded(version: int, crc32: int, document: bytes) -> _Sealed:
    return _Sealed(version, crc32, msgspec.Raw(document))


def _as_is(sealed: msgspec.Raw) -> msgspec.Raw:
    return sealed


@attrs.frozen
class _Format:
    """The encoder and decoders of one of the two snapshot formats, and how it seals."""

    encoder: msgspec.msgpack.Encoder | msgspec.json.Encoder
    sealed: msgspec.msgpack.Decoder[_Sealed] | msgspec.json.Decoder[_Sealed]
    document: msgspec.msgpack.Decoder[WorkflowSnapshot] | msgspec.json.Decoder[WorkflowSnapshot]
    raw: msgspec.msgpack.Decoder[dict[str, Any]] | msgspec.json.Decoder[dict[str, Any]]
    seal: Callable[[int, int, bytes], _Sealed | _SealedBin]
    opened: Callable[[msgspec.Raw], msgspec.Raw | memoryview]


_MSGPACK: Final = _Format(
    _MSGPACK_ENCODER,
    msgspec.msgpack.Decoder(_Sealed),
    msgspec.msgpack.Decoder(WorkflowSnapshot),
    _MSGPACK_RAW_DECODER,
    _SealedBin,
    _msgpack_document,
)
_JSON: Final = _Format(
    _JSON_ENCODER,
    msgspec.json.Decoder(_Sealed),
    msgspec.json.Decoder(WorkflowSnapshot),
    _JSON_RAW_DECODER,
    _embedded,
    _as_is,
)


def _seal(snapshot: WorkflowSnapshot, form: _Format, codec: str) -> bytes:
    try:
        document = form.encoder.encode(snapshot)
    except Exception as exc:  # e.g. a str field holding lone surrogates
        raise SnapshotError(f"cannot encode snapshot as {codec}: {exc}") from exc
    return form.encoder.encode(form.seal(SNAPSHOT_VERSION, zlib.crc32(document), document))


class _SealedRecord(msgspec.Struct, frozen=True):
    """The stored form of a journal record: its bytes, their CRC-32 and the record version."""

    version: int
    crc32: int
    record: msgspec.Raw


JOURNAL_VERSION: Final = 2
"""The journal record format this blazen_trio writes.

Version 2 writes events, pending events and child memos as arrays, as snapshot version 3
does; version 1 records (maps) are upgraded when read.
"""

_RECORD: Final = msgspec.msgpack.Decoder(JournalRecord)
_SEALED_RECORD: Final = msgspec.msgpack.Decoder(_SealedRecord)
_RECORD_TO_ARRAYS: Final = to_array_layout(JournalRecord)
_MSGPACK_ANY_DECODER: Final = msgspec.msgpack.Decoder()


def encode_record(record: JournalRecord) -> bytes:
    """A journal record as sealed MessagePack (version, CRC-32, the record's bytes)."""
    try:
        body = _MSGPACK_ENCODER.encode(record)
    except Exception as exc:  # e.g. a str field holding lone surrogates
        raise SnapshotError(f"cannot encode journal record {record.seq}: {exc}") from exc
    return _MSGPACK_ENCODER.encode(
        _SealedRecord(JOURNAL_VERSION, zlib.crc32(body), msgspec.Raw(body))
    )


def decode_record(data: bytes | bytearray | memoryview) -> JournalRecord:
    """The record `encode_record` wrote, of this version or an older one; `SnapshotError` for
    corrupt data or a version this blazen_trio does not know."""
    try:
        sealed = _SEALED_RECORD.decode(data)
    except Exception as exc:  # DecodeError, ValidationError, ...
        raise SnapshotError(f"not a journal record: {exc}") from exc
    if sealed.version > JOURNAL_VERSION:
        raise SnapshotError(
            f"journal record version {sealed.version} is newer than this blazen_trio supports "
            f"({JOURNAL_VERSION})"
        )
    if sealed.version < 1:
        raise SnapshotError(f"journal record version {sealed.version} never existed")
    if zlib.crc32(sealed.record) != sealed.crc32:
        raise SnapshotError("journal record is corrupt: its CRC-32 does not match its bytes")
    try:
        if sealed.version == JOURNAL_VERSION:
            return _RECORD.decode(sealed.record)
        raw = _RECORD_TO_ARRAYS(_MSGPACK_ANY_DECODER.decode(sealed.record))
        return msgspec.convert(raw, JournalRecord)
    except Exception as exc:  # DecodeError, ValidationError, a required field missing, ...
        raise SnapshotError(f"invalid journal record: {_name_fields(exc, JournalRecord)}") from exc


def _unseal(
    data: Any, form: _Format, codec: str, migrations: Mapping[int, Migration] | None
) -> WorkflowSnapshot:
    try:
        sealed = form.sealed.decode(data)
    except Exception as exc:  # DecodeError, ValidationError, RecursionError, ...
        raise SnapshotError(f"not a {codec} snapshot: {exc}") from exc
    version = _check_version(sealed.version)
    if version >= 2:
        if type(sealed.crc32) is not int or not len(sealed.snapshot):
            raise SnapshotError(f"not a sealed {codec} snapshot: no crc32 or no snapshot")
        data = form.opened(sealed.snapshot)  # whole: the seal decoded
        if zlib.crc32(data) != sealed.crc32:
            raise SnapshotError(f"{codec} snapshot is corrupt: its CRC-32 does not match its bytes")
    if version == SNAPSHOT_VERSION:
        return _decode_current(data, form.document, codec)
    raw = _decode_raw(data, form.raw.decode, codec)
    return _from_raw(raw, migrations)


def _check_input(data: object, method: str) -> None:
    text_too = method == "from_json"
    accepted = (bytes, bytearray, memoryview, str) if text_too else (bytes, bytearray, memoryview)
    if not isinstance(data, accepted):
        wanted = "bytes or str" if text_too else "bytes"
        raise SnapshotError(
            f"WorkflowSnapshot.{method} expects {wanted}, got {type(data).__name__}"
        )


def _check_version(version: Any) -> int:
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
        raise SnapshotError(
            f"invalid {codec} snapshot: {_name_fields(exc, WorkflowSnapshot)}"
        ) from exc
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
    version = _check_version(raw.get("version", 1))  # version 1 did not always write it
    if version < SNAPSHOT_VERSION:
        raw = _migrate(raw, version, {**DEFAULT_MIGRATIONS, **(migrations or {})})
    try:
        return msgspec.convert(raw, WorkflowSnapshot)
    except SnapshotError:  # from __post_init__: it already says what is wrong
        raise
    except Exception as exc:  # ValidationError, RecursionError, ...
        raise SnapshotError(f"invalid snapshot: {_name_fields(exc, WorkflowSnapshot)}") from exc


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
    for entry in snapshot.history:  # JSON cannot carry inf or nan: refuse them in both forms
        for name in ("timestamp", "duration"):
            number = getattr(entry, name)
            if number is not None and not math.isfinite(number):
                problems.append(f"history entry {entry.sequence}: {name} is {number!r}")

    if not deep:
        return problems

    def check(value: Any, where: str) -> None:
        problem = find_non_wire(value)
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
    return problems


_EVENT_TO_ARRAY: Final = to_array_layout(EncodedEvent)


def encoded_event_from_builtins(raw: Any) -> EncodedEvent:
    """The `EncodedEvent` that `msgspec.to_builtins` made into `raw`, in today's layout or the
    map of older versions; `SnapshotError` for anything else."""
    try:
        return msgspec.convert(_EVENT_TO_ARRAY(raw), EncodedEvent)
    except Exception as exc:  # ValidationError, a required field missing, ...
        raise SnapshotError(f"not an encoded event: {_name_fields(exc, EncodedEvent)}") from exc


def encode_encoded_event(event: EncodedEvent) -> bytes:
    """An event already in wire form, as MessagePack (an answer queued for a run's holder)."""
    return _MSGPACK_ENCODER.encode(event)


def decode_encoded_event(data: bytes | bytearray | memoryview) -> EncodedEvent:
    """What `encode_encoded_event` wrote, today or (as a map) before snapshot version 3;
    `SnapshotError` for bytes that are not one."""
    try:
        raw = _MSGPACK_ANY_DECODER.decode(data)
    except Exception as exc:  # DecodeError, RecursionError, ...
        raise SnapshotError(f"not an encoded event: {exc}") from exc
    return encoded_event_from_builtins(raw)
