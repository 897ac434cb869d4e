"""A journal write checks its lease in the statement that locks the run (one round trip), and a
sub-workflow's write checks its root run's lease: both refused once the lease is lost."""

from __future__ import annotations

import msgspec
import pytest
import trio

import blazen_trio as bz
from blazen_trio.postgres import PostgresCheckpointStore


async def test_appends_to_the_run_and_to_its_sub_workflows_are_fenced(
    dsn: str, store: PostgresCheckpointStore
) -> None:
    await bz.WorkflowClient(store).submit("pgtest", {"dsn": dsn}, run_id="r")
    [old] = await store.claim("old", ["pgtest"], 1, lease=0.05)
    fenced = store.fenced(old)
    await fenced.append("r", bz.JournalRecord(seq=1, at=0.0, step="a"))
    snapshot = await store.load("r")
    assert snapshot is not None
    child = msgspec.structs.replace(snapshot, run_id="r/step/1.1/0")
    await fenced.save(child)  # while the lease holds
    await fenced.append(child.run_id, bz.JournalRecord(seq=2, at=0.0, step="c"))
    await trio.sleep(0.1)
    [new] = await store.claim("new", ["pgtest"], 1, lease=30)
    for run_id, seq in (("r", 2), (child.run_id, 3)):
        with pytest.raises(bz.CheckpointStoreError, match="'old' at epoch 1 was lost"):
            await fenced.append(run_id, bz.JournalRecord(seq=seq, at=0.0))
    await store.fenced(new).append(child.run_id, bz.JournalRecord(seq=3, at=0.0, step="d"))
    assert [info.seq for info in await store.history(child.run_id)] == [2, 3]
