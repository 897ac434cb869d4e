"""Hypothesis strategies for codec values and snapshots (to move into blazen_trio.testing)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import Any

from hypothesis import strategies as st

from blazen_trio._codec import encode_value
from blazen_trio._history import HistoryEntry, HistoryKind
from blazen_trio._snapshot import (
    EncodedEvent,
    PendingEvent,
    SerializedRef,
    UsageTotals,
    WorkflowSnapshot,
)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class Shade(enum.StrEnum):
    """An enum for generated values (module level, so the codec can name it)."""

    LIGHT = "light"
    DARK = "dark"


@dataclasses.dataclass(frozen=True)
class Tagged:
    """A dataclass for generated values."""

    name: str
    size: int
    shade: Shade


_UTC_OFFSETS = st.sampled_from(
    [
        None,
        dt.UTC,
        dt.timezone(dt.timedelta(hours=5, minutes=30)),
        dt.timezone(-dt.timedelta(hours=8)),
    ]
)

hashable_scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # unbounded: big ints are tagged
    st.floats(allow_nan=False),  # NaN != NaN; NaN has its own example tests
    st.text(),
    st.binary(),
    st.decimals(allow_nan=False),
    st.datetimes(timezones=_UTC_OFFSETS),
    st.dates(),
    st.times(timezones=_UTC_OFFSETS),
    st.timedeltas(),
    st.uuids(),
    st.sampled_from(Shade),
    st.builds(
        Tagged, name=st.text(), size=st.integers(INT64_MIN, INT64_MAX), shade=st.sampled_from(Shade)
    ),
)
"""Scalars and frozen records the codec supports, all hashable (so they fit in sets and keys)."""


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
        st.dictionaries(st.integers(), children, max_size=3),
        st.dictionaries(
            st.sampled_from(["$blazen", "__blazen_session_ref__"]), children, max_size=2
        ),
        st.frozensets(hashable_scalars, max_size=3),
        st.sets(hashable_scalars, max_size=3),
        st.builds(bytearray, st.binary(max_size=8)),
    )


supported_values: st.SearchStrategy[Any] = st.recursive(
    hashable_scalars, _containers, max_leaves=12
)
"""Values `encode_value` keeps exactly (without pickle), nested in the builtin containers."""

wire_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(INT64_MIN, INT64_MAX),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
"""JSON-native values, as found inside wire forms."""

wire_forms: st.SearchStrategy[Any] = supported_values.map(lambda v: encode_value(v, key="gen"))
"""Wire forms of supported values, as `encode_value` writes them."""

names = st.text(min_size=1, max_size=16)

encoded_events: st.SearchStrategy[EncodedEvent] = st.builds(
    EncodedEvent,
    type_id=names,
    payload=st.dictionaries(st.text(max_size=8), wire_forms, max_size=3),
)

pending_events: st.SearchStrategy[PendingEvent] = st.builds(
    PendingEvent,
    event=encoded_events,
    source_step=st.none() | names,
    target_step=st.none() | names,
    attempt=st.integers(1, 10),
)

_counts = st.integers(0, INT64_MAX)
_seconds = st.floats(min_value=0, max_value=1e12)

usage_totals: st.SearchStrategy[UsageTotals] = st.builds(
    UsageTotals,
    prompt_tokens=_counts,
    completion_tokens=_counts,
    total_tokens=_counts,
    cost_usd=st.floats(allow_nan=False, allow_infinity=False),
)

history_entries: st.SearchStrategy[HistoryEntry] = st.builds(
    HistoryEntry,
    sequence=st.integers(1, INT64_MAX),
    kind=st.sampled_from(HistoryKind),
    timestamp=_seconds,
    step=st.none() | names,
    event_type=st.none() | names,
    attempt=st.none() | st.integers(1, 10),
    duration=st.none() | _seconds,
    detail=st.none() | st.text(),
)


@st.composite
def _session_refs(draw: st.DrawFn) -> dict[str, SerializedRef]:
    keys = draw(st.lists(st.uuids().map(str), max_size=3, unique=True))
    return {
        key: SerializedRef(
            key=key,
            lifetime=draw(st.sampled_from(["until_run_end", "until_explicit_drop"])),
            codec=draw(st.sampled_from(["pickle", "protocol"])),
            type_path=draw(names),
            data=draw(st.binary(max_size=16)).hex(),
        )
        for key in keys
    }


snapshots: st.SearchStrategy[WorkflowSnapshot] = st.builds(
    WorkflowSnapshot,
    workflow_name=names,
    run_id=st.uuids().map(str),
    created_at=st.datetimes(timezones=st.just(dt.UTC)),
    status=st.sampled_from(["running", "paused", "waiting_for_input"]),
    state=st.dictionaries(st.text(max_size=8), wire_forms, max_size=4),
    pending_events=st.lists(pending_events, max_size=3),
    collect_buffers=st.dictionaries(names, st.lists(encoded_events, max_size=2), max_size=2),
    input_requests=st.lists(encoded_events, max_size=2),
    usage=usage_totals,
    history=st.lists(history_entries, max_size=3),
    metadata=st.dictionaries(st.text(max_size=8), wire_values, max_size=3),
    session_refs=_session_refs(),
    active_time=_seconds,
)
"""Valid snapshots of every shape (their state is made of real wire forms)."""
