"""The SQLite store's own promises: files it refuses, faults it survives, processes sharing it.

Faults are injected by a real `sqlite3.Connection` subclass (the store's `connect` hook) whose
`execute` or `commit` fails or waits when a test says so; ordering is made deterministic by
holding the writer thread at its commit, never by sleeping. Crashes are real child processes
(tests/_store_child.py) killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import _legacy_formats as legacy
import msgspec
import pytest
import trio
import trio.testing
from _store_child import record, start
from hypothesis import HealthCheck, given, settings, strategies as st

import blazen_trio as bz
from blazen_trio._journal import fold
from blazen_trio._sqlite import APPLICATION_ID, SCHEMA_VERSION

TESTS = pathlib.Path(__file__).parent
CHILD = TESTS / "_store_child.py"


class Faults:
    """What the test wants the store's connections to do; read by them in their threads."""

    def __init__(self) -> None:
        self.fail_commits = 0
        self.fail_sql = ""  # the next statement containing this fails
        self.commits = 0
        self.statements: list[str] = []
        self.gate = threading.Event()  # commits wait while it is clear
        self.gate.set()
        self.at_gate = threading.Event()
        self.hold_sql = ""  # the next statement containing this waits for `release`
        self.held = threading.Event()
        self.release = threading.Event()

    def connect(self, path: str) -> sqlite3.Connection:
        connection = sqlite3.connect(path, factory=FaultyConnection)
        connection.faults = self
        return connection

    def hold_commits(self) -> None:
        self.at_gate.clear()
        self.gate.clear()


class FaultyConnection(sqlite3.Connection):
    """A real connection that fails or waits on demand."""

    faults: Faults

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        faults = self.faults
        faults.statements.append(sql)
        if faults.fail_sql and faults.fail_sql in sql:
            faults.fail_sql = ""
            raise sqlite3.OperationalError("disk I/O error")
        if faults.hold_sql and faults.hold_sql in sql:
            faults.hold_sql = ""
            faults.held.set()
            faults.release.wait()
        return super().execute(sql, parameters)

    def commit(self) -> None:
        self.faults.at_gate.set()
        self.faults.gate.wait()
        if self.faults.fail_commits:
            self.faults.fail_commits -= 1
            raise sqlite3.OperationalError("disk I/O error")
        super().commit()
        self.faults.commits += 1


@pytest.fixture
def path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "runs.db"


def records(last: int, first: int = 1) -> list[bz.JournalRecord]:
    return [record(seq) for seq in range(first, last + 1)]


async def write_runs(path: pathlib.Path, runs: int = 3, last: int = 3) -> None:
    async with bz.SqliteCheckpointStore(path) as store:
        for index in range(runs):
            await store.save(start(f"run-{index}"))
            for item in records(last):
                await store.append(f"run-{index}", item)


async def loaded(store: bz.SqliteCheckpointStore, run_id: str) -> bz.WorkflowSnapshot:
    snapshot = await store.load(run_id)
    assert snapshot is not None
    return snapshot


def expected(run_id: str, last: int) -> bz.WorkflowSnapshot:
    return fold(start(run_id), records(last))


# -- files it refuses ------------------------------------------------------------------------


