"""One suite, every checkpoint store: the same calls must give the same answers.

`MemoryCheckpointStore` is the reference; each case runs against it, against SQLite at both
durabilities, against PostgreSQL (a real server: tests/_postgres.py), and against each with a
journal compacted every 3 records. Times come from a
clock the test moves, never from sleeping.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import pathlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import attrs
import pytest
import trio
import trio.testing

import blazen_trio as bz
from blazen_trio._journal import fold
from blazen_trio._records import BufferOp
from blazen_trio._stores import DEFAULT_COMPACT_EVERY, encode_answer
from blazen_trio.postgres import PostgresCheckpointStore

RUNNING = bz.RunStatus.RUNNING
COMPLETED = bz.RunStatus.COMPLETED
FAILED = bz.RunStatus.FAILED
WAITING = bz.RunStatus.WAITING_FOR_INPUT
T0 = 1_700_000_000.0
Store = bz.CheckpointStore


@attrs.define
class Clock:
    """The stores' clock: it moves only when a test moves it."""

    now: float = T0

    def __call__(self) -> float:
        return self.now


@attrs.frozen
class Kind:
    name: str
    backend: Literal["memory", "sqlite", "postgres"]
    durability: Literal["full", "normal"] = "full"
    compact_every: int = DEFAULT_COMPACT_EVERY


KINDS = [
    Kind("memory", "memory"),
    Kind("sqlite-full", "sqlite"),
    Kind("sqlite-normal", "sqlite", durability="normal"),
    Kind("postgres", "postgres"),
    Kind("memory-compact3", "memory", compact_every=3),
    Kind("sqlite-compact3", "sqlite", compact_every=3),
    Kind("postgres-compact3", "postgres", compact_every=3),
]


