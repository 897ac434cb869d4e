"""The embedded checkpoint store: one SQLite file in WAL mode, written by one thread.

Table `runs` holds each run's row (status, times, the journal seq its base includes), table
`bases` its base snapshot (sealed `WorkflowSnapshot.to_bytes()`: apart, so the small update of
the run's row at every append never rewrites a big base), and table `records` the journal
records written since (sealed `encode_record` bytes). Writes go to a dedicated writer thread
that commits everything queued in one transaction (group commit: concurrent runs share one
fsync), each write in a SAVEPOINT so a refused one fails alone. Reads open a short-lived
connection in a Trio worker thread; WAL lets them read while the writer writes, and lets other
processes share the file.
"""

import builtins  # `list` is a method name of the store
import contextlib
import datetime
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Final, Generic, Literal, Self, TypeVar, TypeVarTuple, cast, final

import attrs
import trio

from ._codec import WorkflowSnapshot, decode_record, encode_record
from ._errors import CheckpointStoreError
from ._events import INT64_MAX
from ._journal import fold
from ._records import CheckpointInfo, EncodedEvent, JournalRecord, RunInfo, RunStatus
from ._stores import (
    AUTO,
    FINISHED,
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

APPLICATION_ID: Final = 0x427A5472  # "BzTr": marks a SQLite file as a blazen_trio store
SCHEMA_VERSION: Final = 1
"""The layout this blazen_trio writes (`PRAGMA user_version`); a newer file is refused."""

BUSY_TIMEOUT_MS: Final = 10_000
"""How long a connection waits for another process's lock before the operation fails."""

_SYNCHRONOUS: Final = {"full": "FULL", "normal": "NORMAL"}

_LAST_SEQ: Final = (
    "coalesce((SELECT max(seq) FROM records WHERE records.run_id = runs.run_id), base_seq)"
)
"""SQL for a run's last journal seq, in a query of `runs`."""

_SCHEMA: Final = (
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        workflow_name TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        base_seq INTEGER NOT NULL
    )""",
    """CREATE TABLE bases (
        run_id TEXT PRIMARY KEY,
        base BLOB NOT NULL
    )""",
    """CREATE TABLE records (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        step TEXT,
        at REAL NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID""",
)


@attrs.frozen
class _Db:
    """A connection inside a transaction, with the store's queries and writes."""

    connection: sqlite3.Connection
    path: str

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self.connection.execute(sql, params)

    def seqs(self, run_id: str) -> tuple[int, int] | None:
        """The run's base seq and last seq; None for an unknown run."""
        query = f"SELECT base_seq, {_LAST_SEQ} FROM runs WHERE run_id = ?"
        row = self.execute(query, (run_id,)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def records(self, run_id: str, after: int, upto: int = INT64_MAX) -> list[JournalRecord]:
        """The kept records of the run after seq `after` up to `upto`, decoded, in order."""
        query = "SELECT data FROM records WHERE run_id = ? AND seq > ? AND seq <= ? ORDER BY seq"
        rows = self.execute(query, (run_id, after, upto))
        return [self.decode(run_id, "a journal record", decode_record, data) for (data,) in rows]

    def decode(self, run_id: str, what: str, decode: Callable[[bytes], T], data: bytes) -> T:
        return decode_stored(str(self.path), run_id, what, decode, data)

    def load(self, run_id: str, at: int | None) -> WorkflowSnapshot | None:
        query = (
            f"SELECT base, base_seq, {_LAST_SEQ} FROM runs JOIN bases USING (run_id) "
            "WHERE run_id = ?"
        )
        row = self.execute(query, (run_id,)).fetchone()
        if row is None:
            return None
        data, base_seq, last = row
        if at is not None:
            check_kept(run_id, at, base_seq, last)
        base = self.decode(run_id, "the base snapshot", WorkflowSnapshot.from_bytes, data)
        return fold(base, self.records(run_id, base_seq, last if at is None else at))

    def runs(self, workflow: str | None, wanted: frozenset[RunStatus] | None) -> list[RunInfo]:
        clauses, params = ["1"], []
        if workflow is not None:
            clauses.append("workflow_name = ?")
            params.append(workflow)
        if wanted is not None:
            clauses.append(f"status IN ({', '.join('?' * len(wanted))})")
            params.extend(status.value for status in wanted)
        query = (
            f"SELECT run_id, workflow_name, status, created_at, updated_at, {_LAST_SEQ} "
            f"FROM runs WHERE {' AND '.join(clauses)} ORDER BY created_at, rowid"
        )
        return [
            RunInfo(run_id, name, RunStatus(status), created, updated, seq)
            for run_id, name, status, created, updated, seq in self.execute(query, tuple(params))
        ]

    def history(self, run_id: str) -> list[CheckpointInfo]:
        query = "SELECT seq, step, at FROM records WHERE run_id = ? ORDER BY seq"
        return [CheckpointInfo(*row) for row in self.execute(query, (run_id,))]

    def save(self, snapshot: WorkflowSnapshot, data: bytes, now: float) -> None:
        run_id, seq = snapshot.run_id, snapshot.journal_seq
        self.execute("DELETE FROM records WHERE run_id = ? AND seq <= ?", (run_id, seq))
        status = status_after(snapshot.status, self.records(run_id, seq))
        self.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
            "workflow_name = excluded.workflow_name, status = excluded.status, "
            "updated_at = excluded.updated_at, base_seq = excluded.base_seq",
            (run_id, snapshot.workflow_name, status.value, now, now, seq),
        )
        self.execute(
            "INSERT INTO bases VALUES (?, ?) "
            "ON CONFLICT (run_id) DO UPDATE SET base = excluded.base",
            (run_id, data),
        )

    def append(
        self,
        run_id: str,
        record: JournalRecord,
        data: bytes,
        now: float,
        compact_every: CompactEvery,
    ) -> None:
        seqs = self.seqs(run_id)
        if seqs is None:
            raise no_run(run_id)
        base_seq, last = seqs
        check_follows(run_id, record.seq, last)
        self.execute(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?)",
            (run_id, record.seq, record.step, record.at, data),
        )
        status = None if record.status is None else record.status.value
        self.execute(
            "UPDATE runs SET updated_at = ?, status = coalesce(?, status) WHERE run_id = ?",
            (now, status, run_id),
        )
        if compaction_due(compact_every, record.seq - base_seq, lambda: self.sizes(run_id)):
            self.compact(run_id)

    def sizes(self, run_id: str) -> tuple[int, int]:
        """(journal, base) of a run, in bytes."""
        [(journal, base)] = self.execute(
            "SELECT (SELECT coalesce(sum(length(data)), 0) FROM records WHERE run_id = ?), "
            "length(base) FROM bases WHERE run_id = ?",
            (run_id, run_id),
        )
        return int(journal), int(base)

    def compact(self, run_id: str) -> None:
        """Fold the run's journal into a new base and drop the records it includes."""
        snapshot = cast(WorkflowSnapshot, self.load(run_id, None))  # the caller found the run
        self.execute("UPDATE bases SET base = ? WHERE run_id = ?", (snapshot.to_bytes(), run_id))
        self.execute(
            "UPDATE runs SET base_seq = ? WHERE run_id = ?", (snapshot.journal_seq, run_id)
        )
        self.execute(
            "DELETE FROM records WHERE run_id = ? AND seq <= ?", (run_id, snapshot.journal_seq)
        )

    def respond(
        self,
        run_id: str,
        request_id: str,
        answer: EncodedEvent,
        now: float,
        compact_every: CompactEvery,
    ) -> None:
        """Read the run and append its answer in one transaction, so no writer comes between."""
        snapshot = self.load(run_id, None)
        if snapshot is None:
            raise no_run(run_id)
        record = answer_record(snapshot, request_id, answer, at=now)
        self.append(run_id, record, encode_record(record), now, compact_every)

    def delete(self, run_id: str) -> None:
        self.execute("DELETE FROM records WHERE run_id = ?", (run_id,))
        self.execute("DELETE FROM bases WHERE run_id = ?", (run_id,))
        self.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    def prune(self, limit: float, statuses: frozenset[RunStatus]) -> int:
        query = (
            "SELECT run_id FROM runs WHERE updated_at < ? "
            f"AND status IN ({', '.join('?' * len(statuses))})"
        )
        params = (limit, *(status.value for status in statuses))
        doomed = [run_id for (run_id,) in self.execute(query, params)]
        for run_id in doomed:
            self.delete(run_id)
        return len(doomed)


def _open_file(connection: sqlite3.Connection, path: str) -> None:
    """Create the store's tables in an empty file, or check the file is a store we can read."""
    connection.execute("BEGIN IMMEDIATE")  # another process creating the file waits for us
    try:
        if _is_blank(connection):
            for statement in _SCHEMA:
                connection.execute(statement)
        else:
            _check_file(connection, path)
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    # After the commit, so that the tables and ids are in the file in one transaction.
    (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode != "wal":
        raise CheckpointStoreError(f"checkpoint store {path}: cannot use WAL mode (got {mode!r})")


def _is_blank(connection: sqlite3.Connection) -> bool:
    """An empty file, or a database with nothing in it: taking it over loses nothing."""
    (tables,) = connection.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    ids = _pragma(connection, "application_id"), _pragma(connection, "user_version")
    return tables == 0 and ids == (0, 0)


def _check_file(connection: sqlite3.Connection, path: str) -> None:
    def refuse(problem: str) -> CheckpointStoreError:
        return CheckpointStoreError(f"checkpoint store {path}: {problem}")

    page_size = _pragma(connection, "page_size")
    if os.path.getsize(path) % page_size:
        raise refuse(f"the file is truncated mid-page (pages of {page_size} bytes)")
    application_id = _pragma(connection, "application_id")
    if application_id != APPLICATION_ID:
        raise refuse(
            f"not a blazen_trio checkpoint store: SQLite application_id is {application_id:#x}, "
            f"not {APPLICATION_ID:#x} (another program's database?)"
        )
    version = _pragma(connection, "user_version")
    if version != SCHEMA_VERSION:
        newer = "newer than" if version > SCHEMA_VERSION else "unknown to"
        raise refuse(f"schema version {version} is {newer} this blazen_trio ({SCHEMA_VERSION})")
    query = "SELECT name FROM sqlite_schema WHERE type = 'table'"
    missing = {"runs", "bases", "records"} - {name for (name,) in connection.execute(query)}
    if missing:
        raise refuse(f"missing tables: {', '.join(sorted(missing))}")


def _pragma(connection: sqlite3.Connection, name: str) -> int:
    (value,) = connection.execute(f"PRAGMA {name}").fetchone()
    return int(value)


@attrs.define(eq=False)
class _Write(Generic[T]):
    """A write queued for the writer thread; `done` is set in the caller's Trio run."""

    fn: Callable[[_Db], T]
    token: trio.lowlevel.TrioToken
    done: trio.Event = attrs.Factory(trio.Event)
    value: T | None = None
    error: BaseException | None = None

    def apply(self, db: _Db) -> None:
        """Run the write in a savepoint: refused, it leaves the rest of the batch alone."""
        db.execute("SAVEPOINT write")
        try:
            self.value = self.fn(db)
        except sqlite3.Error:
            raise  # the database failed, not this write: the whole batch fails
        except Exception as exc:  # a refusal (seq, unknown request, unreadable data)
            db.execute("ROLLBACK TO write")
            self.error = exc
        db.execute("RELEASE write")

    def unwrap(self) -> T:
        if self.error is not None:
            raise self.error
        return cast(T, self.value)  # set by `apply` whenever `error` is not


def _complete(writes: list[_Write[Any]]) -> None:
    """Wake each caller in its own Trio run: one `run_sync_soon` per run and batch."""
    by_run: dict[trio.lowlevel.TrioToken, list[trio.Event]] = {}
    for write in writes:
        by_run.setdefault(write.token, []).append(write.done)
    for token, events in by_run.items():
        with contextlib.suppress(trio.RunFinishedError):  # that run is over: no one waits
            token.run_sync_soon(_set_all, events)


def _set_all(events: list[trio.Event]) -> None:
    for event in events:
        event.set()


def _rolled_back(connection: sqlite3.Connection | None) -> sqlite3.Connection | None:
    """The connection after a failed batch, or None if it must be replaced."""
    if connection is None:
        return None
    try:
        connection.rollback()
    except sqlite3.Error:
        connection.close()
        return None
    return connection


@final
class SqliteCheckpointStore:
    """The embedded checkpoint store: a SQLite file (WAL mode) that survives crashes.

    `durability="full"` (`PRAGMA synchronous=FULL`) survives power loss; `"normal"` survives
    a crashed or killed process, and may lose the last commits on power loss. Use it as
    `async with SqliteCheckpointStore(path) as store:` or call `aclose()`: an open store
    keeps its writer thread. Opening a file that is not a store of ours (garbage, truncated,
    another program's database, a newer schema) raises `CheckpointStoreError`; an empty or
    missing file becomes a new store.

    Blocking and cancellation: every method runs its I/O in a thread. Writes (`save`,
    `append`, `respond`, `delete`, `prune`) are committed by one writer thread in batches;
    once queued, a write is waited for even if the caller is cancelled (shielded, bounded by
    the 10 s lock timeout and the disk), and its outcome is returned or raised, so a cancelled
    caller knows whether its record landed. A write that fails raises `CheckpointStoreError`
    and nothing of it is kept. Several processes may share the file; a run's journal accepts
    only its next record, so a second writer of the same run is refused.

    `clock` gives the times the store records and `prune` compares with; `connect(path)` opens
    every connection, in sqlite3's default transaction handling (tests wrap the real one to
    inject faults).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Literal["full", "normal"] = "full",
        compact_every: CompactEvery = AUTO,
        clock: Callable[[], float] = time.time,
        connect: Callable[[str], sqlite3.Connection] = sqlite3.connect,
    ) -> None:
        if durability not in _SYNCHRONOUS:
            raise ValueError(f"durability must be 'full' or 'normal', got {durability!r}")
        self._path = os.path.abspath(os.fspath(path))
        self._synchronous = _SYNCHRONOUS[durability]
        self._compact_every = check_compact_every(compact_every)
        self._clock = clock
        self._connect = connect
        self._ready = False
        self._ready_lock = threading.Lock()
        self._closed = False
        self._queue: queue.SimpleQueue[_Write[Any] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    def __repr__(self) -> str:
        durability = self._synchronous.lower()
        return f"<SqliteCheckpointStore {self._path!r} durability={durability!r}>"

    async def __aenter__(self) -> Self:
        await self._ensure_ready()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the writer thread once it has committed every write already queued.

        The wait is shielded (it is bounded by that drain); the store then refuses all use.
        """
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is None:
            await trio.lowlevel.checkpoint()
            return
        self._queue.put(None)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(writer.join)

    async def save(self, snapshot: WorkflowSnapshot) -> None:
        data = snapshot.to_bytes()
        await self._write(_Db.save, snapshot, data, self._clock())

    async def append(self, run_id: str, record: JournalRecord) -> None:
        data = encode_record(record)
        await self._write(_Db.append, run_id, record, data, self._clock(), self._compact_every)

    async def load(self, run_id: str, *, at: int | None = None) -> WorkflowSnapshot | None:
        return await self._read(_Db.load, run_id, at)

    async def list(
        self, *, workflow: str | None = None, status: RunStatus | Iterable[RunStatus] | None = None
    ) -> builtins.list[RunInfo]:
        return await self._read(_Db.runs, workflow, statuses_of(status))

    async def history(self, run_id: str) -> builtins.list[CheckpointInfo]:
        return await self._read(_Db.history, run_id)

    async def delete(self, run_id: str) -> None:
        await self._write(_Db.delete, run_id)

    async def prune(
        self, *, older_than: datetime.timedelta, statuses: Iterable[RunStatus] = FINISHED
    ) -> int:
        limit = cutoff(self._clock, older_than)
        return await self._write(_Db.prune, limit, statuses_of(statuses) or frozenset())

    async def respond(self, run_id: str, request_id: str, response: Any) -> None:
        answer = encode_answer(request_id, response)
        now = self._clock()
        await self._write(_Db.respond, run_id, request_id, answer, now, self._compact_every)

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointStoreError(f"checkpoint store {self._path} is closed")

    async def _ensure_ready(self) -> None:
        """Check (or create) the file once, in a thread, before the first use."""
        self._check_open()
        if not self._ready:
            await trio.to_thread.run_sync(self._open)

    def _open(self) -> None:
        with self._ready_lock:
            if self._ready:
                return
            try:
                with contextlib.closing(self._connection()) as connection:
                    _open_file(connection, self._path)
            except (sqlite3.Error, OSError) as exc:
                raise self._error("cannot open it", exc) from exc
            self._ready = True

    def _connection(self) -> sqlite3.Connection:
        connection = self._connect(self._path)
        try:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute(f"PRAGMA synchronous = {self._synchronous}")
        except BaseException:
            connection.close()
            raise
        return connection

    def _error(self, what: str, exc: BaseException) -> CheckpointStoreError:
        error = CheckpointStoreError(f"checkpoint store {self._path}: {what}: {exc}")
        error.__cause__ = exc
        return error

    async def _read(self, fn: Callable[[_Db, *Ts], T], *args: *Ts) -> T:
        await self._ensure_ready()
        return await trio.to_thread.run_sync(self._read_in_thread, lambda db: fn(db, *args))

    def _read_in_thread(self, fn: Callable[[_Db], T]) -> T:
        """One read transaction on a fresh connection (WAL: it does not wait for the writer)."""
        try:
            with contextlib.closing(self._connection()) as connection:
                connection.execute("BEGIN")
                try:
                    return fn(_Db(connection, self._path))
                finally:
                    connection.rollback()
        except sqlite3.Error as exc:
            raise self._error("cannot read it", exc) from exc

    async def _write(self, fn: Callable[[_Db, *Ts], T], *args: *Ts) -> T:
        await self._ensure_ready()
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled before queueing: not written
        self._check_open()  # again: it may have closed while the file was being opened
        write = _Write(lambda db: fn(db, *args), trio.lowlevel.current_trio_token())
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_loop, name=f"blazen_trio writer {self._path}", daemon=True
            )
            self._writer.start()
        self._queue.put(write)
        with trio.CancelScope(shield=True):  # a queued write is seen through, see the class doc
            await write.done.wait()
        return write.unwrap()

    def _write_loop(self) -> None:
        """The writer thread: commit everything queued, batch after batch, until `aclose`."""
        connection: sqlite3.Connection | None = None
        try:
            stop = False
            while not stop:
                writes, stop = self._take()
                if writes:
                    connection = self._commit(connection, writes)
                    _complete(writes)
        finally:
            if connection is not None:
                connection.close()

    def _take(self) -> tuple[builtins.list[_Write[Any]], bool]:
        """Everything queued (waiting for at least one item), and whether `aclose` was called."""
        items = [self._queue.get()]
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(self._queue.get_nowait())
        writes = [item for item in items if item is not None]
        return writes, len(writes) < len(items)

    def _commit(
        self, connection: sqlite3.Connection | None, writes: builtins.list[_Write[Any]]
    ) -> sqlite3.Connection | None:
        """Apply `writes` in one transaction; returns the connection for the next batch."""
        try:
            if connection is None:
                connection = self._connection()
            db = _Db(connection, self._path)
            db.execute("BEGIN IMMEDIATE")
            for write in writes:
                write.apply(db)
            connection.commit()
        except Exception as exc:  # anything: the writer must live on to answer its callers
            for write in writes:
                write.error = self._error("the write failed; nothing of it was kept", exc)
            return _rolled_back(connection)
        return connection
