"""Checkpoint stores: the protocol every store meets, and the in-memory one.

A store keeps, per run, a base snapshot and the journal records written since; `load` folds
them with the journal's reducer (`_journal.fold`). Every `compact_every` records the store
folds the journal into a new base snapshot and drops the records before it, so a run's
journal stays bounded. The SQLite and PostgreSQL stores keep the same shape on disk.
"""

import builtins  # `list` is a method name of the stores
import datetime
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal, Protocol, TypeVar, final, runtime_checkable

import attrs
import trio

from ._codec import WorkflowSnapshot, encode_event
from ._errors import CheckpointStoreError, SnapshotError, UnknownInputRequest
from ._events import InputResponseEvent
from ._journal import fold
from ._records import CheckpointInfo, EncodedEvent, JournalRecord, RunInfo, RunStatus

FINISHED: Final = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.ABORTED)
"""The statuses of runs that are over: what `prune` removes by default."""

DEFAULT_COMPACT_EVERY: Final = 256
"""Journal records per run between compactions, when a store is given a number."""

AUTO: Final = "auto"
"""The stores' default `compact_every`: compact once a run's journal (at least
`DEFAULT_COMPACT_EVERY` records) has grown as large as its base snapshot. Each compaction
rewrites the whole base, so tying it to the journal's size keeps its cost per record bounded
whatever the size of the state (a run with 100,000 keys compacts rarely, a small one often)."""

CompactEvery = int | Literal["auto"] | None
"""Journal records per run between compactions (a new base snapshot)."""


@runtime_checkable
class CheckpointStore(Protocol):
    """Where durable runs keep their snapshots and journals (all methods async).

    Raises `CheckpointStoreError` when the store cannot be read or written.
    """

    async def save(self, snapshot: WorkflowSnapshot) -> None:
        """Make `snapshot` the run's base (a new run, a compaction, a resumed snapshot);
        the journal records it includes are dropped."""

    async def append(self, run_id: str, record: JournalRecord) -> None:
        """Add the run's next journal record, durably; refused unless it follows the last."""

    async def load(self, run_id: str, *, at: int | None = None) -> WorkflowSnapshot | None:
        """The run as of its last record (or as of record `at`); None for an unknown run."""

    async def list(
        self, *, workflow: str | None = None, status: RunStatus | Iterable[RunStatus] | None = None
    ) -> builtins.list[RunInfo]:
        """The stored runs, oldest first, optionally of one workflow and some statuses."""

    async def history(self, run_id: str) -> builtins.list[CheckpointInfo]:
        """One entry per kept journal record (seq, committing step, time), oldest first."""

    async def delete(self, run_id: str) -> None:
        """Forget the run (nothing happens for an unknown one)."""

    async def prune(
        self, *, older_than: datetime.timedelta, statuses: Iterable[RunStatus] = FINISHED
    ) -> int:
        """Delete runs in `statuses` not updated for `older_than`; returns how many."""

    async def respond(self, run_id: str, request_id: str, response: Any) -> None:
        """Answer an input request of a run no process holds; the next recovery routes it.

        Raises `UnknownInputRequest` if the run has no such outstanding request.
        """


def statuses_of(status: RunStatus | Iterable[RunStatus] | None) -> frozenset[RunStatus] | None:
    """`list`'s `status=` as a set of statuses (None: all)."""
    if status is None:
        return None
    if isinstance(status, str):
        return frozenset({RunStatus(status)})
    return frozenset(RunStatus(item) for item in status)


def check_compact_every(compact_every: object) -> CompactEvery:
    """`compact_every` as the stores take it: records between compactions, `"auto"` (see
    `AUTO`), or None for never."""
    if compact_every == AUTO or compact_every is None:
        return compact_every
    if type(compact_every) is not int or compact_every < 1:
        raise ValueError(
            f"compact_every must be an int >= 1, 'auto' or None, got {compact_every!r}"
        )
    return compact_every


