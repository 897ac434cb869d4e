"""Workers and clients on a real PostgreSQL server (tests/_postgres.py), in this process.

Workers claim submitted runs, drive them under fenced leases, let go of runs waiting for input
and take them up again once a client answers; a lease that runs out is reclaimed by another
worker, and the old holder's writes are refused (fencing).
"""

from __future__ import annotations

import datetime
from typing import Any

import _legacy_formats as legacy
import msgspec
import pytest
import trio
import trio.testing
from _pg_fixtures import LEASE, POLL, effects, journaled_statuses, lease_holder, row
from _pg_workflow import REQUEST_ID, expected, expected_keys, workflow

import blazen_trio as bz
import blazen_trio._workflow as bz_workflow
from blazen_trio.postgres import PostgresCheckpointStore


async def answer_all(client: bz.WorkflowClient, store: Any, run_ids: list[str]) -> None:
    """Answer each run's input request once it waits for it (as a person at a screen)."""
    waiting = set(run_ids)
    while waiting:
        for info in await store.list(status=bz.RunStatus.WAITING_FOR_INPUT):
            if info.run_id in waiting:
                await client.respond(info.run_id, REQUEST_ID, "yes")
                waiting.discard(info.run_id)
        await trio.sleep(0.05)


async def test_a_worker_completes_submitted_runs(dsn: str, store: PostgresCheckpointStore) -> None:
    client = bz.WorkflowClient(store)
    with trio.fail_after(30):
        async with bz.open_worker(
            store, [workflow], concurrency=3, lease=LEASE, poll_interval=POLL
        ) as worker:
            run_ids = [
                await client.submit("pgtest", {"dsn": dsn, "size": 3}, run_id=f"run-{n}")
                for n in range(6)
            ]
            again = await client.submit("pgtest", {"dsn": dsn, "size": 3}, run_id="run-0")
            assert again == "run-0"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer_all, client, store, run_ids)
                results = [await client.result(run_id) for run_id in run_ids]
            stats = worker.statistics()
    assert [result.result for result in results] == [expected(3)] * 6
    assert stats.runs_held == 0
    assert stats.claimed >= 12  # each run twice: to the input request, then after the answer
    counted = effects(dsn)
    assert len(counted) == 6 * expected_keys(3)
    assert set(counted.values()) == {1}


async def wait_for(predicate: Any, *args: Any, limit: float = 20) -> Any:
    """Poll `await predicate(*args)` until it is truthy: what it waits for is a row in the
    database, which no Trio event of this process can announce."""
    with trio.fail_after(limit):
        while not (found := await predicate(*args)):  # noqa: ASYNC110  # see the docstring
            await trio.sleep(0.02)
    return found


async def waiting(store: PostgresCheckpointStore, run_id: str) -> bool:
    return await status_of(store, run_id) is bz.RunStatus.WAITING_FOR_INPUT


async def status_of(store: PostgresCheckpointStore, run_id: str) -> bz.RunStatus:
    snapshot = await store.load(run_id)
    assert snapshot is not None
    return snapshot.status


async def test_fencing_refuses_every_write_under_a_lost_lease(
    dsn: str, store: PostgresCheckpointStore
) -> None:
    client = bz.WorkflowClient(store)
    await client.submit("pgtest", {"dsn": dsn}, run_id="r")
    [old] = await store.claim("old", ["pgtest"], 1, lease=0.05)
    assert old.epoch == 1
    fenced_old = store.fenced(old)
    await fenced_old.append("r", bz.JournalRecord(seq=1, at=0.0, step="a"))

    async def reclaim() -> list[Any]:
        return await store.claim("new", ["pgtest"], 1, lease=30)

    [new] = await wait_for(reclaim)  # once the old lease has run out
    assert (new.run_id, new.epoch) == ("r", 2)
    record = bz.JournalRecord(seq=2, at=0.0, step="b")
    with pytest.raises(bz.CheckpointStoreError, match="lease of worker 'old' at epoch 1 was lost"):
        await fenced_old.append("r", record)
    snapshot = await store.load("r")
    assert snapshot is not None
    with pytest.raises(bz.CheckpointStoreError, match="was lost"):
        await fenced_old.save(snapshot)
    child = msgspec.structs.replace(snapshot, run_id="r/step/1.1/0")  # a sub-workflow's run
    with pytest.raises(bz.CheckpointStoreError, match="was lost"):
        await fenced_old.save(child)
    assert await store.load(child.run_id) is None
    await store.fenced(new).append("r", record)
    assert [info.seq for info in await store.history("r")] == [1, 2]
    assert await store.renew([old, new], 30) == {"r"}  # the old holder learns it lost


