"""The PostgreSQL checkpoint store, and the run queue that workers and clients share through it.

Table `blazen_trio_runs` holds each run's base snapshot (sealed `WorkflowSnapshot.to_bytes()`)
with the journal seq it includes and the last seq written; `blazen_trio_records` holds the
journal records written since (sealed `encode_record` bytes), as in the SQLite file. For
workers, a run row also says whether the run was submitted to them (`managed`), whether it has
work to do (`runnable`) and who may write it (the lease: owner, epoch, expiry on the server's
clock). `blazen_trio_controls` queues commands for runs a worker holds. The store creates and
migrates its tables itself (`blazen_trio_schema` keeps the version).

psycopg's async API is asyncio-only, so every statement runs through psycopg's sync API in a
Trio worker thread, on connections from a `psycopg_pool.ConnectionPool`. Each operation is one
transaction; a write locks its run's row (`FOR UPDATE`) before it checks the journal's last seq,
so writers of one run are serialized and a second writer is refused, never interleaved.
"""

import builtins  # `list` is a method name of the store
import collections
import contextlib
import datetime
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from types import TracebackType
from typing import Any, Final, Self, TypeVar, TypeVarTuple, cast, final

import attrs
import psycopg
import psycopg.conninfo
import psycopg_pool
import trio

from ._codec import (
    WorkflowSnapshot,
    decode_encoded_event,
    decode_record,
    encode_encoded_event,
    encode_record,
)
from ._errors import CheckpointStoreError, RunFinished, UnknownInputRequest
from ._journal import fold
from ._queue import Control, ControlOp, Lease, submitted_start
from ._records import CheckpointInfo, EncodedEvent, JournalRecord, RunInfo, RunStatus
from ._stores import (
    AUTO,
    FINISHED,
    CheckpointStore,
    CompactEvery,
    answer_record,
    check_compact_every,
    check_follows,
    check_kept,
    compaction_due,
    cutoff,
    decode_stored,
    encode_answer,
    no_run,
    status_after,
    statuses_of,
)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

SCHEMA_VERSION: Final = 2
"""The layout this blazen_trio writes; a database at a newer version is refused."""

CHANNEL: Final = "blazen_trio"
"""The LISTEN/NOTIFY channel: news that a run became runnable, finished, or got a control."""
CONTROLS_CHANNEL: Final = "blazen_trio_controls"
"""The channel of news that a held run got a control: only the workers' control loops wait for
it, so the news of every submit and release does not send each worker to read its controls."""

_MIGRATION_LOCK: Final = 0x427A5472  # "BzTr": the advisory lock held while migrating

_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """CREATE TABLE blazen_trio_runs (
            run_id text PRIMARY KEY,
            ordinal bigserial NOT NULL,
            workflow_name text NOT NULL,
            status text NOT NULL,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            base bytea NOT NULL,
            base_seq bigint NOT NULL,
            last_seq bigint NOT NULL
        )""",
        """CREATE TABLE blazen_trio_records (
            run_id text NOT NULL,
            seq bigint NOT NULL,
            step text,
            at double precision NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (run_id, seq)
        )""",
    ),
    2: (
        """ALTER TABLE blazen_trio_runs
            ADD COLUMN managed boolean NOT NULL DEFAULT false,
            ADD COLUMN runnable boolean NOT NULL DEFAULT false,
            ADD COLUMN lease_owner text,
            ADD COLUMN lease_epoch bigint NOT NULL DEFAULT 0,
            ADD COLUMN lease_until timestamptz""",
        """CREATE INDEX blazen_trio_runnable ON blazen_trio_runs (ordinal)
            WHERE managed AND runnable""",
        """CREATE TABLE blazen_trio_controls (
            id bigserial PRIMARY KEY,
            run_id text NOT NULL,
            op text NOT NULL,
            request_id text,
            answer bytea
        )""",
        "CREATE INDEX blazen_trio_controls_run ON blazen_trio_controls (run_id)",
    ),
}

_RECENTLY_FINISHED: Final = 10_000
"""Finished runs remembered by a store's listener, for waiters that look after the news."""

_LISTEN_WAIT: Final = 0.5
"""Seconds the listener thread waits for a notification before it looks at its stop flag."""

_LEASE_LIVE: Final = "(lease_owner IS NOT NULL AND lease_until > clock_timestamp())"


def _runnable(record: JournalRecord) -> bool | None:
    """What a record makes of the run's `runnable` flag (None: no change)."""
    if record.response is not None:
        return True  # an answer to route: a worker goes on with the run
    if record.status is not None:
        return record.status is RunStatus.RUNNING
    return None


