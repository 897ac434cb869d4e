"""A durable run's journal writer: records go to the store in order, each durable before the
effects it describes are routed.

The run adds records synchronously (so their order is the order of its commits) and awaits the
one it needs; a single writer task appends them to the store one after another. Waits and
appends are shielded: a step cancelled while its commit is being written still learns whether
it is durable, and the store never sees half a record.
"""

from collections import deque
from typing import Any

import attrs
import trio

from ._errors import CheckpointStoreError
from ._records import JournalRecord
from ._stores import CheckpointStore


@attrs.define(eq=False)
class _Queued:
    record: JournalRecord
    written: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class JournalWriter:
    """Appends one run's records to its store, in order, from one task (`serve`)."""

    store: CheckpointStore
    run_id: str
    seq: int  # the last record added
    _queue: deque[_Queued] = attrs.Factory(deque)
    _work: trio.lowlevel.ParkingLot = attrs.Factory(trio.lowlevel.ParkingLot)
    _failure: CheckpointStoreError | None = None
    _lock: trio.Lock = attrs.Factory(trio.Lock)  # one drain at a time: records go in order
    _stopped: bool = False  # `serve` has exited: `write` appends its record itself

    def add(self, at: float, **fields: Any) -> trio.Event:
        """Queue the run's next record; the event is set once it is durable (or failed)."""
        self.seq += 1
        queued = _Queued(JournalRecord(seq=self.seq, at=at, **fields))
        self._queue.append(queued)
        self._work.unpark_all()
        return queued.written

    async def write(self, at: float, **fields: Any) -> None:
        """Queue a record and wait until it is durable; `CheckpointStoreError` if not."""
        written = self.add(at, **fields)
        with trio.CancelScope(shield=True):
            if self._stopped:  # the run is being cancelled and its writer task is gone
                await self.drain()
            await written.wait()
        self.check()

    def check(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def serve(self) -> None:
        """The writer task: append queued records until cancelled; what is queued then (a
        step that completed as the run was cancelled awaits it) is appended before it exits."""
        try:
            while True:
                while not self._queue:
                    await self._work.park()
                await self.drain()
        finally:
            self._stopped = True
            await self.drain()

    async def drain(self) -> None:
        """Append everything queued, shielded (a short, bounded write)."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                await self._drain_queue()

    async def _drain_queue(self) -> None:
        while self._queue:
            queued = self._queue[0]
            if self._failure is None:
                try:
                    await self.store.append(self.run_id, queued.record)
                except CheckpointStoreError as error:
                    self._failure = error
                except Exception as exc:  # a store of the user's: say which store failed
                    self._failure = CheckpointStoreError(
                        f"checkpoint store {self.store!r} failed to append record "
                        f"{queued.record.seq} of run {self.run_id!r}: {exc!r}"
                    )
                    self._failure.__cause__ = exc
            self._queue.popleft()
            queued.written.set()
