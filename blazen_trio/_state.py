"""The run's shared state, with an undo log per step attempt.

Writes apply at once (steps see each other's writes, as users expect of a shared store), and
each attempt logs how to take its writes back. A step that fails before a retry, or is cancelled
by pause, is rolled back, so re-running it applies its effects once. See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs

from ._events import Event
from ._refs import RefDrop, RefInsert

_MISSING: Final = object()


@attrs.define(slots=True, eq=False)
class _StateWrite:
    """One uncommitted write. `below` is the uncommitted write it replaced, if any.

    Undoing the newest write of a key restores the value from before the newest write below
    it that is still live, so the writes of attempts undone earlier stay undone.
    """

    key: str
    value: Any  # _MISSING for a delete
    previous: Any  # _MISSING when the key did not exist
    below: _StateWrite | None
    undone: bool = False

    def undo(self, state: RunState, virtual: set[int] | None) -> None:
        if virtual is None:
            self.undone = True
        else:
            virtual.add(id(self))
        if state.writers.get(self.key) is not self:
            return  # a newer write is current; undoing it will skip past this one
        target = self
        while target.below is not None and (
            target.below.undone or (virtual is not None and id(target.below) in virtual)
        ):
            target = target.below
        if target.previous is _MISSING:
            state.values.pop(self.key, None)
        else:
            state.values[self.key] = target.previous
        if target.below is None:
            del state.writers[self.key]
        else:
            state.writers[self.key] = target.below

    def settle(self, state: RunState) -> None:
        if state.writers.get(self.key) is self:
            del state.writers[self.key]
        self.below = None


@attrs.define(slots=True, eq=False)
class _CollectAdd:
    step: str
    event: Event

    def undo(self, state: RunState, virtual: set[int] | None) -> None:
        buffer = state.buffers.get(self.step, [])
        for index, held in enumerate(buffer):
            if held is self.event:
                del buffer[index]
                return

    def settle(self, state: RunState) -> None:
        pass


@attrs.define(slots=True, eq=False)
class _CollectTake:
    step: str
    taken: list[Event]

    def undo(self, state: RunState, virtual: set[int] | None) -> None:
        state.buffers.setdefault(self.step, [])[0:0] = self.taken

    def settle(self, state: RunState) -> None:
        pass


UndoRecord = _StateWrite | _CollectAdd | _CollectTake | RefInsert | RefDrop
UndoLog = list[UndoRecord]


@attrs.frozen
class Changes:
    """What one attempt changed, as its commit's journal record needs it."""

    written: dict[str, Any]
    deleted: list[str]
    buffer_ops: list[tuple[str, Event, bool]]  # (step, event, taken)
    refs_inserted: list[str]
    refs_dropped: list[str]


def changes_of(log: UndoLog) -> Changes:
    """The effects of an attempt's log (before `settle` clears it): each key's last write."""
    last: dict[str, Any] = {}
    ops: list[tuple[str, Event, bool]] = []
    inserted: list[str] = []
    dropped: list[str] = []
    for record in log:
        if isinstance(record, _StateWrite):
            last[record.key] = record.value
        elif isinstance(record, _CollectAdd):
            ops.append((record.step, record.event, False))
        elif isinstance(record, _CollectTake):
            ops.extend((record.step, event, True) for event in record.taken)
        elif isinstance(record, RefInsert):
            inserted.append(record.key)
        else:
            dropped.append(record.key)
    return Changes(
        written={key: value for key, value in last.items() if value is not _MISSING},
        deleted=[key for key, value in last.items() if value is _MISSING],
        buffer_ops=ops,
        refs_inserted=[key for key in inserted if key not in dropped],
        refs_dropped=dropped,
    )


def _match(buffer: Sequence[Event], expected: Sequence[type[Event]]) -> list[int] | None:
    """Buffer indices, one per expected type, earliest events first; None if some lack one."""
    kinds = set(expected)
    if any(a is not b and issubclass(a, b) for a in kinds for b in kinds):
        return _match_overlapping(buffer, expected)
    # Unrelated types: each event fits one kind at most, so first come, first taken.
    waiting: dict[type[Event], list[int]] = {kind: [] for kind in kinds}
    for index, event in enumerate(buffer):
        for kind in kinds:
            if isinstance(event, kind):
                waiting[kind].append(index)
                break
    chosen: list[int] = []
    taken = dict.fromkeys(kinds, 0)
    for kind in expected:
        if taken[kind] == len(waiting[kind]):
            return None
        chosen.append(waiting[kind][taken[kind]])
        taken[kind] += 1
    return chosen


