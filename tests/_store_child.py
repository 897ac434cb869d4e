"""A second process on a SQLite checkpoint store, for tests/test_sqlite_store.py.

Usage: python _store_child.py DB append RUN LAST COMPACT_EVERY
       python _store_child.py DB stale RUN SEQ

`append` creates RUN if needed, then appends `record(seq)` up to LAST, printing each seq on
its own line once `append` returned (so the parent knows it was acknowledged). `stale` appends
one record of SEQ and prints `appended` or `refused: <message>`. The tests directory must be on
PYTHONPATH; the tests import `start` and `record` from here to know what was written.
"""

from __future__ import annotations

import datetime as dt
import sys

import trio

import blazen_trio as bz

PADDING = "x" * 2000
"""Makes each record's state write, and so every compaction, cost some real work."""


def start(run_id: str) -> bz.WorkflowSnapshot:
    """The base every test run starts from."""
    return bz.WorkflowSnapshot(
        workflow_name="child",
        run_id=run_id,
        created_at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        status=bz.RunStatus.RUNNING,
        state={},
        pending_events=[],
        collect_buffers={},
        input_requests=[],
        usage=bz.UsageTotals(),
        history=[],
        metadata={},
        session_refs={},
    )


def record(seq: int) -> bz.JournalRecord:
    """The record `seq` of every test run: deterministic, so a reader knows what it holds."""
    return bz.JournalRecord(
        seq=seq, at=float(seq), step="work", state_set={f"k{seq}": PADDING, "last": seq}
    )


async def append(path: str, run_id: str, last: int, compact_every: int) -> None:
    stdout = trio.lowlevel.FdStream(1)
    async with bz.SqliteCheckpointStore(path, compact_every=compact_every) as store:
        snapshot = await store.load(run_id)
        if snapshot is None:
            await store.save(start(run_id))
        for seq in range((snapshot.journal_seq if snapshot else 0) + 1, last + 1):
            await store.append(run_id, record(seq))
            await stdout.send_all(b"%d\n" % seq)


async def stale(path: str, run_id: str, seq: int) -> None:
    async with bz.SqliteCheckpointStore(path) as store:
        try:
            await store.append(run_id, record(seq))
        except bz.CheckpointStoreError as exc:
            print(f"refused: {exc}")
        else:
            print("appended")


if __name__ == "__main__":
    path, mode, run_id, *numbers = sys.argv[1:]
    if mode == "append":
        trio.run(append, path, run_id, int(numbers[0]), int(numbers[1]))
    else:
        trio.run(stale, path, run_id, int(numbers[0]))