@attrs.frozen
class _Db:
    """A connection inside a transaction, with the store's queries and writes."""

    connection: psycopg.Connection[Any]
    label: str
    now: float
    compact_every: CompactEvery
    retrying: bool = False  # an earlier try may have committed (the connection broke)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.connection.execute(sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.execute(sql, params).fetchone()

    def notify_controls(self) -> None:
        self.execute("SELECT pg_notify(%s, '')", (CONTROLS_CHANNEL,))

    def notify(self, run_id: str = "") -> None:
        """Tell listeners at commit that something changed: with `run_id`, that the run
        finished (for clients waiting on it); without, news for workers."""
        self.execute("SELECT pg_notify(%s, %s)", (CHANNEL, run_id))

    def decode(self, run_id: str, what: str, decode: Callable[[bytes], T], data: bytes) -> T:
        return decode_stored(str(self.label), run_id, what, decode, data)

    # -- the schema --------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create the tables, or bring them up to this version; refuse a newer database."""
        self.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        self.execute("CREATE TABLE IF NOT EXISTS blazen_trio_schema (version integer NOT NULL)")
        row = self.one("SELECT version FROM blazen_trio_schema")
        if row is None:
            if self.one("SELECT to_regclass('blazen_trio_runs')")[0] is not None:
                raise CheckpointStoreError(
                    f"checkpoint store {self.label}: table blazen_trio_runs exists but "
                    "blazen_trio_schema has no version: not a store this blazen_trio made"
                )
            self.execute("INSERT INTO blazen_trio_schema VALUES (0)")
        version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise CheckpointStoreError(
                f"checkpoint store {self.label}: schema version {version} is newer than this "
                f"blazen_trio ({SCHEMA_VERSION})"
            )
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                self.execute(statement)
        self.execute("UPDATE blazen_trio_schema SET version = %s", (SCHEMA_VERSION,))

    # -- reads -------------------------------------------------------------------------------

    def load(self, run_id: str, at: int | None) -> WorkflowSnapshot | None:
        """The base and the records up to `at` (or the last), read in one statement."""
        row = self.one(
            "SELECT base, base_seq, last_seq, (SELECT coalesce(array_agg(r.data ORDER BY r.seq), "
            "'{}') FROM blazen_trio_records r WHERE r.run_id = runs.run_id AND r.seq > "
            "runs.base_seq AND r.seq <= coalesce(%s::bigint, runs.last_seq)) "
            "FROM blazen_trio_runs runs WHERE run_id = %s",
            (at, run_id),
        )
        if row is None:
            return None
        data, base_seq, last, records = row
        if at is not None:
            check_kept(run_id, at, base_seq, last)
        base = self.decode(run_id, "the base snapshot", WorkflowSnapshot.from_bytes, data)
        decoded = [self.decode(run_id, "a journal record", decode_record, r) for r in records]
        return fold(base, decoded)

    def runs(self, workflow: str | None, wanted: frozenset[RunStatus] | None) -> list[RunInfo]:
        statuses = None if wanted is None else [status.value for status in wanted]
        rows = self.execute(
            "SELECT run_id, workflow_name, status, created_at, updated_at, last_seq "
            "FROM blazen_trio_runs WHERE (%s::text IS NULL OR workflow_name = %s) "
            "AND (%s::text[] IS NULL OR status = ANY(%s)) ORDER BY created_at, ordinal",
            (workflow, workflow, statuses, statuses),
        )
        return [
            RunInfo(run_id, name, RunStatus(status), created, updated, seq)
            for run_id, name, status, created, updated, seq in rows
        ]

    def history(self, run_id: str) -> list[CheckpointInfo]:
        rows = self.execute(
            "SELECT seq, step, at FROM blazen_trio_records WHERE run_id = %s ORDER BY seq",
            (run_id,),
        )
        return [CheckpointInfo(*row) for row in rows]

    # -- writes ------------------------------------------------------------------------------

    def check_fence(self, lease: Lease) -> None:
        """Refuse a write under a lease that another claim (or the store) has replaced."""
        row = self.one(
            "SELECT lease_owner, lease_epoch FROM blazen_trio_runs WHERE run_id = %s FOR SHARE",
            (lease.run_id,),
        )
        _refuse_lost(lease, row)

    def seqs(self, run_id: str, fence: Lease | None = None) -> tuple[int, int]:
        """The run's base seq and last seq, its row locked until the transaction ends; with
        `fence`, the write is refused unless the lease holds (checked in the same statement
        when the lease is the run's own: one round trip per journal write, not two)."""
        own = fence if fence is not None and fence.run_id == run_id else None
        if fence is not None and own is None:  # a sub-workflow's run: the fence is its root's
            self.check_fence(fence)
        row = self.one(
            "SELECT base_seq, last_seq, lease_owner, lease_epoch FROM blazen_trio_runs "
            "WHERE run_id = %s FOR UPDATE",
            (run_id,),
        )
        if own is not None:
            _refuse_lost(own, None if row is None else row[2:])
        if row is None:
            raise no_run(run_id)
        return int(row[0]), int(row[1])

    def records_after(self, run_id: str, seq: int) -> list[JournalRecord]:
        rows = self.execute(
            "SELECT data FROM blazen_trio_records WHERE run_id = %s AND seq > %s ORDER BY seq",
            (run_id, seq),
        )
        return [self.decode(run_id, "a journal record", decode_record, data) for (data,) in rows]

    def save(self, snapshot: WorkflowSnapshot, data: bytes, fence: Lease | None) -> None:
        if fence is not None:
            self.check_fence(fence)
        run_id, seq = snapshot.run_id, snapshot.journal_seq
        self.execute("SELECT 1 FROM blazen_trio_runs WHERE run_id = %s FOR UPDATE", (run_id,))
        self.execute(
            "DELETE FROM blazen_trio_records WHERE run_id = %s AND seq <= %s", (run_id, seq)
        )
        rest = self.records_after(run_id, seq)
        status = status_after(snapshot.status, rest)
        runnable = status is RunStatus.RUNNING or bool(snapshot.input_responses)
        last = rest[-1].seq if rest else seq
        self.execute(
            "INSERT INTO blazen_trio_runs (run_id, workflow_name, status, created_at, "
            "updated_at, base, base_seq, last_seq, runnable) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO UPDATE SET "
            "workflow_name = excluded.workflow_name, status = excluded.status, "
            "updated_at = excluded.updated_at, base = excluded.base, "
            "base_seq = excluded.base_seq, last_seq = excluded.last_seq, "
            "runnable = excluded.runnable",
            (run_id, snapshot.workflow_name, status.value, self.now, self.now, data, seq, last,
             runnable),
        )  # fmt: skip

    def append(
        self, run_id: str, record: JournalRecord, data: bytes, fence: Lease | None = None
    ) -> None:
        base_seq, last = self.seqs(run_id, fence)
        if self.retrying and record.seq == last and self.landed(run_id, record.seq, data):
            return  # the earlier try committed before its connection broke
        check_follows(run_id, record.seq, last)
        status = None if record.status is None else record.status.value
        self.execute(
            "WITH added AS (INSERT INTO blazen_trio_records VALUES (%s, %s, %s, %s, %s)) "
            "UPDATE blazen_trio_runs SET last_seq = %s, updated_at = %s, "
            "status = coalesce(%s, status), runnable = coalesce(%s, runnable) WHERE run_id = %s",
            (run_id, record.seq, record.step, record.at, data, record.seq, self.now, status,
             _runnable(record), run_id),
        )  # fmt: skip
        if record.status in FINISHED:
            self.notify(run_id)  # a client may wait for the result
        if compaction_due(self.compact_every, record.seq - base_seq, lambda: self.sizes(run_id)):
            self.compact(run_id)

    def sizes(self, run_id: str) -> tuple[int, int]:
        """(journal, base) of a run, in bytes."""
        journal, base = self.one(
            "SELECT (SELECT coalesce(sum(octet_length(data)), 0) FROM blazen_trio_records "
            "WHERE run_id = %s), octet_length(base) FROM blazen_trio_runs WHERE run_id = %s",
            (run_id, run_id),
        )
        return int(journal), int(base)

    def landed(self, run_id: str, seq: int, data: bytes) -> bool:
        """Whether record `seq` is the one we wrote (or compaction already folded it in)."""
        row = self.one(
            "SELECT data FROM blazen_trio_records WHERE run_id = %s AND seq = %s", (run_id, seq)
        )
        return row is None or bytes(row[0]) == data  # folded: only our write got it there

    def compact(self, run_id: str) -> None:
        """Fold the run's journal into a new base and drop the records it includes."""
        snapshot = cast(WorkflowSnapshot, self.load(run_id, None))  # the caller locked the run
        self.execute(
            "UPDATE blazen_trio_runs SET base = %s, base_seq = %s WHERE run_id = %s",
            (snapshot.to_bytes(), snapshot.journal_seq, run_id),
        )
        self.execute(
            "DELETE FROM blazen_trio_records WHERE run_id = %s AND seq <= %s",
            (run_id, snapshot.journal_seq),
        )

    def delete(self, run_id: str) -> None:
        for table in ("blazen_trio_records", "blazen_trio_controls", "blazen_trio_runs"):
            self.execute(f"DELETE FROM {table} WHERE run_id = %s", (run_id,))

    def prune(self, limit: float, statuses: frozenset[RunStatus]) -> int:
        rows = self.execute(
            "SELECT run_id FROM blazen_trio_runs WHERE updated_at < %s AND status = ANY(%s) "
            "FOR UPDATE",
            (limit, [status.value for status in statuses]),
        ).fetchall()
        for (run_id,) in rows:
            self.delete(run_id)
        return len(rows)

    # -- the queue ---------------------------------------------------------------------------

    def submit(self, snapshot: WorkflowSnapshot, data: bytes) -> None:
        row = self.one(
            "INSERT INTO blazen_trio_runs (run_id, workflow_name, status, created_at, "
            "updated_at, base, base_seq, last_seq, managed, runnable) "
            "VALUES (%s, %s, %s, %s, %s, %s, 0, 0, true, true) "
            "ON CONFLICT (run_id) DO NOTHING RETURNING run_id",
            (snapshot.run_id, snapshot.workflow_name, snapshot.status.value, self.now, self.now,
             data),
        )  # fmt: skip
        if row is not None:
            self.notify()
            return
        self.check_resubmitted(snapshot)

    def check_resubmitted(self, snapshot: WorkflowSnapshot) -> None:
        """A run id submitted again: fine (nothing to do) if it names the same submission;
        refused if the id is another workflow's, a run not submitted, or another input's."""
        run_id = snapshot.run_id
        taken, managed, data = self.one(
            "SELECT workflow_name, managed, base FROM blazen_trio_runs WHERE run_id = %s",
            (run_id,),
        )
        if taken != snapshot.workflow_name:
            raise CheckpointStoreError(f"run id {run_id!r} is taken by a run of workflow {taken!r}")
        if not managed:
            raise CheckpointStoreError(
                f"run id {run_id!r} is taken by a run that was not submitted (started in a process)"
            )
        base = self.decode(run_id, "the base snapshot", WorkflowSnapshot.from_bytes, data)
        start = submitted_start(base)
        if start is not None and start != submitted_start(snapshot):
            raise CheckpointStoreError(
                f"run id {run_id!r} was submitted with another input: a submit is idempotent "
                "only with the same workflow and input"
            )

    def claim(self, owner: str, workflows: list[str], limit: int, lease: float) -> list[Lease]:
        rows = self.execute(
            "UPDATE blazen_trio_runs runs SET lease_owner = %s, lease_epoch = "
            "runs.lease_epoch + 1, lease_until = clock_timestamp() + make_interval(secs => %s) "
            "FROM (SELECT run_id FROM blazen_trio_runs WHERE managed AND runnable "
            "AND workflow_name = ANY(%s) AND (lease_until IS NULL OR lease_until < "
            "clock_timestamp()) ORDER BY ordinal LIMIT %s FOR UPDATE SKIP LOCKED) free "
            "WHERE runs.run_id = free.run_id RETURNING runs.run_id, runs.workflow_name, "
            "runs.lease_epoch",
            (owner, lease, workflows, limit),
        )
        return [Lease(run_id, name, owner, epoch) for run_id, name, epoch in rows]

    def take(self, run_id: str, owner: str, lease: float) -> Lease | None:
        row = self.one(
            "UPDATE blazen_trio_runs SET lease_owner = %s, lease_epoch = lease_epoch + 1, "
            "lease_until = clock_timestamp() + make_interval(secs => %s) "
            f"WHERE run_id = %s AND NOT {_LEASE_LIVE} RETURNING workflow_name, lease_epoch",
            (owner, lease, run_id),
        )
        return None if row is None else Lease(run_id, row[0], owner, row[1])

    def renew(self, leases: list[Lease], lease: float) -> set[str]:
        rows = self.execute(
            "UPDATE blazen_trio_runs runs SET lease_until = clock_timestamp() + "
            "make_interval(secs => %s) FROM unnest(%s::text[], %s::text[], %s::bigint[]) "
            "AS held(run_id, owner, epoch) WHERE runs.run_id = held.run_id "
            "AND runs.lease_owner = held.owner AND runs.lease_epoch = held.epoch "
            "RETURNING runs.run_id",
            (
                lease,
                [held.run_id for held in leases],
                [held.owner for held in leases],
                [held.epoch for held in leases],
            ),
        )
        return {run_id for (run_id,) in rows}

    def release(self, lease: Lease, requeue: bool, error: str | None) -> None:
        row = self.one(
            "SELECT lease_owner, lease_epoch FROM blazen_trio_runs WHERE run_id = %s FOR UPDATE",
            (lease.run_id,),
        )
        if row is None or (row[0], row[1]) != (lease.owner, lease.epoch):
            return  # lost already: the run is another worker's
        self.execute(
            "UPDATE blazen_trio_runs SET lease_owner = NULL, lease_until = NULL WHERE run_id = %s",
            (lease.run_id,),
        )
        latest = self.latest(lease.run_id)
        changed = False
        if error is not None and latest.status not in FINISHED:
            self.add(latest, status=RunStatus.FAILED, error=error)
            changed = True
        elif requeue and latest.status is RunStatus.PAUSED:
            self.add(latest, status=RunStatus.RUNNING)
            changed = True
        if self.carry_out_queued(lease.run_id) or changed:
            latest = self.latest(lease.run_id)  # as the records just added left it
        runnable = latest.status is RunStatus.RUNNING or (
            latest.status is RunStatus.WAITING_FOR_INPUT and bool(latest.input_responses)
        )
        self.execute(
            "UPDATE blazen_trio_runs SET runnable = %s WHERE run_id = %s", (runnable, lease.run_id)
        )
        self.notify()  # the run may be runnable again, and its slot is free

    def latest(self, run_id: str) -> WorkflowSnapshot:
        snapshot = self.load(run_id, None)
        if snapshot is None:
            raise no_run(run_id)
        return snapshot

    def add(self, snapshot: WorkflowSnapshot, **fields: Any) -> None:
        """Append the run's next record, made by the store itself (no process holds the run)."""
        record = JournalRecord(seq=snapshot.journal_seq + 1, at=self.now, **fields)
        self.append(snapshot.run_id, record, encode_record(record))

    def control(
        self, run_id: str, op: ControlOp, request_id: str | None, answer: EncodedEvent | None
    ) -> None:
        """Queue the command for the run's holder, or carry it out now if none holds it."""
        row = self.one(
            f"SELECT {_LEASE_LIVE} FROM blazen_trio_runs WHERE run_id = %s FOR UPDATE",
            (run_id,),
        )
        if row is None:
            raise no_run(run_id)
        if not row[0]:
            self.carry_out(self.latest(run_id), op, request_id, answer)
            self.execute(
                "UPDATE blazen_trio_runs SET lease_epoch = lease_epoch + 1, lease_owner = NULL, "
                "lease_until = NULL WHERE run_id = %s",
                (run_id,),
            )  # whoever held the run before may write it no more
            self.notify()  # it may be runnable now
        else:
            self.check_control(self.latest(run_id), op, request_id)
            self.execute(
                "INSERT INTO blazen_trio_controls (run_id, op, request_id, answer) "
                "VALUES (%s, %s, %s, %s)",
                (run_id, op, request_id, None if answer is None else encode_encoded_event(answer)),
            )
            # Runnable, so that if the holder dies before it lets go, the run is claimed once
            # its lease runs out and its controls are carried out (`release` sets it right).
            self.execute("UPDATE blazen_trio_runs SET runnable = true WHERE run_id = %s", (run_id,))
            self.notify_controls()

    def check_control(
        self, snapshot: WorkflowSnapshot, op: ControlOp, request_id: str | None
    ) -> None:
        """Refuse what the run's holder could not do, before queueing it."""
        if op == "respond":
            outstanding = {item.payload.get("request_id") for item in snapshot.input_requests}
            if request_id not in outstanding:
                raise UnknownInputRequest(request_id or "")
        elif op in ("pause", "resume") and snapshot.status in FINISHED:
            raise RunFinished(f"{op}: run {snapshot.run_id} already finished ({snapshot.status})")

    def carry_out(
        self,
        snapshot: WorkflowSnapshot,
        op: ControlOp,
        request_id: str | None,
        answer: EncodedEvent | None,
    ) -> None:
        """A command for a run no process holds, carried out by appending to its journal."""
        self.check_control(snapshot, op, request_id)
        status = snapshot.status
        if op == "respond":
            assert request_id is not None
            assert answer is not None
            record = answer_record(snapshot, request_id, answer, at=self.now)
            self.append(snapshot.run_id, record, encode_record(record))
        elif op == "pause" and status is not RunStatus.PAUSED:
            self.add(snapshot, status=RunStatus.PAUSED)
        elif op == "resume" and status is RunStatus.PAUSED:
            self.add(snapshot, status=RunStatus.RUNNING)
        elif op == "abort" and status not in FINISHED:
            error = f"WorkflowAborted: run {snapshot.run_id} was aborted"
            self.add(snapshot, status=RunStatus.ABORTED, error=error)

    def carry_out_queued(self, run_id: str) -> bool:
        """Commands queued for a holder that let go of the run: carried out here, in order.
        Returns whether there were any."""
        queued = self.controls([run_id])
        for control in queued:
            with contextlib.suppress(UnknownInputRequest, RunFinished):  # moot by now
                self.carry_out(self.latest(run_id), control.op, control.request_id, control.answer)
        if queued:
            self.execute("DELETE FROM blazen_trio_controls WHERE run_id = %s", (run_id,))
        return bool(queued)

    def controls(self, run_ids: list[str]) -> list[Control]:
        rows = self.execute(
            "SELECT id, run_id, op, request_id, answer FROM blazen_trio_controls "
            "WHERE run_id = ANY(%s) ORDER BY id",
            (run_ids,),
        )
        return [
            Control(
                id, run_id, op, request_id, None if answer is None else self.decode(
                    run_id, "a queued answer", decode_encoded_event, answer
                )
            )
            for id, run_id, op, request_id, answer in rows
        ]  # fmt: skip

    def forget_controls(self, ids: list[int]) -> None:
        self.execute("DELETE FROM blazen_trio_controls WHERE id = ANY(%s)", (ids,))


