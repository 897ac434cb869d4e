"""Durable runs on a checkpoint store: write-ahead commits, recovery, suspension, attach, fork.

Crashes are simulated here by cancelling the run from outside (the store keeps it running, as
after a kill); tests/test_crash.py kills real processes.
"""

from __future__ import annotations

import builtins  # `list` is a method name of the store below
import datetime
from collections import Counter
from typing import Any

import _legacy_formats as legacy
import pytest
import trio
import trio.testing

import blazen_trio as bz

GUARD = 3600


class Item(bz.Event):
    n: int


class Done(bz.Event):
    n: int


class Ref(bz.Event):
    ref: bz.SessionRef


class Box:
    """Picklable, so it can go into a journal under PICKLE_OR_ERROR."""

    def __init__(self, label: str) -> None:
        self.label = label


Effects = Counter[str]


def fanning(effects: Effects, store: bz.CheckpointStore | None, **options: Any) -> bz.Workflow:
    """fan -> 4 Items -> work (5 s, state, usage) -> join (collect) -> StopEvent."""

    @bz.step
    async def fan(ctx: bz.Context, ev: bz.StartEvent) -> list[Item] | Ref:
        effects[ctx.idempotency_key] += 1
        ctx.set("input", ev.data)
        ctx.send_event(Ref(ref=ctx.refs.insert(Box("kept"))))
        return [Item(n=n) for n in range(4)]

    @bz.step
    async def holder(ctx: bz.Context, ev: Ref) -> None:
        ctx.set("box", ctx.refs.get(ev.ref).label)

    @bz.step(max_concurrency=2)
    async def work(ctx: bz.Context, ev: Item) -> Done:
        await trio.sleep(5)
        effects[ctx.idempotency_key] += 1
        ctx.set(f"item{ev.n}", ev.n * ev.n)
        ctx.emit_usage(bz.UsageEvent(total_tokens=10))
        return Done(n=ev.n)

    @bz.step
    async def join(ctx: bz.Context, ev: Done) -> bz.StopEvent | None:
        got = ctx.collect_events(ev, [Done] * 4)
        if got is None:
            return None
        return bz.StopEvent(result=sorted(d.n for d in got if isinstance(d, Done)))

    return bz.Workflow(
        "fanning", [fan, holder, work, join], checkpoint_store=store, history=True, **options
    )


async def test_a_durable_run_gives_the_same_result_and_is_stored_completed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = bz.MemoryCheckpointStore()
    result = await fanning(Counter(), store).run("x")
    assert result.result == [0, 1, 2, 3]
    assert result.usage.total_tokens == 40
    stored = await store.load(result.run_id)
    assert stored is not None
    assert stored.status == bz.RunStatus.COMPLETED
    assert stored.result is not None
    assert stored.pending_events == []
    infos = await store.list(workflow="fanning")
    assert [(i.run_id, i.status) for i in infos] == [(result.run_id, bz.RunStatus.COMPLETED)]
    assert len(await store.history(result.run_id)) > 5


def _comparable(snapshot: bz.WorkflowSnapshot) -> dict[str, Any]:
    return {
        "state": snapshot.state,
        "pending": sorted(
            (p.seq, p.target_step, p.event.type_id, str(p.event.payload), p.attempt)
            for p in snapshot.pending_events
        ),
        "buffers": {
            step: [str(e.payload) for e in b] for step, b in snapshot.collect_buffers.items()
        },
        "requests": snapshot.input_requests,
        "usage": snapshot.usage,
        "refs": sorted(snapshot.session_refs),
    }


@pytest.mark.parametrize("when", [0.5, 5.5, 7.5])
async def test_folding_the_journal_gives_what_the_live_run_snapshots(
    autojump_clock: trio.testing.MockClock, when: float
) -> None:
    store = bz.MemoryCheckpointStore(compact_every=3)
    async with fanning(Counter(), store).start("x") as handler:
        await trio.sleep(when)
        await handler.pause()
        live = await handler.snapshot()
        stored = await store.load(handler.run_id)
        await handler.abort()
    assert stored is not None
    assert _comparable(stored) == _comparable(live)
    assert stored.status == bz.RunStatus.PAUSED


