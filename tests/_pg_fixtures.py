"""Fixtures and helpers shared by the worker tests (a pytest plugin: see conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
import trio
from _pg_workflow import EFFECTS_TABLE, close_pools

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
    """How many times each step execution (by idempotency key) had its effect."""
    with psycopg.connect(dsn) as connection:
        return dict(connection.execute("SELECT key, executions FROM effects").fetchall())


async def row(dsn: str, sql: str, *params: Any) -> Any:
    """The first row of a query, read in a connection of its own (in a thread)."""

    def read() -> Any:
        with psycopg.connect(dsn) as connection:
            return connection.execute(sql, params).fetchone()

    return await trio.to_thread.run_sync(read)


async def lease_holder(dsn: str, run_id: str) -> tuple[str | None, int]:
    """Who holds the run's lease (None: no one) and at which epoch."""
    found = await row(
        dsn, "SELECT lease_owner, lease_epoch FROM blazen_trio_runs WHERE run_id = %s", run_id
    )
    assert found is not None
    return found[0], found[1]


async def journaled_statuses(store: PostgresCheckpointStore, run_id: str) -> list[bz.RunStatus]:
    """The run's status after each of its records."""
    statuses = []
    for info in await store.history(run_id):
        snapshot = await store.load(run_id, at=info.seq)
        assert snapshot is not None
        statuses.append(snapshot.status)
    return statuses