def _match_overlapping(
    buffer: Sequence[Event], expected: Sequence[type[Event]]
) -> list[int] | None:
    """A maximum bipartite matching, for expected types that include a class and its base."""
    owner: dict[int, int] = {}  # buffer index -> expected position

    def place(position: int, seen: set[int]) -> bool:
        fits = [
            index
            for index, event in enumerate(buffer)
            if index not in seen and isinstance(event, expected[position])
        ]
        free = next((index for index in fits if index not in owner), None)
        if free is not None:
            owner[free] = position
            return True
        seen.update(fits)
        for index in fits:
            if place(owner[index], seen):
                owner[index] = position
                return True
        return False

    if not all(place(position, set()) for position in range(len(expected))):
        return None
    chosen = {position: index for index, position in owner.items()}
    return [chosen[position] for position in range(len(expected))]


@attrs.define(eq=False)
class RunState:
    """Key/value state, per-step collect buffers and live objects of one run."""

    values: dict[str, Any] = attrs.Factory(dict)
    buffers: dict[str, list[Event]] = attrs.Factory(dict)
    objects: dict[str, Any] = attrs.Factory(dict)
    # key -> the uncommitted write that produced its current value
    writers: dict[str, _StateWrite] = attrs.Factory(dict)

    def set(self, key: str, value: Any, log: UndoLog) -> None:
        if not isinstance(key, str):
            raise TypeError(f"state keys are str, got {type(key).__name__}")
        self._log_write(key, value, log)
        self.values[key] = value

    def delete(self, key: str, log: UndoLog) -> None:
        if key not in self.values:
            raise KeyError(key)
        self._log_write(key, _MISSING, log)
        del self.values[key]

    def _log_write(self, key: str, value: Any, log: UndoLog) -> None:
        write = _StateWrite(key, value, self.values.get(key, _MISSING), self.writers.get(key))
        self.writers[key] = write
        log.append(write)

    def collect(
        self, step: str, event: Event, expected: Sequence[type[Event]], log: UndoLog
    ) -> list[Event] | None:
        # O(1) for the usual `[Done] * n`: called once per event, it must not scan `expected`.
        if not expected:
            return []  # nothing to wait for (e.g. `[Done] * n` with n == 0): nothing is kept
        if not isinstance(event, expected[0]) and not isinstance(event, tuple(set(expected))):
            names = sorted({t.__qualname__ for t in expected})
            raise ValueError(
                f"collect_events: {type(event).__qualname__} is not among the expected types "
                f"{names}"
            )
        buffer = self.buffers.setdefault(step, [])
        buffer.append(event)
        log.append(_CollectAdd(step, event))
        if len(buffer) < len(expected):
            return None
        indices = _match(buffer, expected)
        if indices is None:
            return None
        taken = [buffer[index] for index in indices]
        chosen = set(indices)
        buffer[:] = [ev for index, ev in enumerate(buffer) if index not in chosen]
        log.append(_CollectTake(step, taken))
        return taken

    def rollback(self, log: UndoLog) -> None:
        for record in reversed(log):
            record.undo(self, None)
        log.clear()

    def settle(self, log: UndoLog) -> None:
        """The attempt committed: its writes are no longer undoable."""
        for record in log:
            record.settle(self)
        log.clear()

    @staticmethod
    def inserted_refs(logs: Iterable[UndoLog]) -> frozenset[str]:
        """Keys of the session refs inserted by these uncommitted attempts."""
        return frozenset(
            record.key for log in logs for record in log if isinstance(record, RefInsert)
        )

    def without(self, logs: Iterable[UndoLog]) -> RunState:
        """A copy with the given (uncommitted) attempts' effects taken back; self is unchanged."""
        copy = RunState(
            dict(self.values),
            {step: list(buf) for step, buf in self.buffers.items()},
            {},
            dict(self.writers),
        )
        # The logs come in no particular order, so every take is put back before any add is
        # removed: an attempt's added event may have been taken by another attempt since.
        logs = list(logs)
        virtual: set[int] = set()
        for log in logs:
            for record in reversed(log):
                if isinstance(record, _CollectTake):
                    record.undo(copy, virtual)
        for log in logs:
            for record in reversed(log):
                if not isinstance(record, _CollectTake):
                    record.undo(copy, virtual)
        return copy