def sql(path: pathlib.Path, *statements: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        for statement in statements:
            connection.execute(statement)
        connection.commit()


async def garbage(path: pathlib.Path) -> None:
    await trio.Path(path).write_bytes(b"not a database, just some text\n" * 300)


async def truncated(path: pathlib.Path) -> None:
    await write_runs(path, runs=20)
    size = (await trio.Path(path).stat()).st_size
    async with await trio.open_file(path, "r+b") as file:
        await file.truncate(size - 2048)  # half a page off the end


async def foreign(path: pathlib.Path) -> None:
    await trio.to_thread.run_sync(sql, path, "CREATE TABLE users (name TEXT)")


async def other_application(path: pathlib.Path) -> None:
    await trio.to_thread.run_sync(
        sql, path, "PRAGMA application_id = 7", "CREATE TABLE runs (run_id TEXT)"
    )


async def ours_without_tables(path: pathlib.Path) -> None:
    await trio.to_thread.run_sync(
        sql, path, f"PRAGMA application_id = {APPLICATION_ID}", "PRAGMA user_version = 1"
    )


async def newer(path: pathlib.Path) -> None:
    await write_runs(path, runs=1)
    await trio.to_thread.run_sync(sql, path, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")


BAD_FILES: list[tuple[Callable[[pathlib.Path], Awaitable[None]], str]] = [
    (garbage, "file is not a database"),
    (truncated, "the file is truncated mid-page"),
    (foreign, "not a blazen_trio checkpoint store: SQLite application_id is 0x0"),
    (other_application, "application_id is 0x7, not 0x427a5472 .another program's database"),
    (ours_without_tables, "missing tables: bases, records, runs"),
    (newer, f"schema version {SCHEMA_VERSION + 1} is newer than this blazen_trio"),
]


@pytest.mark.parametrize(
    ("make", "problem"), BAD_FILES, ids=[make.__name__ for make, _ in BAD_FILES]
)
async def test_a_file_that_is_not_our_store_is_refused_and_left_alone(
    path: pathlib.Path, make: Callable[[pathlib.Path], Awaitable[None]], problem: str
) -> None:
    await make(path)
    before = await trio.Path(path).read_bytes()
    with pytest.raises(bz.CheckpointStoreError, match=re.escape(str(path)) + ".*" + problem):
        async with bz.SqliteCheckpointStore(path):
            pass  # pragma: no cover - refused at the `async with`
    assert await trio.Path(path).read_bytes() == before


async def test_an_empty_or_missing_file_becomes_a_store_in_wal_mode(path: pathlib.Path) -> None:
    await trio.Path(path).write_bytes(b"")
    async with bz.SqliteCheckpointStore(path) as store:
        assert await store.list() == []
    ids = await trio.to_thread.run_sync(pragmas, path, "journal_mode", "application_id")
    assert ids == ["wal", APPLICATION_ID]
    missing = path.with_name("missing.db")
    await write_runs(missing, runs=1)
    async with bz.SqliteCheckpointStore(missing) as store:
        assert [info.run_id for info in await store.list()] == ["run-0"]


def pragmas(path: pathlib.Path, *names: str) -> list[Any]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return [connection.execute(f"PRAGMA {name}").fetchone()[0] for name in names]


@pytest.mark.parametrize(("durability", "synchronous"), [("full", "FULL"), ("normal", "NORMAL")])
async def test_durability_sets_synchronous_on_every_connection(
    path: pathlib.Path, durability: Any, synchronous: str
) -> None:
    faults = Faults()
    async with bz.SqliteCheckpointStore(path, durability=durability, connect=faults.connect) as s:
        await s.save(start("run-1"))
        await s.load("run-1")
    connects = faults.statements.count("PRAGMA busy_timeout = 10000")
    assert connects == 3  # opening, the writer, one read
    assert faults.statements.count(f"PRAGMA synchronous = {synchronous}") == connects


async def test_an_unknown_durability_or_a_closed_store_is_refused(path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="durability must be 'full' or 'normal', got 'fast'"):
        bz.SqliteCheckpointStore(path, durability="fast")  # type: ignore[arg-type]  # on purpose
    store = bz.SqliteCheckpointStore(path)
    await store.save(start("run-1"))
    await store.aclose()
    await store.aclose()
    for call in (store.load("run-1"), store.append("run-1", record(1))):
        with pytest.raises(bz.CheckpointStoreError, match="is closed"):
            await call
    async with bz.SqliteCheckpointStore(path) as reopened:
        assert await reopened.load("run-1") == start("run-1")


@pytest.mark.parametrize("part", ["record", "base"])
async def test_a_stored_item_with_a_bad_checksum_fails_load(path: pathlib.Path, part: str) -> None:
    await write_runs(path, runs=1)
    table, where = ("records", "seq = 2") if part == "record" else ("bases", "1")
    column = "data" if part == "record" else "base"
    await trio.to_thread.run_sync(flip_last_byte, path, table, column, where)
    async with bz.SqliteCheckpointStore(path) as store:
        what = "a journal record" if part == "record" else "the base snapshot"
        with pytest.raises(bz.CheckpointStoreError, match=f"{what} of run 'run-0' is unreadable"):
            await store.load("run-0")
        with pytest.raises(bz.CheckpointStoreError) as caught:
            await store.load("run-0", at=3)
        assert isinstance(caught.value.__cause__, bz.SnapshotError)
        assert [info.seq for info in await store.history("run-0")] == [1, 2, 3]


def stored_versions(path: pathlib.Path) -> tuple[list[int], list[int]]:
    """The versions of the bases and of the records the file holds."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        bases = [row[0] for row in connection.execute("SELECT base FROM bases")]
        records = [row[0] for row in connection.execute("SELECT data FROM records")]
    return [msgspec.msgpack.decode(data)["version"] for data in bases], [
        msgspec.msgpack.decode(data)["version"] for data in records
    ]


async def test_a_file_of_the_version_2_release_loads_and_goes_on_in_todays_formats(
    path: pathlib.Path,
) -> None:
    """A file written by that release (tests/formats): a version 2 base, version 1 records."""
    await trio.Path(path).write_bytes(
        await trio.Path(legacy.FORMATS / "store_v2.sqlite").read_bytes()
    )
    assert await trio.to_thread.run_sync(stored_versions, path) == ([2], [1, 1, 1, 1])
    later = bz.JournalRecord(seq=5, at=1.7e9 + 6, state_set={"after": 1})
    async with bz.SqliteCheckpointStore(path, compact_every=5) as store:
        snapshot = await loaded(store, legacy.RUN_ID)
        child = snapshot.pending_events[1].children[1].snapshot
        assert child is not None
        old = legacy.records()
        assert snapshot == fold(legacy.base(child), old)
        assert await store.load(legacy.RUN_ID, at=2) == fold(legacy.base(child), old[:2])
        await store.append(legacy.RUN_ID, later)  # the fifth record: compacted into a new base
        assert await store.load(legacy.RUN_ID) == fold(legacy.base(child), [*old, later])
    assert await trio.to_thread.run_sync(stored_versions, path) == ([3], [])


def flip_last_byte(path: pathlib.Path, table: str, column: str, where: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        (data,) = connection.execute(f"SELECT {column} FROM {table} WHERE {where}").fetchone()
        data = data[:-1] + bytes([data[-1] ^ 0xFF])
        connection.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (data,))
        connection.commit()


async def test_a_read_sees_one_moment_while_the_writer_compacts(path: pathlib.Path) -> None:
    faults = Faults()
    async with bz.SqliteCheckpointStore(path, compact_every=3, connect=faults.connect) as store:
        await store.save(start("run-1"))
        for item in records(2):
            await store.append("run-1", item)
        faults.hold_sql = "SELECT data FROM records"  # the load, between base and records
        async with trio.open_nursery() as nursery:
            seen: list[bz.WorkflowSnapshot] = []

            async def load() -> None:
                seen.append(await loaded(store, "run-1"))

            nursery.start_soon(load)
            await trio.to_thread.run_sync(faults.held.wait)
            await store.append("run-1", record(3))  # a new base, the records deleted
            faults.release.set()
        assert seen == [expected("run-1", 2)]
        assert await store.history("run-1") == []
        assert await loaded(store, "run-1") == expected("run-1", 3)


# -- faults it survives ----------------------------------------------------------------------


async def test_a_failed_commit_fails_the_write_and_loses_nothing(path: pathlib.Path) -> None:
    faults = Faults()
    async with bz.SqliteCheckpointStore(path, connect=faults.connect) as store:
        await store.save(start("run-1"))
        for item in records(2):
            await store.append("run-1", item)
        faults.fail_commits = 1
        with pytest.raises(bz.CheckpointStoreError, match=re.escape(str(path)) + ".*disk I/O"):
            await store.append("run-1", record(3))
        assert await loaded(store, "run-1") == expected("run-1", 2)
        await store.append("run-1", record(3))  # the store goes on
    async with bz.SqliteCheckpointStore(path) as reopened:
        assert await loaded(reopened, "run-1") == expected("run-1", 3)


Write = Callable[[], Awaitable[object]]


async def one_batch(
    store: bz.SqliteCheckpointStore, faults: Faults, writes: dict[str, Write]
) -> dict[str, BaseException | None]:
    """Hold the writer at the commit of a lead write, start `writes`, then let it go on: they
    all queued meanwhile, so they are the next batch. Returns each write's outcome."""
    outcomes: dict[str, BaseException | None] = {}

    async def run(name: str, write: Write) -> None:
        try:
            await write()
        except bz.WorkflowError as exc:
            outcomes[name] = exc
        else:
            outcomes[name] = None

    faults.hold_commits()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "lead", functools.partial(store.save, start("lead")))
        await trio.to_thread.run_sync(faults.at_gate.wait)
        for name, write in writes.items():
            nursery.start_soon(run, name, write)
        await trio.testing.wait_all_tasks_blocked()
        faults.gate.set()
    assert outcomes.pop("lead") is None
    return outcomes


def appends(
    writes: dict[str, bz.JournalRecord], store: bz.SqliteCheckpointStore
) -> dict[str, Write]:
    return {
        run_id: functools.partial(store.append, run_id, item) for run_id, item in writes.items()
    }


async def test_a_failed_statement_fails_every_write_of_its_batch(path: pathlib.Path) -> None:
    faults = Faults()
    async with bz.SqliteCheckpointStore(path, connect=faults.connect) as store:
        for run_id in "abc":
            await store.save(start(run_id))
        faults.fail_sql = "INSERT INTO records"  # in the batch after the lead write
        outcomes = await one_batch(store, faults, appends(dict.fromkeys("abc", record(1)), store))
        for run_id in "abc":
            assert isinstance(outcomes[run_id], bz.CheckpointStoreError)
            assert "disk I/O error" in str(outcomes[run_id])
            assert await loaded(store, run_id) == start(run_id)
        assert await loaded(store, "lead") == start("lead")


async def test_a_refused_write_fails_alone_in_its_batch(path: pathlib.Path) -> None:
    faults = Faults()
    async with bz.SqliteCheckpointStore(path, connect=faults.connect) as store:
        for run_id in "abc":
            await store.save(start(run_id))
        writes = appends({"a": record(1), "b": record(2), "c": record(1)}, store)  # b skips one
        writes["respond"] = functools.partial(store.respond, "c", "no-such-request", "yes")
        commits = faults.commits
        outcomes = await one_batch(store, faults, writes)
        assert faults.commits - commits == 2  # the lead's, then one for the whole batch
        assert (outcomes["a"], outcomes["c"]) == (None, None)
        assert "record 2 does not follow record 0" in str(outcomes["b"])
        assert isinstance(outcomes["respond"], bz.UnknownInputRequest)
        assert [await loaded(store, run_id) for run_id in "abc"] == [
            expected("a", 1),
            start("b"),
            expected("c", 1),
        ]


async def test_a_thousand_runs_share_one_commit(path: pathlib.Path) -> None:
    """Group commit: the writes queued while the writer is busy commit in one transaction."""
    faults = Faults()
    runs = [f"run-{index}" for index in range(1000)]
    async with bz.SqliteCheckpointStore(path, connect=faults.connect) as store:
        commits = faults.commits
        saves = {run_id: functools.partial(store.save, start(run_id)) for run_id in runs}
        assert await one_batch(store, faults, dict(saves)) == dict.fromkeys(runs)
        outcomes = await one_batch(store, faults, appends(dict.fromkeys(runs, record(1)), store))
        assert outcomes == dict.fromkeys(runs)
        assert faults.commits - commits == 4  # two leads, two batches of a thousand
        assert {info.seq for info in await store.list()} == {0, 1}  # the lead has no record
        assert len(await store.list()) == 1001


@pytest.mark.parametrize("fails", [False, True])
async def test_a_cancelled_writer_waits_for_its_write_and_learns_the_outcome(
    path: pathlib.Path, fails: bool
) -> None:
    faults = Faults()
    outcome: list[str] = []
    async with bz.SqliteCheckpointStore(path, connect=faults.connect) as store:
        await store.save(start("run-1"))
        scope = trio.CancelScope()

        async def appender() -> None:
            with scope:
                try:
                    await store.append("run-1", record(1))
                except bz.CheckpointStoreError:
                    outcome.append("failed")
                else:
                    outcome.append("written")

        faults.hold_commits()
        faults.fail_commits = int(fails)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(appender)
            await trio.to_thread.run_sync(faults.at_gate.wait)
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            faults.gate.set()
        assert scope.cancelled_caught is False
        assert outcome == ["failed" if fails else "written"]
        assert (await loaded(store, "run-1")).journal_seq == (0 if fails else 1)


# -- processes sharing the file --------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    return env


async def run_child(path: pathlib.Path, *args: object) -> str:
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, str(CHILD), str(path), *map(str, args)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=child_env(),
        )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def test_two_processes_write_other_runs_of_one_file(path: pathlib.Path) -> None:
    async with bz.SqliteCheckpointStore(path) as store:
        await store.save(start("parent"))
        seq = 0
        async with trio.open_nursery() as nursery:
            child_done = trio.Event()

            async def child() -> None:
                await run_child(path, "append", "child", 50, 16)
                child_done.set()

            nursery.start_soon(child)
            while not child_done.is_set() or seq < 20:  # writes all through the child's life
                seq += 1
                await store.append("parent", record(seq))
        assert await loaded(store, "parent") == expected("parent", seq)
        assert await loaded(store, "child") == expected("child", 50)
        assert [info.run_id for info in await store.list()] == ["parent", "child"]