async def test_an_expired_lease_is_reclaimed_by_a_worker(
    dsn: str, store: PostgresCheckpointStore
) -> None:
    """A worker that claimed a run and vanished: the run goes on elsewhere once its lease ends."""
    client = bz.WorkflowClient(store)
    await client.submit("pgtest", {"dsn": dsn, "size": 2}, run_id="r")
    [ghost] = await store.claim("ghost", ["pgtest"], 1, lease=0.5)
    with trio.fail_after(20):
        async with bz.open_worker(store, [workflow], lease=LEASE, poll_interval=POLL):
            assert await status_of(store, "r") is bz.RunStatus.RUNNING
            await answer_all(client, store, ["r"])
            assert (await client.result("r")).result == expected(2)
    with pytest.raises(bz.CheckpointStoreError, match="was lost"):
        await store.fenced(ghost).append("r", bz.JournalRecord(seq=99, at=0.0))


async def test_a_client_pauses_resumes_and_aborts_runs_held_or_not(
    dsn: str, store: PostgresCheckpointStore
) -> None:
    client = bz.WorkflowClient(store)
    # No worker yet: the store carries the commands out itself.
    await client.submit("pgtest", {"dsn": dsn, "size": 2}, run_id="idle")
    await client.pause("idle")
    assert await client.status("idle") is bz.RunStatus.PAUSED
    await client.resume("idle")
    assert await client.status("idle") is bz.RunStatus.RUNNING
    await client.submit("pgtest", {"dsn": dsn, "size": 2}, run_id="doomed")
    await client.abort("doomed")
    with pytest.raises(bz.RunFinished, match="aborted"):
        await client.result("doomed")
    with pytest.raises(bz.RunFinished):
        await client.pause("doomed")
    with pytest.raises(bz.CheckpointStoreError, match="no run 'nobody'"):
        await client.pause("nobody")

    slow = {"dsn": dsn, "size": 4, "delay": 0.3}
    with trio.fail_after(30):
        async with bz.open_worker(store, [workflow], lease=LEASE, poll_interval=POLL) as worker:
            await client.submit("pgtest", slow, run_id="held")
            await client.submit("pgtest", slow, run_id="stopped")

            async def started(run_id: str) -> bool:
                snapshot = await store.load(run_id)
                return snapshot is not None and snapshot.journal_seq >= 2  # fan committed

            await wait_for(started, "held")
            await wait_for(started, "stopped")
            assert worker.statistics().runs_held >= 2
            await client.pause("held")  # queued for the worker, which pauses and lets go
            await client.abort("stopped")
            with pytest.raises(bz.RunFinished, match="aborted"):
                await client.result("stopped")

            async def paused_and_let_go() -> bool:
                return await status_of(store, "held") is bz.RunStatus.PAUSED

            await wait_for(paused_and_let_go)
            await client.resume("held")
            await answer_all(client, store, ["idle", "held"])
            assert (await client.result("held")).result == expected(4)
            assert (await client.result("idle")).result == expected(2)
    with pytest.raises(bz.UnknownInputRequest):
        await client.respond("held", REQUEST_ID, "again")