def _refuse_lost(lease: Lease, row: Sequence[Any] | None) -> None:
    """Refuse a write under `lease` unless the run's (lease_owner, lease_epoch) `row` is it."""
    if row is None or (row[0], row[1]) != (lease.owner, lease.epoch):
        now = "gone" if row is None else f"at epoch {row[1]}, held by {row[0]!r}"
        raise CheckpointStoreError(
            f"run {lease.run_id!r}: the lease of worker {lease.owner!r} at epoch "
            f"{lease.epoch} was lost (the run is {now}); this worker may not write it"
        )


class _CommitUnknown(Exception):
    """The connection broke during COMMIT: the transaction may or may not have landed."""


def _label(dsn: str) -> str:
    """The server and database a DSN names, without credentials (for messages); a DSN that
    does not parse is refused at once rather than retried as if the server were away."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise CheckpointStoreError(f"checkpoint store: not a PostgreSQL DSN: {exc}") from exc
    host = parts.get("host") or "localhost"
    port = parts.get("port") or "5432"
    return f"postgresql://{host}:{port}/{parts.get('dbname') or ''}"


def _rollback(connection: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(psycopg.Error):  # a broken connection: the pool discards it
        connection.rollback()


@attrs.define(eq=False)
class _Listener:
    """A thread with its own connection that LISTENs and tells the Trio run of each NOTIFY.

    Daemon, so it never holds a process open; it notices `stopped` within `_LISTEN_WAIT`
    seconds and then closes its connection. A lost connection is reopened (news may have been
    missed meanwhile, so reopening counts as news too).
    """

    dsn: str
    token: trio.lowlevel.TrioToken
    on_news: Callable[[str | None, str | None], object]
    """Called in the Trio thread with the channel and the payload (a finished run's id, or ""
    for news for workers), and with None, None after a reconnection (anything may have
    happened meanwhile)."""
    stopped: threading.Event = attrs.Factory(threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._loop, name="blazen_trio listener", daemon=True).start()

    def _loop(self) -> None:
        connection: psycopg.Connection[Any] | None = None
        while not self.stopped.is_set():
            try:
                if connection is None:
                    connection = psycopg.Connection.connect(
                        self.dsn, autocommit=True, connect_timeout=5
                    )
                    connection.execute(f"LISTEN {CHANNEL}")
                    connection.execute(f"LISTEN {CONTROLS_CHANNEL}")
                    self._announce(None, None)
                for notify in connection.notifies(timeout=_LISTEN_WAIT, stop_after=1):
                    self._announce(notify.channel, notify.payload)
            except psycopg.Error:
                if connection is not None:
                    connection.close()
                connection = None
                self.stopped.wait(_LISTEN_WAIT)
        if connection is not None:
            connection.close()

    def _announce(self, channel: str | None, payload: str | None) -> None:
        try:
            self.token.run_sync_soon(self.on_news, channel, payload)
        except trio.RunFinishedError:
            self.stopped.set()


@final
class PostgresCheckpointStore:
    """A checkpoint store in a PostgreSQL database: durable, shared by many processes and
    machines, and the run queue of `Worker`s and `WorkflowClient`s.

    Use it as `async with PostgresCheckpointStore(dsn) as store:` or call `aclose()`. The first
    use creates the store's tables (or migrates them to this version; a newer schema raises
    `CheckpointStoreError`). Same promises as `SqliteCheckpointStore`: a run's journal accepts
    only its next record; a write, once started, is seen through even if the caller is
    cancelled (shielded), so a caller always learns whether its record landed.

    Unreachable server: an operation whose connection fails is tried again (with back-off) for
    up to `retry_for` seconds, then raises `CheckpointStoreError` (at once for a `dsn` that
    does not parse). A write whose COMMIT was cut
    off is checked on the next try (an append finds its own record and counts as done).
    `pool_size` bounds the connections, and so the operations at once. `clock` gives the times
    the store records (`RunInfo`) and `prune` compares with; leases use the server's clock.
    """

    def __init__(
        self,
        dsn: str,
        *,
        compact_every: CompactEvery = AUTO,
        clock: Callable[[], float] = time.time,
        pool_size: int = 10,
        retry_for: float = 10.0,
        connect_timeout: float = 5.0,
    ) -> None:
        if type(pool_size) is not int or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
        self._label = _label(dsn)
        self._dsn = dsn
        self._compact_every = check_compact_every(compact_every)
        self._clock = clock
        self._retry_for = float(retry_for)
        self._connect_timeout = float(connect_timeout)
        self._pool = psycopg_pool.ConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=self._connect_timeout,
            kwargs={"connect_timeout": max(2, round(self._connect_timeout))},
            name="blazen_trio",
        )
        self._limiter = trio.CapacityLimiter(pool_size)
        self._opened = False
        self._ready = False
        self._closed = False
        self._news = trio.Event()
        self._control_news = trio.Event()
        self._run_news: dict[str, trio.Event] = {}
        # Runs announced finished lately: a waiter that comes after the news still gets it.
        self._finished_recently: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._listener: _Listener | None = None

    def __repr__(self) -> str:
        return f"<PostgresCheckpointStore {self._label}>"

    async def __aenter__(self) -> Self:
        try:
            await self._ensure_ready()
        except BaseException:  # no `__aexit__` follows: the pool's threads must not linger
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections (shielded: bounded by the pool's close); refuse all use after."""
        self._closed = True
        if self._listener is not None:
            self._listener.stopped.set()
            self._listener = None
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._pool.close)

    # -- CheckpointStore ---------------------------------------------------------------------

    async def save(self, snapshot: WorkflowSnapshot) -> None:
        await self._save(snapshot, None)

    async def append(self, run_id: str, record: JournalRecord) -> None:
        await self._append(run_id, record, None)

    async def load(self, run_id: str, *, at: int | None = None) -> WorkflowSnapshot | None:
        return await self._read(lambda db: db.load(run_id, at))

    async def list(
        self, *, workflow: str | None = None, status: RunStatus | Iterable[RunStatus] | None = None
    ) -> builtins.list[RunInfo]:
        wanted = statuses_of(status)
        return await self._read(lambda db: db.runs(workflow, wanted))

    async def history(self, run_id: str) -> builtins.list[CheckpointInfo]:
        return await self._read(lambda db: db.history(run_id))

    async def delete(self, run_id: str) -> None:
        await self._write(lambda db: db.delete(run_id))

    async def prune(
        self, *, older_than: datetime.timedelta, statuses: Iterable[RunStatus] = FINISHED
    ) -> int:
        limit = cutoff(self._clock, older_than)
        wanted = statuses_of(statuses) or frozenset()
        return await self._write(lambda db: db.prune(limit, wanted))

    async def respond(self, run_id: str, request_id: str, response: Any) -> None:
        """Answer an input request; if a worker holds the run, the answer is queued for it."""
        await self.control(run_id, "respond", request_id, encode_answer(request_id, response))

    # -- RunQueue ----------------------------------------------------------------------------

    async def submit(self, snapshot: WorkflowSnapshot) -> None:
        data = snapshot.to_bytes()
        await self._write(lambda db: db.submit(snapshot, data))

    async def claim(
        self, owner: str, workflows: Collection[str], limit: int, lease: float
    ) -> builtins.list[Lease]:
        names = sorted(workflows)
        return await self._write(lambda db: db.claim(owner, names, limit, lease))

    async def take(self, run_id: str, owner: str, lease: float) -> Lease | None:
        return await self._write(lambda db: db.take(run_id, owner, lease))

    async def renew(self, leases: Collection[Lease], lease: float) -> set[str]:
        held = builtins.list(leases)
        if not held:
            await trio.lowlevel.checkpoint()
            return set()
        return await self._write(lambda db: db.renew(held, lease))

    async def release(
        self, lease: Lease, *, requeue: bool = False, error: str | None = None
    ) -> None:
        await self._write(lambda db: db.release(lease, requeue, error))

    def fenced(self, lease: Lease) -> CheckpointStore:
        return _FencedStore(self, lease)

    async def control(
        self,
        run_id: str,
        op: ControlOp,
        request_id: str | None = None,
        answer: EncodedEvent | None = None,
    ) -> None:
        await self._write(lambda db: db.control(run_id, op, request_id, answer))

    async def controls(self, leases: Collection[Lease]) -> builtins.list[Control]:
        run_ids = [lease.run_id for lease in leases]
        if not run_ids:
            await trio.lowlevel.checkpoint()
            return []
        return await self._read(lambda db: db.controls(run_ids))

    async def forget_controls(self, ids: Collection[int]) -> None:
        done = builtins.list(ids)
        await self._write(lambda db: db.forget_controls(done))

    async def wait_for_news(self, run_id: str | None = None) -> None:
        self._listen()
        if run_id is None:
            await self._news.wait()
            return
        if run_id in self._finished_recently:  # announced before this caller looked
            await trio.lowlevel.checkpoint()
            return
        news = self._run_news.setdefault(run_id, trio.Event())
        try:
            await news.wait()
        finally:
            if self._run_news.get(run_id) is news and not news.statistics().tasks_waiting:
                del self._run_news[run_id]

    async def wait_for_controls(self) -> None:
        self._listen()
        await self._control_news.wait()

    def _listen(self) -> None:
        """Start the listener thread, once."""
        self._check_open()
        if self._listener is None:
            self._listener = _Listener(
                self._dsn, trio.lowlevel.current_trio_token(), self._announce
            )
            self._listener.start()

    def _announce(self, channel: str | None, payload: str | None) -> None:
        if channel != CHANNEL:  # controls came, or reconnected (anything may have happened)
            self._control_news.set()
            self._control_news = trio.Event()
            if channel is not None:
                return
        if payload:
            self._finished_recently[payload] = None
            while len(self._finished_recently) > _RECENTLY_FINISHED:
                self._finished_recently.popitem(last=False)
            news = self._run_news.pop(payload, None)
            if news is not None:
                news.set()
            return
        self._news.set()
        self._news = trio.Event()
        if payload is None:  # reconnected: a run may have finished meanwhile
            for news in self._run_news.values():
                news.set()
            self._run_news.clear()

    # -- the machinery -----------------------------------------------------------------------

    async def _save(self, snapshot: WorkflowSnapshot, fence: Lease | None) -> None:
        data = snapshot.to_bytes()
        await self._write(lambda db: db.save(snapshot, data, fence))

    async def _append(self, run_id: str, record: JournalRecord, fence: Lease | None) -> None:
        data = encode_record(record)
        await self._write(lambda db: db.append(run_id, record, data, fence))

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointStoreError(f"checkpoint store {self._label} is closed")

    async def _ensure_ready(self) -> None:
        """Create or migrate the tables once, before the first use."""
        self._check_open()
        if not self._ready:
            await self._call(lambda db: db.migrate(), write=True)
            self._ready = True

    async def _read(self, fn: Callable[[_Db], T]) -> T:
        await self._ensure_ready()
        return await self._call(fn, write=False)

    async def _write(self, fn: Callable[[_Db], T]) -> T:
        """A write, seen through once started (shielded, bounded by `retry_for`)."""
        await self._ensure_ready()
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled before it starts: not written
        with trio.CancelScope(shield=True):
            value = await self._call(fn, write=True)
        return value  # noqa: RET504  # mypy: a shield might swallow a return inside it

    async def _call(self, fn: Callable[[_Db], T], *, write: bool) -> T:
        """`fn` in one transaction in a worker thread, tried again while the server is away."""
        deadline = time.monotonic() + self._retry_for
        delay, retrying = 0.05, False
        while True:
            self._check_open()
            try:
                return await trio.to_thread.run_sync(
                    self._transact, fn, write, retrying, deadline, limiter=self._limiter
                )
            except (psycopg.OperationalError, _CommitUnknown) as exc:
                retrying = retrying or isinstance(exc, _CommitUnknown)
                if time.monotonic() + delay > deadline:
                    cause = exc.__cause__ or exc
                    raise self._error(
                        f"the server did not answer for {self._retry_for:g}s", cause
                    ) from cause
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except psycopg.Error as exc:
                raise self._error("the statement failed", exc) from exc

    def _transact(self, fn: Callable[[_Db], T], write: bool, retrying: bool, deadline: float) -> T:
        """In a worker thread: take a connection, run `fn`, commit (or roll back a read)."""
        if not self._opened:
            self._pool.open(wait=False)
            self._opened = True
        if retrying:
            self._pool.check()  # connections idle since the server went away are dead
        timeout = max(0.1, min(self._connect_timeout, deadline - time.monotonic()))
        connection = self._pool.getconn(timeout=timeout)
        try:
            db = _Db(connection, self._label, self._clock(), self._compact_every, retrying)
            try:
                value = fn(db)
            except BaseException:
                _rollback(connection)
                raise
            if not write:
                connection.rollback()
                return value
            try:
                connection.commit()
            except psycopg.OperationalError as exc:
                raise _CommitUnknown() from exc
            return value
        finally:
            self._pool.putconn(connection)

    def _error(self, what: str, exc: BaseException) -> CheckpointStoreError:
        error = CheckpointStoreError(f"checkpoint store {self._label}: {what}: {exc}")
        error.__cause__ = exc
        return error


