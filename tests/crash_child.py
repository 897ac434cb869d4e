"""Run `_crash_workflow` durably on a SQLite file until killed; print each commit.

Usage: python crash_child.py DB EFFECTS RUNS COMPACT_EVERY [MODULE]

MODULE (default `_crash_workflow`) provides `run_to_the_end(store, run_id, effects, on_commit)`.

Runs RUNS runs (ids run-0, run-1, ...) at once; after each commit, prints
`RUN_ID STEP DELIVERY` and flushes, so the killing test knows what was committed. Run by
tests/test_crash.py with the tests directory on PYTHONPATH.
"""

from __future__ import annotations

import importlib
import sys

import trio

import blazen_trio as bz


def report(commit: bz.StepCommit) -> None:
    print(commit.run_id, commit.step, commit.delivery, flush=True)


async def main(db: str, effects: str, runs: int, compact_every: int, module: str) -> None:
    run_to_the_end = importlib.import_module(module).run_to_the_end
    store = bz.SqliteCheckpointStore(db, compact_every=compact_every)
    async with store, trio.open_nursery() as nursery:
        for index in range(runs):
            nursery.start_soon(run_to_the_end, store, f"run-{index}", effects, report)
    print("done", flush=True)


if __name__ == "__main__":
    module = sys.argv[5] if len(sys.argv) > 5 else "_crash_workflow"
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), module)