def compaction_due(
    compact_every: CompactEvery, kept: int, sizes: Callable[[], tuple[int, int]]
) -> bool:
    """Whether a run keeping `kept` journal records after its base gets a new base now.

    `sizes()` gives (journal, base) in one unit; asked only under `AUTO`, and only every
    `DEFAULT_COMPACT_EVERY` records.
    """
    if compact_every is None:
        return False
    if compact_every != AUTO:
        return kept >= compact_every
    if kept < DEFAULT_COMPACT_EVERY or kept % DEFAULT_COMPACT_EVERY:
        return False
    journal, base = sizes()
    return journal >= base


T = TypeVar("T")


def decode_stored(
    store: str, run_id: str, what: str, decode: Callable[[bytes], T], data: bytes
) -> T:
    """Stored bytes decoded; unreadable ones (corrupt, or a newer format) are the store's
    `CheckpointStoreError`, naming the store, the run and what was being read."""
    try:
        return decode(data)
    except SnapshotError as exc:
        raise CheckpointStoreError(
            f"checkpoint store {store}: {what} of run {run_id!r} is unreadable: {exc}"
        ) from exc


def no_run(run_id: str) -> CheckpointStoreError:
    """The error for writing to a run the store does not hold."""
    return CheckpointStoreError(f"no run {run_id!r} in this store")


def check_follows(run_id: str, seq: int, last: int) -> None:
    """Refuse a journal record that does not come right after the run's last one."""
    if seq != last + 1:
        raise CheckpointStoreError(
            f"run {run_id!r}: journal record {seq} does not follow record "
            f"{last} (another writer holds this run?)"
        )


def check_kept(run_id: str, at: int, base_seq: int, last: int) -> None:
    """Refuse `load(at=)` for a record compaction dropped or one not yet written."""
    if not base_seq <= at <= last:
        raise CheckpointStoreError(
            f"run {run_id!r}: record {at} is not kept (kept: {base_seq} to {last})"
        )


def status_after(status: RunStatus, records: Iterable[JournalRecord]) -> RunStatus:
    """The run's status once `records` (in order) follow a base of `status`."""
    for record in records:
        status = record.status or status
    return status


def cutoff(clock: Callable[[], float], older_than: object) -> float:
    """`prune`'s limit: runs updated before this time are old enough."""
    if not isinstance(older_than, datetime.timedelta):
        raise TypeError(f"older_than must be a datetime.timedelta, got {type(older_than).__name__}")
    return clock() - older_than.total_seconds()


def encode_answer(request_id: str, response: Any) -> EncodedEvent:
    """`respond`'s answer in wire form, encoded by the caller (it may run the value's code)."""
    return encode_event(InputResponseEvent(request_id=request_id, response=response))


def answer_record(
    snapshot: WorkflowSnapshot, request_id: str, answer: EncodedEvent, *, at: float
) -> JournalRecord:
    """The record `respond` appends: the request answered, the answer kept for routing."""
    requests = {item.payload.get("request_id") for item in snapshot.input_requests}
    if request_id not in requests:
        raise UnknownInputRequest(request_id)
    return JournalRecord(
        seq=snapshot.journal_seq + 1,
        at=at,
        answered=request_id,
        response=answer,
        status=RunStatus.RUNNING if len(requests) == 1 else None,
    )


@attrs.define(eq=False)
class _StoredRun:
    base: WorkflowSnapshot
    records: list[JournalRecord]
    created_at: float
    updated_at: float

    @property
    def seq(self) -> int:
        return self.records[-1].seq if self.records else self.base.journal_seq

    def sizes(self) -> tuple[int, int]:
        """(journal, base) in items: a record against an entry of the base's state or work."""
        base = self.base
        items = len(base.state) + len(base.pending_events) + len(base.history)
        items += sum(map(len, base.collect_buffers.values())) + len(base.session_refs)
        return len(self.records), items

    def latest(self) -> WorkflowSnapshot:
        return fold(self.base, self.records)

    def info(self) -> RunInfo:
        return RunInfo(
            run_id=self.base.run_id,
            workflow_name=self.base.workflow_name,
            status=status_after(self.base.status, self.records),
            created_at=self.created_at,
            updated_at=self.updated_at,
            seq=self.seq,
        )