def hanging_workflow(entered: trio.Event, executions: list[int]) -> bz.Workflow:
    """`hang`'s first execution never ends (an event no one sets); later ones return."""

    @bz.step
    async def hang(ev: bz.StartEvent) -> bz.StopEvent:
        executions.append(len(executions))
        if len(executions) == 1:
            entered.set()
            await trio.Event().wait()
        return bz.StopEvent(result="done")

    return bz.Workflow("hangs", [hang])


@pytest.fixture
def slow_autojump_clock() -> trio.testing.MockClock:
    """Virtual time that jumps once the test has been idle for 0.1 s of real time. The store
    works in threads, in real time: a clock jumping whenever Trio waits for them (threshold 0)
    would race the worker's timers ahead of the database by minutes. Still, on a loaded
    machine a slow statement lets it jump, so virtual durations here are lower bounds."""
    return trio.testing.MockClock(autojump_threshold=0.1)


async def test_shutdown_cancels_the_steps_still_running_after_the_drain_timeout(
    store: PostgresCheckpointStore, slow_autojump_clock: trio.testing.MockClock
) -> None:
    entered, executions = trio.Event(), list[int]()
    hangs = hanging_workflow(entered, executions)
    client = bz.WorkflowClient(store)
    await client.submit("hangs", run_id="h")
    options: dict[str, Any] = {"lease": 30, "poll_interval": 5}  # few timers to jump through
    worker = bz.Worker(store, [hangs], drain_timeout=40, **options)
    with trio.fail_after(600):  # virtual: a hang fails in seconds of real time
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            await entered.wait()
            asked = trio.current_time()
            await worker.shutdown()
            drained_for = trio.current_time() - asked
        assert drained_for >= 40  # the step had its drain_timeout, then was cancelled
        assert await status_of(store, "h") is bz.RunStatus.RUNNING  # let go, runnable
        paused, requeued = (await journaled_statuses(store, "h"))[-2:]
        assert (paused, requeued) == (bz.RunStatus.PAUSED, bz.RunStatus.RUNNING)
        async with bz.open_worker(store, [hangs], **options):
            assert (await client.result("h", poll_interval=POLL)).result == "done"
    assert executions == [0, 1]  # the cancelled step ran again, elsewhere


async def test_submit_is_idempotent_by_run_id_and_refuses_a_conflicting_one(
    dsn: str, store: PostgresCheckpointStore
) -> None:
    client = bz.WorkflowClient(store)
    first = {"dsn": dsn, "size": 1}
    assert await client.submit("pgtest", first, run_id="r") == "r"
    assert await client.submit("pgtest", dict(reversed(first.items())), run_id="r") == "r"
    assert [info.run_id for info in await store.list()] == ["r"]
    with pytest.raises(bz.CheckpointStoreError, match="'r' is taken by a run of workflow 'pgtest'"):
        await client.submit("other", first, run_id="r")
    with pytest.raises(bz.CheckpointStoreError, match="'r' was submitted with another input"):
        await client.submit("pgtest", {"dsn": dsn, "size": 2}, run_id="r")
    durable = workflow.with_checkpoint_store(store)
    async with durable.start(first, run_id="local") as handler:  # a run started, not submitted
        await handler.pause()
    with pytest.raises(bz.CheckpointStoreError, match="'local' is taken by a run that was not"):
        await client.submit("pgtest", first, run_id="local")
    async with bz.open_worker(store, [workflow], lease=LEASE, poll_interval=POLL):
        await answer_all(client, store, ["r"])
        assert (await client.result("r", poll_interval=POLL)).result == expected(1)
    assert await client.submit("pgtest", first, run_id="r") == "r"  # done: not run again
    assert (await client.result("r", poll_interval=POLL)).result == expected(1)
    assert set(effects(dsn).values()) == {1}
    with trio.fail_after(5), pytest.raises(bz.CheckpointStoreError, match="no run 'nobody'"):
        await client.result("nobody")


