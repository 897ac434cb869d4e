"""The PostgreSQL store on a real server (tests/_postgres.py): its schema made, migrated and
guarded by the store itself, and a server that is not there or goes away mid-run.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import trio
from _postgres import Cluster

import blazen_trio as bz
from benchmarks._pgserver import free_port
from blazen_trio._postgres import SCHEMA_VERSION
from blazen_trio.postgres import PostgresCheckpointStore

TABLES = {"blazen_trio_runs", "blazen_trio_records", "blazen_trio_controls", "blazen_trio_schema"}


def layout(dsn: str) -> dict[str, list[str]]:
    """The columns of each table in the DSN's schema, and the schema version rows."""
    with psycopg.connect(dsn) as connection:
        rows = connection.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        ).fetchall()
        found: dict[str, list[str]] = {}
        for table, column in rows:
            found.setdefault(table, []).append(column)
        if "blazen_trio_schema" in found:
            versions = connection.execute("SELECT version FROM blazen_trio_schema").fetchall()
            found["versions"] = [str(version) for (version,) in versions]
        return found


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement)


def snapshot(run_id: str = "r") -> bz.WorkflowSnapshot:
    return bz.WorkflowSnapshot.from_json(
        b'{"workflow_name": "w", "run_id": "%s", "created_at": "2026-01-01T00:00:00Z", '
        b'"status": "running", "state": {}, "pending_events": [], "collect_buffers": {}, '
        b'"input_requests": [], "usage": {}, "history": [], "metadata": {}, '
        b'"session_refs": {}}' % run_id.encode()
    )


async def test_a_fresh_database_gets_the_tables_and_the_version(postgres_dsn: str) -> None:
    assert layout(postgres_dsn) == {}
    async with PostgresCheckpointStore(postgres_dsn) as store:
        assert await store.list() == []
    found = layout(postgres_dsn)
    assert set(found) == {*TABLES, "versions"}
    assert found["versions"] == [str(SCHEMA_VERSION)]
    async with PostgresCheckpointStore(postgres_dsn) as store:  # opening again changes nothing
        await store.save(snapshot())
    assert layout(postgres_dsn) == found


async def test_an_older_schema_is_migrated_on_open_keeping_its_runs(postgres_dsn: str) -> None:
    async with PostgresCheckpointStore(postgres_dsn) as store:
        await store.save(snapshot())
    current = layout(postgres_dsn)
    # Version 1: the journal only; what version 2 added (the run queue) is taken away.
    execute(
        postgres_dsn,
        "DROP TABLE blazen_trio_controls",
        "DROP INDEX blazen_trio_runnable",
        "ALTER TABLE blazen_trio_runs DROP COLUMN managed, DROP COLUMN runnable, "
        "DROP COLUMN lease_owner, DROP COLUMN lease_epoch, DROP COLUMN lease_until",
        "UPDATE blazen_trio_schema SET version = 1",
    )
    assert "blazen_trio_controls" not in layout(postgres_dsn)
    async with PostgresCheckpointStore(postgres_dsn) as store:
        stored = await store.load("r")
        assert stored is not None
        assert stored.run_id == "r"
        client = bz.WorkflowClient(store)  # the queue works on the migrated tables
        await client.submit("w", 1, run_id="new")
        [lease] = await store.claim("me", ["w"], 10, lease=30)
        assert lease.run_id == "new"
    assert layout(postgres_dsn) == current


async def test_a_newer_schema_is_refused_and_left_as_it_was(postgres_dsn: str) -> None:
    async with PostgresCheckpointStore(postgres_dsn) as store:
        await store.save(snapshot())
    newer = SCHEMA_VERSION + 1
    execute(postgres_dsn, f"UPDATE blazen_trio_schema SET version = {newer}")
    before = layout(postgres_dsn)
    store = PostgresCheckpointStore(postgres_dsn)
    with pytest.raises(
        bz.CheckpointStoreError,
        match=f"schema version {newer} is newer than this blazen_trio \\({SCHEMA_VERSION}\\)",
    ):
        await store.load("r")
    await store.aclose()
    assert layout(postgres_dsn) == before