@final
class MemoryCheckpointStore:
    """A checkpoint store in this process's memory: for tests and for runs that only need
    pause, fork and history within one process. Nothing survives the process.

    `clock` gives the times the store records (`RunInfo.created_at`, `updated_at`) and
    `prune` compares with; tests pass their own.
    """

    def __init__(
        self,
        *,
        compact_every: CompactEvery = AUTO,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._compact_every = check_compact_every(compact_every)
        self._clock = clock
        self._runs: dict[str, _StoredRun] = {}

    def __repr__(self) -> str:
        return f"<MemoryCheckpointStore runs={len(self._runs)}>"

    async def save(self, snapshot: WorkflowSnapshot) -> None:
        await trio.lowlevel.checkpoint()
        now = self._clock()
        stored = self._runs.get(snapshot.run_id)
        if stored is None:
            self._runs[snapshot.run_id] = _StoredRun(snapshot, [], now, now)
            return
        stored.base = snapshot
        stored.records = [r for r in stored.records if r.seq > snapshot.journal_seq]
        stored.updated_at = now

    async def append(self, run_id: str, record: JournalRecord) -> None:
        await trio.lowlevel.checkpoint()
        stored = self._stored(run_id)
        check_follows(run_id, record.seq, stored.seq)
        stored.records.append(record)
        stored.updated_at = self._clock()
        if compaction_due(self._compact_every, len(stored.records), stored.sizes):
            stored.base = stored.latest()
            stored.records.clear()

    async def load(self, run_id: str, *, at: int | None = None) -> WorkflowSnapshot | None:
        await trio.lowlevel.checkpoint()
        stored = self._runs.get(run_id)
        if stored is None:
            return None
        if at is None:
            return stored.latest()
        check_kept(run_id, at, stored.base.journal_seq, stored.seq)
        return fold(stored.base, [r for r in stored.records if r.seq <= at])

    async def list(
        self, *, workflow: str | None = None, status: RunStatus | Iterable[RunStatus] | None = None
    ) -> builtins.list[RunInfo]:
        await trio.lowlevel.checkpoint()
        wanted = statuses_of(status)
        infos = [stored.info() for stored in self._runs.values()]
        return sorted(
            (
                info
                for info in infos
                if (workflow is None or info.workflow_name == workflow)
                and (wanted is None or info.status in wanted)
            ),
            key=lambda info: info.created_at,
        )

    async def history(self, run_id: str) -> builtins.list[CheckpointInfo]:
        await trio.lowlevel.checkpoint()
        stored = self._runs.get(run_id)
        if stored is None:
            return []
        return [CheckpointInfo(r.seq, r.step, r.at) for r in stored.records]

    async def delete(self, run_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self._runs.pop(run_id, None)

    async def prune(
        self, *, older_than: datetime.timedelta, statuses: Iterable[RunStatus] = FINISHED
    ) -> int:
        await trio.lowlevel.checkpoint()
        limit = cutoff(self._clock, older_than)
        wanted = statuses_of(statuses) or frozenset()
        doomed = [
            run_id
            for run_id, stored in self._runs.items()
            if stored.updated_at < limit and stored.info().status in wanted
        ]
        for run_id in doomed:
            del self._runs[run_id]
        return len(doomed)

    async def respond(self, run_id: str, request_id: str, response: Any) -> None:
        await trio.lowlevel.checkpoint()
        answer = encode_answer(request_id, response)
        stored = self._stored(run_id)
        record = answer_record(stored.latest(), request_id, answer, at=self._clock())
        await self.append(run_id, record)

    def _stored(self, run_id: str) -> _StoredRun:
        stored = self._runs.get(run_id)
        if stored is None:
            raise no_run(run_id)
        return stored