async def test_a_submission_and_a_queued_answer_stored_by_the_version_2_release_still_read(
    dsn: str, store: PostgresCheckpointStore
) -> None:
    """Rows as that release wrote them (tests/formats): a submitted run's base, its start
    event a map in the metadata, and an answer queued for the run's holder, a map too."""
    formats = trio.Path(legacy.FORMATS)
    await store.submit(legacy.submitted())
    base = await (formats / "submitted_v2.msgpack").read_bytes()
    sql = "UPDATE blazen_trio_runs SET base = %s WHERE run_id = %s RETURNING run_id"
    assert await row(dsn, sql, base, "submitted-1") == ("submitted-1",)
    client = bz.WorkflowClient(store)
    assert await client.submit("quick", 7, run_id="submitted-1") == "submitted-1"  # the same
    with pytest.raises(bz.CheckpointStoreError, match="submitted with another input"):
        await client.submit("quick", 8, run_id="submitted-1")
    lease = await store.take("submitted-1", "test", LEASE)
    assert lease is not None
    answer = await (formats / "answer_v1.msgpack").read_bytes()
    sql = (
        "INSERT INTO blazen_trio_controls (run_id, op, request_id, answer) "
        "VALUES (%s, 'respond', %s, %s) RETURNING id"
    )
    await row(dsn, sql, "submitted-1", legacy.REQUEST_ID, answer)
    [queued] = await store.controls([lease])
    assert queued.answer == legacy.ANSWER
    await store.release(lease)  # carries the answer out: moot, the run asked nothing
    async with bz.open_worker(store, [quick_workflow()], lease=LEASE, poll_interval=POLL):
        assert (await client.result("submitted-1", poll_interval=POLL)).result == 7


def quick_workflow() -> bz.Workflow:
    @bz.step
    async def answer(ev: bz.StartEvent) -> bz.StopEvent:
        return bz.StopEvent(result=ev.data)

    return bz.Workflow("quick", [answer])


async def test_a_run_waiting_for_input_holds_no_slot_and_any_free_worker_takes_it_up(
    dsn: str, store: PostgresCheckpointStore
) -> None:
    client = bz.WorkflowClient(store)
    entered = trio.Event()
    blocker = hanging_workflow(entered, [])
    workflows = [workflow, quick_workflow(), blocker]
    options: dict[str, Any] = {"concurrency": 1, "lease": LEASE, "poll_interval": POLL}
    with trio.fail_after(60):
        async with bz.open_worker(store, workflows, **options) as first:
            await client.submit("pgtest", {"dsn": dsn, "size": 1}, run_id="asks")
            await wait_for(waiting, store, "asks")
            for n in range(3):  # the one slot is free: the waiting run does not hold it
                await client.submit("quick", n, run_id=f"quick-{n}")
                assert (await client.result(f"quick-{n}", poll_interval=POLL)).result == n
            await client.submit("hangs", run_id="busy")
            await entered.wait()  # `first` is full now
            assert first.statistics().runs_held == 1
            async with bz.open_worker(store, workflows, **options) as second:
                await client.respond("asks", REQUEST_ID, "yes")
                assert (await client.result("asks", poll_interval=POLL)).result == expected(1)
                assert second.statistics().claimed == 1  # the free worker took it up
                await client.abort("busy")