async def _crash_after(wf: bz.Workflow, seconds: float, run_id: str) -> None:
    """Run until `seconds` of virtual time, then stop as a killed process would."""
    with trio.move_on_after(seconds):
        await wf.run("x", run_id=run_id)


@pytest.mark.parametrize("crash_at", [0.1, 3.0, 5.0, 7.5, 9.9])
async def test_recover_goes_on_from_the_last_commit_without_redoing_it(
    autojump_clock: trio.testing.MockClock, crash_at: float
) -> None:
    store = bz.MemoryCheckpointStore(compact_every=4)
    effects: Effects = Counter()
    await _crash_after(fanning(effects, store), crash_at, "r1")
    info = await store.list()
    assert [i.status for i in info] == [bz.RunStatus.RUNNING]
    outcomes = await fanning(effects, store).recover()
    result = outcomes["r1"]
    assert isinstance(result, bz.WorkflowResult)
    assert result.result == [0, 1, 2, 3]
    assert result.usage.total_tokens >= 40
    # Committed invocations ran once; only those in flight at the crash could run twice.
    assert len(effects) == 5
    assert sum(effects.values()) <= 5 + 2  # at most the two in flight (max_concurrency=2)
    stored = await store.load("r1")
    assert stored is not None
    assert stored.state["box"] == "kept"  # read through the session ref, kept across the crash
    assert {stored.state[f"item{n}"] for n in range(4)} == {0, 1, 4, 9}
    assert (await store.list())[0].status == bz.RunStatus.COMPLETED


async def test_recover_with_nothing_to_do_returns_nothing() -> None:
    assert await fanning(Counter(), bz.MemoryCheckpointStore()).recover() == {}


async def test_a_run_submitted_before_snapshot_version_3_is_started_from_its_stored_input() -> None:
    """Its start event is a map in the base's metadata (tests/formats), which no migration
    rewrites: recovery reads it in that layout."""
    submitted = bz.WorkflowSnapshot.from_bytes(
        await trio.Path(legacy.FORMATS / "submitted_v2.msgpack").read_bytes()
    )
    assert submitted.metadata == legacy.submitted().metadata

    @bz.step
    async def answer(ev: bz.StartEvent) -> bz.StopEvent:
        return bz.StopEvent(result=ev.data * 6)

    store = bz.MemoryCheckpointStore()
    await store.save(submitted)
    outcomes = await bz.Workflow("quick", [answer]).recover(store)
    assert list(outcomes) == ["submitted-1"]
    assert isinstance(outcomes["submitted-1"], bz.WorkflowResult)
    assert outcomes["submitted-1"].result == 42


async def test_the_same_run_id_attaches_instead_of_running_twice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = bz.MemoryCheckpointStore()
    effects: Effects = Counter()
    first = await fanning(effects, store).run("x", run_id="order-42")
    again = await fanning(effects, store).run("x", run_id="order-42")
    assert (again.result, again.run_id) == (first.result, "order-42")
    assert sum(effects.values()) == 5


def asking(store: bz.CheckpointStore, seen: list[Any]) -> bz.Workflow:
    @bz.step
    async def ask(ev: bz.StartEvent) -> bz.InputRequestEvent:
        return bz.InputRequestEvent(prompt="ok?", request_id="approve")

    @bz.step
    async def answered(ev: bz.InputResponseEvent) -> bz.StopEvent:
        seen.append(ev.response)
        return bz.StopEvent(result=f"answer: {ev.response}")

    return bz.Workflow("asking", [ask, answered], checkpoint_store=store)


async def test_a_durable_run_waiting_for_input_is_suspended_then_answered_from_the_store() -> None:
    store = bz.MemoryCheckpointStore()
    seen: list[Any] = []
    with pytest.raises(bz.RunSuspended) as suspended:
        await asking(store, seen).run(run_id="hitl")
    assert suspended.value.request_ids == ("approve",)
    assert (await store.list())[0].status == bz.RunStatus.WAITING_FOR_INPUT
    outcomes = await asking(store, seen).recover()
    assert isinstance(outcomes["hitl"], bz.RunSuspended)  # nobody answered yet
    with pytest.raises(bz.UnknownInputRequest):
        await store.respond("hitl", "nope", 1)
    await store.respond("hitl", "approve", "yes")
    with pytest.raises(bz.UnknownInputRequest):
        await store.respond("hitl", "approve", "twice")
    outcomes = await asking(store, seen).recover()
    result = outcomes["hitl"]
    assert isinstance(result, bz.WorkflowResult)
    assert result.result == "answer: yes"
    assert seen == ["yes"]


