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

_MISSING: Final = object()


@attrs.define(slots=True)
class _StateWrite:
    key: str
    previous: Any  # _MISSING when the key did not exist
    written: Any  # _MISSING for a delete

    def undo(self, state: RunState) -> None:
        current = state.values.get(self.key, _MISSING)
        if current is not self.written:
            return  # a later write by another step wins; keep it
        if self.previous is _MISSING:
            state.values.pop(self.key, None)
        else:
            state.values[self.key] = self.previous


@attrs.define(slots=True)
class _CollectAdd:
    step: str
    event: Event

    def undo(self, state: RunState) -> None:
        buffer = state.buffers.get(self.step, [])
        for index, held in enumerate(buffer):
            if held is self.event:
                del buffer[index]
                return


@attrs.define(slots=True)
class _CollectTake:
    step: str
    taken: list[Event]

    def undo(self, state: RunState) -> None:
        state.buffers.setdefault(self.step, [])[0:0] = self.taken


UndoRecord = _StateWrite | _CollectAdd | _CollectTake
UndoLog = list[UndoRecord]


def _take_matching(buffer: list[Event], expected: Sequence[type[Event]]) -> list[Event] | None:
    """Remove and return one buffered event per expected type, in `expected` order."""
    used: set[int] = set()
    chosen: list[Event] = []
    for wanted in expected:
        index = next(
            (i for i, ev in enumerate(buffer) if i not in used and isinstance(ev, wanted)), None
        )
        if index is None:
            return None
        used.add(index)
        chosen.append(buffer[index])
    buffer[:] = [ev for i, ev in enumerate(buffer) if i not in used]
    return chosen


@attrs.define(eq=False)
class RunState:
    """Key/value state, per-step collect buffers and live objects of one run."""

    values: dict[str, Any] = attrs.Factory(dict)
    buffers: dict[str, list[Event]] = attrs.Factory(dict)
    objects: dict[str, Any] = attrs.Factory(dict)

    def set(self, key: str, value: Any, log: UndoLog) -> None:
        if not isinstance(key, str):
            raise TypeError(f"state keys are str, got {type(key).__name__}")
        log.append(_StateWrite(key, self.values.get(key, _MISSING), value))
        self.values[key] = value

    def delete(self, key: str, log: UndoLog) -> None:
        previous = self.values.pop(key)  # KeyError for a missing key, like dict
        log.append(_StateWrite(key, previous, _MISSING))

    def collect(
        self, step: str, event: Event, expected: Sequence[type[Event]], log: UndoLog
    ) -> list[Event] | None:
        if not any(isinstance(event, wanted) for wanted in expected):
            raise ValueError(
                f"collect_events: {type(event).__qualname__} is not among the expected types "
                f"{[t.__qualname__ for t in expected]}"
            )
        buffer = self.buffers.setdefault(step, [])
        buffer.append(event)
        log.append(_CollectAdd(step, event))
        taken = _take_matching(buffer, expected)
        if taken is not None:
            log.append(_CollectTake(step, taken))
        return taken

    def rollback(self, log: UndoLog) -> None:
        for record in reversed(log):
            record.undo(self)
        log.clear()

    def without(self, logs: Iterable[UndoLog]) -> RunState:
        """A copy with the given (uncommitted) attempts' effects taken back; self is unchanged."""
        copy = RunState(
            dict(self.values), {step: list(buf) for step, buf in self.buffers.items()}, {}
        )
        for log in logs:
            for record in reversed(log):
                record.undo(copy)
        return copy