@pytest.fixture(params=KINDS, ids=[kind.name for kind in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    kind: Kind = request.param
    return kind


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(
    kind: Kind, tmp_path: pathlib.Path, clock: Clock, request: pytest.FixtureRequest
) -> AsyncIterator[Store]:
    if kind.backend == "memory":
        yield bz.MemoryCheckpointStore(compact_every=kind.compact_every, clock=clock)
        return
    if kind.backend == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        async with PostgresCheckpointStore(
            dsn, compact_every=kind.compact_every, clock=clock
        ) as postgres_store:
            yield postgres_store
        return
    async with bz.SqliteCheckpointStore(
        tmp_path / "runs.db",
        durability=kind.durability,
        compact_every=kind.compact_every,
        clock=clock,
    ) as sqlite_store:
        yield sqlite_store


async def latest(store: Store, run_id: str = "run-1") -> bz.WorkflowSnapshot:
    snapshot = await store.load(run_id)
    assert snapshot is not None
    return snapshot


def base_seq(kind: Kind, last: int) -> int:
    """Where compaction left a run's base after records 1..last were appended to a new run."""
    return last // kind.compact_every * kind.compact_every


# -- building runs by hand -------------------------------------------------------------------


def ev(type_id: str, **payload: Any) -> bz.EncodedEvent:
    return bz.EncodedEvent(type_id=type_id, payload=payload)


def pending(event: bz.EncodedEvent, seq: int, target: str, source: str | None = None) -> Any:
    return bz.PendingEvent(event=event, source_step=source, target_step=target, seq=seq)


def request(request_id: str) -> bz.EncodedEvent:
    return ev("blazen_trio:InputRequestEvent", request_id=request_id, prompt="ok?")


def ref(key: str) -> bz.SerializedRef:
    return bz.SerializedRef(
        key=key, lifetime=bz.RefLifetime.UNTIL_RUN_END, codec="pickle", type_path="m:C", data="AA=="
    )


def entry(sequence: int, kind: bz.HistoryKind, step: str | None = None) -> bz.HistoryEntry:
    return bz.HistoryEntry(sequence=sequence, kind=kind, timestamp=T0 + sequence, step=step)


def snapshot(
    run_id: str = "run-1",
    *,
    workflow: str = "orders",
    status: bz.RunStatus = RUNNING,
    requests: Sequence[str] = (),
    **fields: Any,
) -> bz.WorkflowSnapshot:
    parts: dict[str, Any] = {
        "state": {},
        "pending_events": [],
        "collect_buffers": {},
        "usage": bz.UsageTotals(),
        "history": [],
        "metadata": {},
        "session_refs": {},
    }
    parts.update(fields)
    return bz.WorkflowSnapshot(
        workflow_name=workflow,
        run_id=run_id,
        created_at=dt.datetime(2024, 6, 1, tzinfo=dt.UTC),
        status=status,
        input_requests=[request(request_id) for request_id in requests],
        **parts,
    )


ITEM1, ITEM2 = ev("app:Item", n=1), ev("app:Item", n=2)
DONE0, DONE1 = ev("app:Done", n=0), ev("app:Done", n=1)
RESPONSE = ev("blazen_trio:InputResponseEvent", request_id="ask-1", response="yes")
STOP = ev("blazen_trio:StopEvent", result="shipped")

START = snapshot(
    state={"count": 0, "last": None},
    pending_events=[pending(ITEM1, 1, "work"), pending(ITEM2, 2, "work")],
    collect_buffers={"join": [DONE0]},
    usage=bz.UsageTotals(prompt_tokens=1, completion_tokens=2, total_tokens=3, cost_usd=0.25),
    history=[entry(1, bz.HistoryKind.RUN_STARTED)],
    session_refs={"old": ref("old")},
)

RECORDS = [
    bz.JournalRecord(  # work consumes Item 1, routes Done 1 to join, writes state, spends
        seq=1,
        at=T0 + 1,
        step="work",
        consumed=1,
        routed=[pending(DONE1, 3, "join", source="work")],
        state_set={"count": 1, "last": "a"},
        usage=bz.UsageTotals(prompt_tokens=10, completion_tokens=5, total_tokens=15, cost_usd=0.5),
        history=[entry(2, bz.HistoryKind.STEP_COMPLETED, "work")],
    ),
    bz.JournalRecord(  # work failed on Item 2 and will try again
        seq=2,
        at=T0 + 2,
        step="work",
        retried=2,
        attempt=2,
        history=[entry(3, bz.HistoryKind.STEP_RETRIED, "work")],
    ),
    bz.JournalRecord(  # join buffers Done 1, swaps refs, asks a human
        seq=3,
        at=T0 + 3,
        step="join",
        consumed=3,
        buffers=[BufferOp(step="join", event=DONE1)],
        state_deleted=["last"],
        refs_inserted={"new": ref("new")},
        refs_dropped=["old"],
        requests=[request("ask-1")],
        status=WAITING,
    ),
    bz.JournalRecord(seq=4, at=T0 + 4, answered="ask-1", response=RESPONSE, status=RUNNING),
    bz.JournalRecord(  # the answer is routed; work commits Item 2; join takes both and stops
        seq=5,
        at=T0 + 5,
        step="work",
        consumed=2,
        attempt=2,
        responses_routed=True,
        buffers=[
            BufferOp(step="join", event=DONE0, taken=True),
            BufferOp(step="join", event=DONE1, taken=True),
        ],
        state_set={"count": 2},
        usage=bz.UsageTotals(total_tokens=1),
        history=[entry(4, bz.HistoryKind.COMPLETED)],
        status=COMPLETED,
        result=STOP,
        active_time=12.5,
    ),
]


async def write_run(store: Store, records: Sequence[bz.JournalRecord] = RECORDS) -> None:
    await store.save(START)
    for record in records:
        await store.append(START.run_id, record)


# -- the cases -------------------------------------------------------------------------------


async def test_a_saved_snapshot_loads_as_it_was(store: Store) -> None:
    await store.save(START)
    assert await store.load("run-1") == START
    assert await store.load("nobody") is None
    assert await store.history("run-1") == []
    assert await store.list() == [bz.RunInfo("run-1", "orders", RUNNING, T0, T0, 0)]


async def test_appended_records_fold_into_the_snapshot(store: Store, clock: Clock) -> None:
    await store.save(START)
    for record in RECORDS:
        clock.now += 10
        await store.append("run-1", record)

    expected = snapshot(
        status=COMPLETED,
        state={"count": 2},
        pending_events=[],
        collect_buffers={},
        usage=bz.UsageTotals(prompt_tokens=11, completion_tokens=7, total_tokens=19, cost_usd=0.75),
        history=[
            entry(1, bz.HistoryKind.RUN_STARTED),
            entry(2, bz.HistoryKind.STEP_COMPLETED, "work"),
            entry(3, bz.HistoryKind.STEP_RETRIED, "work"),
            entry(4, bz.HistoryKind.COMPLETED),
        ],
        session_refs={"new": ref("new")},
        active_time=12.5,
        journal_seq=5,
        routed_seq=3,  # the highest routing order a record gave (DONE1's)
        result=STOP,
    )
    assert await store.load("run-1") == expected
    [info] = await store.list()
    assert (info.status, info.seq, info.created_at, info.updated_at) == (COMPLETED, 5, T0, T0 + 50)


async def test_the_middle_of_the_journal_folds_exactly(store: Store) -> None:
    await write_run(store, RECORDS[:3])
    expected = snapshot(
        status=WAITING,
        requests=["ask-1"],
        state={"count": 1},
        pending_events=[bz.PendingEvent(event=ITEM2, target_step="work", attempt=2, seq=2)],
        collect_buffers={"join": [DONE0, DONE1]},
        usage=bz.UsageTotals(prompt_tokens=11, completion_tokens=7, total_tokens=18, cost_usd=0.75),
        history=[
            entry(1, bz.HistoryKind.RUN_STARTED),
            entry(2, bz.HistoryKind.STEP_COMPLETED, "work"),
            entry(3, bz.HistoryKind.STEP_RETRIED, "work"),
        ],
        session_refs={"new": ref("new")},
        journal_seq=3,
        routed_seq=3,
    )
    assert await store.load("run-1") == expected


async def test_load_at_gives_each_kept_record_and_refuses_the_rest(
    store: Store, kind: Kind
) -> None:
    await write_run(store)
    first = base_seq(kind, len(RECORDS))
    for at in range(first, len(RECORDS) + 1):
        assert await store.load("run-1", at=at) == fold(START, RECORDS[:at]), at
    for at in {first - 1, len(RECORDS) + 1} - {-1}:
        with pytest.raises(bz.CheckpointStoreError, match=f"record {at} is not kept"):
            await store.load("run-1", at=at)


async def test_history_lists_the_kept_records(store: Store, kind: Kind) -> None:
    await write_run(store)
    first = base_seq(kind, len(RECORDS))
    assert await store.history("run-1") == [
        bz.CheckpointInfo(record.seq, record.step, record.at) for record in RECORDS[first:]
    ]
    assert await store.history("nobody") == []


async def test_compaction_never_changes_what_load_gives(store: Store, kind: Kind) -> None:
    await store.save(START)
    for count, record in enumerate(RECORDS, start=1):
        await store.append("run-1", record)
        assert await store.load("run-1") == fold(START, RECORDS[:count])
        assert len(await store.history("run-1")) == count - base_seq(kind, count)


async def test_a_record_that_does_not_follow_the_last_is_refused(store: Store) -> None:
    await write_run(store, RECORDS[:2])
    for seq in (2, 4, 1):  # a duplicate, a gap, an old one
        with pytest.raises(bz.CheckpointStoreError, match=f"record {seq} does not follow record 2"):
            await store.append("run-1", RECORDS[seq - 1])
    assert await store.load("run-1") == fold(START, RECORDS[:2])
    await store.append("run-1", RECORDS[2])
    assert (await store.list())[0].seq == 3
    with pytest.raises(bz.CheckpointStoreError, match="no run 'nobody'"):
        await store.append("nobody", RECORDS[0])


async def test_saving_a_new_base_drops_the_records_it_includes(store: Store) -> None:
    await write_run(store, RECORDS[:2])
    before = await latest(store)
    await store.save(before)
    assert await store.history("run-1") == []
    assert await store.load("run-1") == before
    await store.append("run-1", RECORDS[2])
    assert await store.load("run-1") == fold(START, RECORDS[:3])


async def test_list_filters_by_workflow_and_status_oldest_first(store: Store, clock: Clock) -> None:
    for run_id, workflow in [("a", "orders"), ("b", "billing"), ("c", "orders"), ("d", "orders")]:
        clock.now += 1
        await store.save(snapshot(run_id, workflow=workflow))
    await store.append("b", bz.JournalRecord(seq=1, at=T0, status=COMPLETED))
    await store.append("c", bz.JournalRecord(seq=1, at=T0, status=FAILED))
    await store.append("c", bz.JournalRecord(seq=2, at=T0, step="cleanup"))

    async def ids(**filters: Any) -> list[str]:
        return [info.run_id for info in await store.list(**filters)]

    assert await ids() == ["a", "b", "c", "d"]
    assert await ids(workflow="orders") == ["a", "c", "d"]
    assert await ids(status=COMPLETED) == ["b"]
    assert await ids(status=[RUNNING, FAILED]) == ["a", "c", "d"]
    assert await ids(workflow="orders", status="failed") == ["c"]
    assert await ids(workflow="nothing") == []
    assert await ids(status=[]) == []
    info = {info.run_id: info for info in await store.list()}
    assert info["c"] == bz.RunInfo("c", "orders", FAILED, T0 + 3, T0 + 4, 2)


async def test_delete_forgets_one_run(store: Store) -> None:
    await write_run(store)
    await store.save(snapshot("run-2"))
    await store.delete("run-1")
    await store.delete("nobody")
    assert await store.load("run-1") is None
    assert await store.history("run-1") == []
    assert [info.run_id for info in await store.list()] == ["run-2"]
    await store.save(START)  # the id is free again: a new run, journal from 1
    await store.append("run-1", RECORDS[0])
    assert await store.load("run-1") == fold(START, RECORDS[:1])


async def test_prune_removes_old_runs_in_the_given_statuses(store: Store, clock: Clock) -> None:
    runs = {"old-done": COMPLETED, "old-failed": FAILED, "old-running": RUNNING}
    for run_id, status in runs.items():
        await store.save(snapshot(run_id, status=status))
    await store.save(snapshot("touched", status=RUNNING))
    clock.now += 7200
    await store.append("touched", bz.JournalRecord(seq=1, at=clock.now, status=COMPLETED))
    await store.save(snapshot("new-done", status=COMPLETED))
    clock.now += 1800

    older_than = dt.timedelta(hours=1)
    assert await store.prune(older_than=older_than) == 2
    remaining = {info.run_id for info in await store.list()}
    assert remaining == {"old-running", "touched", "new-done"}
    assert await store.prune(older_than=older_than, statuses=[RUNNING]) == 1
    assert await store.prune(older_than=dt.timedelta(minutes=10)) == 2
    assert await store.list() == []
    with pytest.raises(TypeError, match="timedelta"):
        await store.prune(older_than=3600)  # type: ignore[arg-type]  # wrong on purpose


async def test_respond_answers_an_outstanding_request(store: Store, clock: Clock) -> None:
    await store.save(snapshot(status=WAITING, requests=["ask-1", "ask-2"]))
    with pytest.raises(bz.UnknownInputRequest):
        await store.respond("run-1", "ask-9", "yes")
    assert (await latest(store)).journal_seq == 0
    assert await store.history("run-1") == []

    clock.now += 5
    await store.respond("run-1", "ask-1", "yes")
    answered = await latest(store)
    assert [r.payload["request_id"] for r in answered.input_requests] == ["ask-2"]
    assert answered.input_responses == [encode_answer("ask-1", "yes")]
    assert answered.status == WAITING  # ask-2 is still outstanding
    assert await store.history("run-1") == [bz.CheckpointInfo(1, None, T0 + 5)]
    with pytest.raises(bz.UnknownInputRequest):
        await store.respond("run-1", "ask-1", "again")

    await store.respond("run-1", "ask-2", {"n": 2})
    done = await latest(store)
    assert (done.status, done.input_requests, len(done.input_responses)) == (RUNNING, [], 2)
    assert (await store.list())[0].status == RUNNING
    with pytest.raises(bz.CheckpointStoreError, match="no run 'nobody'"):
        await store.respond("nobody", "ask-1", "yes")


async def test_concurrent_appends_to_many_runs_all_land_in_order(store: Store, kind: Kind) -> None:
    """100 runs appending 10 records each at once: the SQLite store commits them in groups."""
    runs = [f"run-{index}" for index in range(100)]
    for run_id in runs:
        await store.save(snapshot(run_id))

    async def journal(run_id: str) -> None:
        for seq in range(1, 11):
            await store.append(run_id, bz.JournalRecord(seq=seq, at=T0, state_set={"n": seq}))

    async with trio.open_nursery() as nursery:
        for run_id in runs:
            nursery.start_soon(journal, run_id)
    for run_id in runs:
        loaded = await latest(store, run_id)
        assert (loaded.journal_seq, loaded.state) == (10, {"n": 10})
        kept = [info.seq for info in await store.history(run_id)]
        assert kept == list(range(base_seq(kind, 10) + 1, 11))


async def test_a_cancelled_appender_knows_whether_its_record_landed(store: Store) -> None:
    await write_run(store, RECORDS[:2])
    reported = False

    async def appender(scope: trio.CancelScope) -> None:
        nonlocal reported
        with scope:
            await store.append("run-1", RECORDS[2])
            reported = True

    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(appender, scope)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
    landed = (await latest(store)).journal_seq
    assert landed == (3 if reported else 2)
    assert await store.load("run-1") == fold(START, RECORDS[:landed])


@pytest.mark.parametrize("sqlite", [False, True], ids=["memory", "sqlite"])
async def test_by_default_compaction_waits_until_the_journal_is_as_large_as_the_base(
    tmp_path: pathlib.Path, sqlite: bool
) -> None:
    """Each compaction rewrites the whole base: with a big state it comes rarely, so a step's
    cost does not grow with the state; a small run still compacts every 256 records."""
    store = bz.SqliteCheckpointStore(tmp_path / "auto.db") if sqlite else bz.MemoryCheckpointStore()
    async with contextlib.AsyncExitStack() as stack:
        if isinstance(store, bz.SqliteCheckpointStore):
            await stack.enter_async_context(store)
        await store.save(snapshot("small"))
        await store.save(snapshot("big", state={f"key{n}": n for n in range(30_000)}))
        for seq in range(1, 513):
            for run_id in ("small", "big"):
                await store.append(run_id, bz.JournalRecord(seq=seq, at=T0, state_set={"n": seq}))
        assert len(await store.history("small")) == 0  # compacted at 256 and at 512
        assert len(await store.history("big")) == 512  # its journal is still smaller
        loaded = await store.load("big")
        assert loaded is not None
        assert (loaded.journal_seq, loaded.state["n"], len(loaded.state)) == (512, 512, 30_001)