async def test_a_second_writer_of_the_same_run_is_refused(path: pathlib.Path) -> None:
    async with bz.SqliteCheckpointStore(path) as store:
        await store.save(start("run-1"))
        for item in records(2):
            await store.append("run-1", item)
        assert await run_child(path, "stale", "run-1", 2) == (
            "refused: run 'run-1': journal record 2 does not follow record 2 "
            "(another writer holds this run?)\n"
        )
        assert await run_child(path, "stale", "run-1", 3) == "appended\n"
        with pytest.raises(bz.CheckpointStoreError, match="record 3 does not follow record 3"):
            await store.append("run-1", record(3))  # this handle's view is stale now
        assert await loaded(store, "run-1") == expected("run-1", 3)


async def kill_child_after(path: pathlib.Path, acks: int, compact_every: int) -> list[int]:
    """Start a child appending without end, SIGKILL it once it acknowledged `acks` records;
    returns every seq it acknowledged (those read after the kill too)."""
    process = await trio.lowlevel.open_process(
        [sys.executable, str(CHILD), str(path), "append", "child", str(10**9), str(compact_every)],
        stdout=subprocess.PIPE,
        env=child_env(),
    )
    assert process.stdout is not None
    output = b""
    with trio.fail_after(60):
        while output.count(b"\n") < acks:
            chunk = await process.stdout.receive_some()
            assert chunk, "the child died on its own"
            output += chunk
        os.kill(process.pid, signal.SIGKILL)
        assert await process.wait() == -signal.SIGKILL
        while chunk := await process.stdout.receive_some():
            output += chunk
    await process.stdout.aclose()
    lines = output.split(b"\n")[:-1]  # a line cut by the kill was not acknowledged
    return [int(line) for line in lines]


