"""Workers and clients on a real PostgreSQL server (tests/_postgres.py), in this process.

Workers claim submitted runs, drive them under fenced leases, let go of runs waiting for input
and take them up again once a client answers; a lease that runs out is reclaimed by another
worker, and the old holder's writes are refused (fencing).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
import trio
from _pg_workflow import EFFECTS_TABLE, REQUEST_ID, close_pools, expected, expected_keys, workflow

import blazen_trio as bz
from blazen_trio.postgres import PostgresCheckpointStore

LEASE, POLL = 1.0, 0.2


@pytest.fixture
def dsn(postgres_dsn: str) -> Iterator[str]:
    """A schema of the test's own, with the effects table the workflow's steps write."""
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute(EFFECTS_TABLE)
    try:
        yield postgres_dsn
    finally:
        close_pools()


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[PostgresCheckpointStore]:
    async with PostgresCheckpointStore(dsn) as store:
        yield store


def effects(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as connection:
        return dict(connection.execute("SELECT key, executions FROM effects").fetchall())


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
            assert await client.submit("pgtest", {"dsn": "ignored"}, run_id="run-0") == "run-0"
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