async def test_tables_not_made_by_blazen_trio_are_refused(postgres_dsn: str) -> None:
    execute(postgres_dsn, "CREATE TABLE blazen_trio_runs (id integer)")
    before = layout(postgres_dsn)
    with pytest.raises(bz.CheckpointStoreError, match="not a store this blazen_trio made"):
        async with PostgresCheckpointStore(postgres_dsn):
            pass  # pragma: no cover  # refused at open
    assert layout(postgres_dsn) == before


async def test_a_server_that_is_not_there_fails_after_the_bounded_retries() -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=postgres dbname=nowhere connect_timeout=1"
    store = PostgresCheckpointStore(dsn, retry_for=0.3, connect_timeout=0.5)
    started = trio.current_time()
    with trio.fail_after(10), pytest.raises(bz.CheckpointStoreError) as caught:
        async with store:
            pass  # pragma: no cover  # refused at open
    assert "did not answer for 0.3s" in str(caught.value)
    assert "postgresql://127.0.0.1:" in str(caught.value)
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)
    assert trio.current_time() - started < 5  # the retries are bounded, not the default 10 s
    with pytest.raises(bz.CheckpointStoreError, match="is closed"):
        await store.list()


# -- the server going away mid-run ---------------------------------------------------------


class Blocked(bz.Event):
    n: int


def stopping_workflow(entered: trio.Event, go_on: trio.Event, counts: dict[str, int]) -> Any:
    """`first` commits at once; `second` waits for `go_on`, so the test can stop the server
    while it runs and then let it try to commit."""

    @bz.step
    async def first(ev: bz.StartEvent) -> Blocked:
        counts["first"] = counts.get("first", 0) + 1
        return Blocked(n=ev.data)

    @bz.step
    async def second(ev: Blocked) -> bz.StopEvent:
        counts["second"] = counts.get("second", 0) + 1
        entered.set()
        await go_on.wait()
        return bz.StopEvent(result=ev.n * 2)

    return bz.Workflow("stops", [first, second])


async def test_a_server_stopped_mid_run_fails_the_run_and_recovery_goes_on_from_its_last_commit(
    postgres_dsn: str, postgres_cluster: Cluster
) -> None:
    if postgres_cluster.pg_ctl is None:
        pytest.skip("the server is BLAZEN_TRIO_TEST_DSN's: this session cannot stop it")
    entered, go_on = trio.Event(), trio.Event()
    counts: dict[str, int] = {}
    workflow = stopping_workflow(entered, go_on, counts)
    with trio.fail_after(60):
        async with PostgresCheckpointStore(postgres_dsn, retry_for=0.5) as store:
            durable = workflow.with_checkpoint_store(store)
            try:
                async with durable.start(21, run_id="r") as handler:
                    await entered.wait()  # `first` committed; `second` runs
                    committed = [info.seq for info in await store.history("r")]
                    await trio.to_thread.run_sync(postgres_cluster.take_down)
                    go_on.set()  # its commit finds no server
                    with pytest.raises(bz.CheckpointStoreError, match="did not answer") as caught:
                        await handler.result()
            finally:
                await trio.to_thread.run_sync(postgres_cluster.bring_up)
            assert not isinstance(caught.value, BaseExceptionGroup)
            assert isinstance(caught.value.__cause__, psycopg.OperationalError)
            assert [info.seq for info in await store.history("r")] == committed
            assert (await store.list())[0].status is bz.RunStatus.RUNNING  # not ended
            outcomes = await durable.recover()
    outcome = outcomes["r"]
    assert isinstance(outcome, bz.WorkflowResult)
    assert outcome.result == 42
    assert counts == {"first": 1, "second": 2}  # only the uncommitted step ran again