KILLS = settings(
    max_examples=3, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)


@KILLS
@given(acks=st.integers(min_value=1, max_value=40))
async def test_every_acknowledged_record_survives_sigkill(
    tmp_path: pathlib.Path, acks: int
) -> None:
    path = tmp_path / f"{uuid.uuid4().hex}.db"
    acknowledged = await kill_child_after(path, acks, compact_every=16)
    assert acknowledged == list(range(1, len(acknowledged) + 1))
    async with bz.SqliteCheckpointStore(path) as store:
        snapshot = await loaded(store, "child")
        assert snapshot.journal_seq - acknowledged[-1] in (0, 1)  # one may land unacknowledged
        assert snapshot == expected("child", snapshot.journal_seq)
        kept = [info.seq for info in await store.history("child")]
        assert kept == list(range(snapshot.journal_seq // 16 * 16 + 1, snapshot.journal_seq + 1))


@KILLS
@given(acks=st.integers(min_value=1, max_value=40))
async def test_a_child_killed_while_compacting_leaves_a_consistent_run(
    tmp_path: pathlib.Path, acks: int
) -> None:
    """compact_every=1: every append folds the run (which grows) into a new base."""
    path = tmp_path / f"{uuid.uuid4().hex}.db"
    acknowledged = await kill_child_after(path, acks, compact_every=1)
    async with bz.SqliteCheckpointStore(path) as store:
        snapshot = await loaded(store, "child")
        assert snapshot.journal_seq - acknowledged[-1] in (0, 1)
        assert snapshot == expected("child", snapshot.journal_seq)
        assert await store.history("child") == []  # compaction commits with its record
        await store.append("child", record(snapshot.journal_seq + 1))  # and the run goes on


async def test_a_disk_that_fails_a_write_fails_the_durable_run_and_loses_nothing(
    path: pathlib.Path,
) -> None:
    """A run, not just a store: its commit's write fails on a real connection wrapper."""
    commits: list[bz.StepCommit] = []
    faults = Faults()

    class Part(bz.Event):
        n: int

    @bz.step
    async def fan(ev: bz.StartEvent) -> list[Part]:
        return [Part(n=n) for n in range(3)]

    @bz.step(max_concurrency=1)
    async def work(ctx: bz.Context, ev: Part) -> bz.StopEvent | None:
        ctx.set(f"part{ev.n}", ev.n)
        if ev.n == 1:
            faults.fail_commits = 1  # the disk fails the commit of this step's record
        return bz.StopEvent(result="done") if ev.n == 2 else None

    async with bz.SqliteCheckpointStore(path, connect=faults.connect) as store:
        wf = bz.Workflow("disk", [fan, work], checkpoint_store=store)
        with pytest.raises(bz.CheckpointStoreError, match="disk I/O error"):
            await wf.run(run_id="d1", on_commit=commits.append)
    assert [(c.step, c.event) for c in commits] == [("fan", bz.StartEvent()), ("work", Part(n=0))]
    async with bz.SqliteCheckpointStore(path) as reopened:  # the file opens, nothing is lost
        stored = await reopened.load("d1")
        assert stored is not None
        assert stored.status == bz.RunStatus.RUNNING  # recoverable once the disk is back
        assert stored.state == {"part0": 0}
        result = await bz.Workflow("disk", [fan, work], checkpoint_store=reopened).recover()
    assert isinstance(result["d1"], bz.WorkflowResult)
    assert result["d1"].result == "done"