async def test_a_durable_run_held_by_a_handler_waits_for_its_answer() -> None:
    store = bz.MemoryCheckpointStore()
    async with asking(store, []).start() as handler:
        await trio.testing.wait_all_tasks_blocked()
        assert handler.status == bz.RunStatus.WAITING_FOR_INPUT
        await handler.respond_to_input("approve", 7)
        assert (await handler.result()).result == "answer: 7"
    assert (await store.list())[0].status == bz.RunStatus.COMPLETED


async def test_fork_goes_on_from_an_earlier_record_under_a_new_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = bz.MemoryCheckpointStore(compact_every=None)
    effects: Effects = Counter()
    original = await fanning(effects, store).run("x", run_id="base")
    checkpoints = await store.history("base")
    early = checkpoints[2].seq
    snapshot = await store.load("base", at=early)
    assert snapshot is not None
    forked = await fanning(effects, store).run(resume=snapshot, fork=True, run_id="branch")
    assert (forked.result, forked.run_id) == (original.result, "branch")
    assert (await store.load("base")) is not None
    assert {i.run_id for i in await store.list()} == {"base", "branch"}
    with pytest.raises(bz.SnapshotError, match="fork=True"):
        await fanning(effects, store).run(resume=snapshot)


async def test_retries_count_across_a_recovery(autojump_clock: trio.testing.MockClock) -> None:
    store = bz.MemoryCheckpointStore()
    attempts: list[int] = []

    @bz.step(retry=bz.RetryPolicy(max_attempts=3, initial_delay=10, jitter=0))
    async def flaky(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        attempts.append(ctx.attempt)
        raise ConnectionError("down")

    wf = bz.Workflow("flaky", [flaky], checkpoint_store=store)
    with trio.move_on_after(15):  # attempt 1 failed, waiting before attempt 2
        await wf.run(run_id="f")
    with pytest.raises(bz.StepFailed):
        await wf.run(run_id="f")  # attaches, goes on: attempts 2 and 3 only
    assert attempts == [1, 2, 3]


class FailingStore:
    """The memory store, but appends fail after `good` of them, like a disk gone bad."""

    def __init__(self, good: int) -> None:
        self.inner = bz.MemoryCheckpointStore()
        self.good = good

    async def save(self, snapshot: bz.WorkflowSnapshot) -> None:
        await self.inner.save(snapshot)

    async def append(self, run_id: str, record: bz.JournalRecord) -> None:
        if self.good <= 0:
            raise bz.CheckpointStoreError("disk I/O error")
        self.good -= 1
        await self.inner.append(run_id, record)

    async def load(self, run_id: str, *, at: int | None = None) -> bz.WorkflowSnapshot | None:
        return await self.inner.load(run_id, at=at)

    async def list(self, **filters: Any) -> list[bz.RunInfo]:
        return await self.inner.list(**filters)

    async def history(self, run_id: str) -> builtins.list[bz.CheckpointInfo]:
        return await self.inner.history(run_id)

    async def delete(self, run_id: str) -> None:
        await self.inner.delete(run_id)

    async def prune(self, *, older_than: datetime.timedelta, **kw: Any) -> int:
        return await self.inner.prune(older_than=older_than, **kw)

    async def respond(self, run_id: str, request_id: str, response: Any) -> None:
        await self.inner.respond(run_id, request_id, response)


async def test_a_store_that_fails_a_write_fails_the_run_and_loses_nothing_committed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FailingStore(good=3)
    with pytest.raises(bz.CheckpointStoreError, match="disk I/O error"):
        await fanning(Counter(), store).run("x", run_id="bad")
    stored = await store.inner.load("bad")
    assert stored is not None
    assert stored.journal_seq == 3
    assert stored.status == bz.RunStatus.RUNNING  # recoverable once the disk is back


# -- code-version safety -------------------------------------------------------------------------


class Order(bz.Event, type_id="test.Order"):
    n: int


class OrderV2(bz.Event, type_id="test.Order.v2"):
    n: int


class Note(bz.Event):
    text: str = ""


def versioned(accepting: type[bz.Event], *, extra_step: bool = False) -> bz.Workflow:
    @bz.step
    async def place(ev: bz.StartEvent) -> Order:
        return Order(n=1)

    @bz.step(accepts=[accepting], emits=[bz.StopEvent])
    async def ship(ev: bz.Event) -> bz.StopEvent:
        await trio.sleep(5)
        return bz.StopEvent(result="shipped")

    @bz.step
    async def audit(ev: Note) -> None:
        return None

    steps: list[Any] = [place, ship, audit] if extra_step else [place, ship]
    # Validation would refuse the unused `audit`, or `place` emitting what no step accepts:
    # these are the other versions of a workflow, only resumed here.
    return bz.Workflow("versioned", steps, validate=accepting is Order and not extra_step)


async def _paused_with_work_for_ship() -> bz.WorkflowSnapshot:
    async with versioned(Order).start() as handler:
        await trio.sleep(1)
        await handler.pause(cancel_in_flight=True)
        snapshot = await handler.snapshot()
        await handler.abort()
    assert snapshot.fingerprint is not None
    assert snapshot.fingerprint["ship"].accepts == ["test.Order"]
    return snapshot


async def test_an_incompatible_definition_is_refused_saying_what_differs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    snapshot = await _paused_with_work_for_ship()
    with pytest.raises(bz.SnapshotError) as refused:
        await versioned(OrderV2).run(resume=snapshot)
    message = str(refused.value)
    assert "step 'ship' does not accept test.Order" in message
    assert (
        "it accepted ['test.Order'] when the snapshot was taken, now ['test.Order.v2']" in message
    )


async def test_a_compatible_change_resumes(autojump_clock: trio.testing.MockClock) -> None:
    snapshot = await _paused_with_work_for_ship()
    result = await versioned(Order, extra_step=True).run(resume=snapshot)
    assert result.result == "shipped"


async def test_leaving_start_with_a_paused_durable_run_keeps_it_paused_in_the_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = bz.MemoryCheckpointStore()
    effects: Effects = Counter()
    async with fanning(effects, store).start("x", run_id="held") as handler:
        await trio.sleep(6)
        await handler.pause()
    assert [(i.run_id, i.status) for i in await store.list()] == [("held", bz.RunStatus.PAUSED)]
    assert await fanning(effects, store).recover() == {}  # paused runs wait for a person
    snapshot = await store.load("held")
    assert snapshot is not None
    result = await fanning(effects, store).run(resume=snapshot)
    assert result.result == [0, 1, 2, 3]
    assert sum(effects.values()) == 5  # nothing ran twice


async def test_open_recovery_hands_out_a_handler_per_run_going_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = bz.MemoryCheckpointStore()
    effects: Effects = Counter()
    for run_id in ("one", "two"):
        await _crash_after(fanning(effects, store), 7.5, run_id)
    async with fanning(effects, store).open_recovery() as handlers:
        assert sorted(handlers) == ["one", "two"]
        results = [await handler.result() for handler in handlers.values()]
    assert [r.result for r in results] == [[0, 1, 2, 3]] * 2
    assert {i.status for i in await store.list()} == {bz.RunStatus.COMPLETED}


async def test_a_run_whose_first_write_fails_is_born_recoverable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Nothing journaled yet: the stored run still holds its start, so recovery runs it."""
    store = FailingStore(good=0)
    effects: Effects = Counter()
    with pytest.raises(bz.CheckpointStoreError):
        await fanning(effects, store).run("x", run_id="newborn")
    stored = await store.inner.load("newborn")
    assert stored is not None
    assert [p.target_step for p in stored.pending_events] == ["fan"]
    outcomes = await fanning(effects, store.inner).recover()
    result = outcomes["newborn"]
    assert isinstance(result, bz.WorkflowResult)
    assert result.result == [0, 1, 2, 3]
