"""The run's own append-only history (with `Workflow(history=True)`), bounded in memory."""

from __future__ import annotations

import time
from collections import deque

from ._checks import is_count
from ._codec import is_utf8
from ._records import HistoryEntry, HistoryKind

DEFAULT_HISTORY_LIMIT = 100_000


class History:
    """Keeps the newest `limit` entries; `dropped` counts the older ones let go."""

    def __init__(self, limit: int = DEFAULT_HISTORY_LIMIT) -> None:
        if not is_count(limit, 1):
            raise ValueError(f"history limit must be an int >= 1, got {limit!r}")
        self.entries: deque[HistoryEntry] = deque(maxlen=limit)
        self.dropped = 0
        self._sequence = 0

    @classmethod
    def restore(cls, entries: list[HistoryEntry], limit: int) -> History:
        """A history going on from a snapshot's entries, sequence numbers continuing."""
        history = cls(limit)
        history.entries.extend(entries)
        history.dropped = max(0, len(entries) - limit)
        history._sequence = entries[-1].sequence if entries else 0
        return history

    def record(
        self,
        kind: HistoryKind,
        *,
        step: str | None = None,
        event_type: str | None = None,
        attempt: int | None = None,
        duration: float | None = None,
        detail: str | None = None,
    ) -> None:
        self._sequence += 1
        if detail is not None and not is_utf8(detail):
            # Error texts may hold lone surrogates (os.fsdecode): escape them, or no snapshot
            # holding this entry could be encoded.
            detail = detail.encode("utf-8", "backslashreplace").decode("utf-8")
        if len(self.entries) == self.entries.maxlen:
            self.dropped += 1
        self.entries.append(
            HistoryEntry(
                sequence=self._sequence,
                kind=kind,
                timestamp=time.time(),
                step=step,
                event_type=event_type,
                attempt=attempt,
                duration=duration,
                detail=detail,
            )
        )