async def test_recovery_leaves_runs_that_workers_hold_alone_and_leases_the_others(
    store: PostgresCheckpointStore, dsn: str
) -> None:
    entered, executions = trio.Event(), list[int]()
    hangs = hanging_workflow(entered, executions)
    client = bz.WorkflowClient(store)
    await client.submit("hangs", run_id="held")
    options: dict[str, Any] = {"concurrency": 1, "lease": LEASE, "poll_interval": POLL}
    with trio.fail_after(60):
        async with bz.open_worker(store, [hangs], drain_timeout=0, **options):
            await entered.wait()  # the worker is full: it claims no more
            held = await lease_holder(dsn, "held")
            await client.submit("hangs", run_id="stale")
            [ghost] = await store.claim("ghost", ["hangs"], 1, lease=0.05)  # then it vanished
            await client.submit("hangs", run_id="free")
            await wait_for(lease_ran_out, dsn, "stale")
            async with hangs.open_recovery(store) as handlers:
                assert set(handlers) == {"stale", "free"}
                for run_id in handlers:
                    owner, _ = await lease_holder(dsn, run_id)
                    assert owner is not None
                    assert owner.startswith("recovery:")  # workers leave these alone
                    assert (await handlers[run_id].result()).result == "done"
            await client.submit("hangs", run_id="later")
            outcomes = await hangs.recover(store)
            assert set(outcomes) == {"held", "later"}
            assert isinstance(outcomes["held"], bz.RunHeld)
            later = outcomes["later"]
            assert isinstance(later, bz.WorkflowResult)
            assert later.result == "done"
            assert await lease_holder(dsn, "held") == held  # untouched
            assert await lease_holder(dsn, "later") == (None, 1)  # let go
    with pytest.raises(bz.CheckpointStoreError, match="was lost"):
        await store.fenced(ghost).append("stale", bz.JournalRecord(seq=99, at=0.0))


async def lease_ran_out(dsn: str, run_id: str) -> bool:
    sql = "SELECT lease_until < clock_timestamp() FROM blazen_trio_runs WHERE run_id = %s"
    return bool((await row(dsn, sql, run_id))[0])


async def test_a_recovery_renews_its_leases_while_its_runs_go_on(
    store: PostgresCheckpointStore, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bz_workflow, "DEFAULT_LEASE", 0.3)  # renewed every 0.1 s
    entered, go_on = trio.Event(), trio.Event()

    @bz.step
    async def waits(ev: bz.StartEvent) -> bz.StopEvent:
        entered.set()
        await go_on.wait()
        return bz.StopEvent(result="done")

    waiting_workflow = bz.Workflow("waits", [waits])
    await bz.WorkflowClient(store).submit("waits", run_id="r")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiting_workflow.recover, store)
            await entered.wait()
            owner, epoch = await lease_holder(dsn, "r")
            (first_until,) = await row(
                dsn, "SELECT lease_until FROM blazen_trio_runs WHERE run_id = %s", "r"
            )
            await wait_for(server_time_past, dsn, first_until + datetime.timedelta(seconds=0.3))
            assert await store.claim("thief", ["waits"], 1, lease=30) == []  # still held
            assert await lease_holder(dsn, "r") == (owner, epoch)
            go_on.set()
    assert await status_of(store, "r") is bz.RunStatus.COMPLETED
    assert await lease_holder(dsn, "r") == (None, epoch)


async def server_time_past(dsn: str, moment: datetime.datetime) -> bool:
    return bool((await row(dsn, "SELECT clock_timestamp() > %s", moment))[0])


async def test_a_control_for_a_held_run_is_announced_to_control_loops(
    dsn: str, store: PostgresCheckpointStore
) -> None:
    """Controls have news of their own: a worker's control loop wakes on it, not on the news
    of every submit and release (which only its claims need)."""
    client = bz.WorkflowClient(store)
    await client.submit("pgtest", {"dsn": dsn}, run_id="held")
    [lease] = await store.claim("me", ["pgtest"], 1, lease=30)
    assert lease.run_id == "held"
    with trio.fail_after(10):
        await store.wait_for_controls()  # the listener connected (news as such: anything goes)
        async with trio.open_nursery() as nursery:
            announced = trio.Event()

            async def wait_for_controls() -> None:
                await store.wait_for_controls()
                announced.set()

            nursery.start_soon(wait_for_controls)
            await trio.testing.wait_all_tasks_blocked()
            await client.pause("held")  # queued for its holder
            await announced.wait()
    [control] = await store.controls([lease])
    assert (control.run_id, control.op) == ("held", "pause")