@final
@attrs.frozen
class _FencedStore:
    """The store as one worker's run sees it: writes refused once its lease is lost.

    Every `save` and `append` (the run's own and its sub-workflows') checks, in the write's
    own transaction, that the run's lease still has this owner and epoch.
    """

    store: PostgresCheckpointStore
    lease: Lease

    def __repr__(self) -> str:
        return f"<{self.store!r} fenced at run {self.lease.run_id!r} epoch {self.lease.epoch}>"

    async def save(self, snapshot: WorkflowSnapshot) -> None:
        await self.store._save(snapshot, self.lease)

    async def append(self, run_id: str, record: JournalRecord) -> None:
        await self.store._append(run_id, record, self.lease)

    async def load(self, run_id: str, *, at: int | None = None) -> WorkflowSnapshot | None:
        return await self.store.load(run_id, at=at)

    async def list(
        self, *, workflow: str | None = None, status: RunStatus | Iterable[RunStatus] | None = None
    ) -> builtins.list[RunInfo]:
        return await self.store.list(workflow=workflow, status=status)

    async def history(self, run_id: str) -> builtins.list[CheckpointInfo]:
        return await self.store.history(run_id)

    async def delete(self, run_id: str) -> None:
        await self.store.delete(run_id)

    async def prune(
        self, *, older_than: datetime.timedelta, statuses: Iterable[RunStatus] = FINISHED
    ) -> int:
        return await self.store.prune(older_than=older_than, statuses=statuses)

    async def respond(self, run_id: str, request_id: str, response: Any) -> None:
        await self.store.respond(run_id, request_id, response)
