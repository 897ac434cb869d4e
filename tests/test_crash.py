"""Durable runs killed with SIGKILL in a real child process, then recovered here.

The child (tests/crash_child.py) runs `_crash_workflow` on a SQLite file and prints each
commit; the test kills it after a hypothesis-chosen number of commits (at the boundary, or a
moment later, mid-step), recovers the run in this process and checks: the uninterrupted
result and final state; no delivery committed twice; only executions in flight at the kill
ran again.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import uuid
from collections import Counter

import _crash_family as crash_family
import trio
from _crash_workflow import EXPECTED, STEP_SECONDS, run_to_the_end
from hypothesis import HealthCheck, given, settings, strategies as st

import blazen_trio as bz

TESTS = pathlib.Path(__file__).parent
CHILD = TESTS / "crash_child.py"
COMMITS_PER_RUN = 12  # fan, 4 x work, 4 x join, finish, plus the retry and the answer

Commit = tuple[str, str, int]  # run id, step, delivery


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}


async def kill_after(
    db: pathlib.Path,
    effects: pathlib.Path,
    commits: int,
    mid_step: bool,
    runs: int,
    compact: int,
    module: str = "_crash_workflow",
) -> list[Commit]:
    """Run the child until it printed `commits` commits (then, mid-step, a little longer),
    SIGKILL it, and return every commit it printed."""
    process = await trio.lowlevel.open_process(
        [sys.executable, str(CHILD), str(db), str(effects), str(runs), str(compact), module],
        stdout=subprocess.PIPE,
        env=child_env(),
    )
    assert process.stdout is not None
    output = b""
    with trio.fail_after(60):
        while output.count(b"\n") < commits and b"done" not in output:
            chunk = await process.stdout.receive_some()
            if not chunk:
                break
            output += chunk
        if mid_step:
            await trio.sleep(STEP_SECONDS / 2)  # a real wait: the child runs in real time
        if process.returncode is None:
            os.kill(process.pid, signal.SIGKILL)
        await process.wait()
        while chunk := await process.stdout.receive_some():
            output += chunk
    await process.stdout.aclose()
    lines = [line.split() for line in output.decode().split("\n")[:-1]]  # a cut line: no commit
    printed = (fields for fields in lines if len(fields) == 3)  # not "done", nor a cut line
    return [(run_id, step, int(seq)) for run_id, step, seq in printed]


def effects_of(path: pathlib.Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


async def recover(
    db: pathlib.Path, effects: pathlib.Path, runs: int
) -> tuple[dict[str, bz.WorkflowResult], list[Commit]]:
    """Go on with every run in this process (attaching by run id), recording its commits."""
    committed: list[Commit] = []

    def record(commit: bz.StepCommit) -> None:
        committed.append((commit.run_id, commit.step, commit.delivery))

    results: dict[str, bz.WorkflowResult] = {}
    async with bz.SqliteCheckpointStore(db) as store:

        async def one(run_id: str) -> None:
            results[run_id] = await run_to_the_end(store, run_id, str(effects), record)

        async with trio.open_nursery() as nursery:
            for index in range(runs):
                nursery.start_soon(one, f"run-{index}")
        infos = await store.list(workflow="crash")
    assert {info.status for info in infos} == {bz.RunStatus.COMPLETED}
    return results, committed


def check_exactly_once(before: list[Commit], after: list[Commit], effects: Counter[str]) -> None:
    assert not set(before) & set(after), "a delivery committed before the kill committed again"
    assert len(set(after)) == len(after)
    committed_keys = {f"{run}/{step}/{seq}" for run, step, seq in before}
    for key, count in effects.items():
        # `finish` fails its first attempt on purpose: two executions, one commit.
        expected = 2 if "/finish/" in key else 1
        if count > expected:
            assert key not in committed_keys, f"{key} ran again although it had committed"


KILLS = settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@KILLS
@given(
    commits=st.integers(min_value=0, max_value=COMMITS_PER_RUN),
    mid_step=st.booleans(),
    compact=st.sampled_from([1, 3, 256]),
)
async def test_a_run_killed_anywhere_recovers_exactly_once(
    tmp_path: pathlib.Path, commits: int, mid_step: bool, compact: int
) -> None:
    """compact=1 compacts on every commit: kills land during compaction too."""
    name = uuid.uuid4().hex
    db, effects = tmp_path / f"{name}.db", tmp_path / f"{name}.effects"
    before = await kill_after(db, effects, commits, mid_step, runs=1, compact=compact)
    results, after = await recover(db, effects, runs=1)
    assert results["run-0"].result == EXPECTED
    check_exactly_once(before, after, effects_of(effects))


async def test_a_hundred_runs_killed_together_all_recover(tmp_path: pathlib.Path) -> None:
    db, effects = tmp_path / "shared.db", tmp_path / "shared.effects"
    before = await kill_after(db, effects, commits=300, mid_step=True, runs=100, compact=256)
    assert 300 <= len(before) < 100 * COMMITS_PER_RUN  # killed mid-way through
    results, after = await recover(db, effects, runs=100)
    assert len(results) == 100
    assert all(result.result == EXPECTED for result in results.values())
    check_exactly_once(before, after, effects_of(effects))


@KILLS
@given(commits=st.integers(min_value=0, max_value=14), mid_step=st.booleans())
async def test_a_parent_killed_mid_child_never_reruns_a_finished_child(
    tmp_path: pathlib.Path, commits: int, mid_step: bool
) -> None:
    name = uuid.uuid4().hex
    db, effects = tmp_path / f"{name}.db", tmp_path / f"{name}.effects"
    before = await kill_after(db, effects, commits, mid_step, 1, 256, "_crash_family")
    async with bz.SqliteCheckpointStore(db) as store:
        committed: list[Commit] = []

        def record(commit: bz.StepCommit) -> None:
            committed.append((commit.run_id, commit.step, commit.delivery))

        result = await crash_family.run_to_the_end(store, "run-0", str(effects), record)
    assert result.result == crash_family.EXPECTED
    seen = effects_of(effects)
    assert not set(before) & set(committed)  # no child's or parent's commit made twice
    for run_id, step, seq in before:
        assert seen[f"{run_id}/{step}/{seq}"] == 1  # committed before the kill: ran once
    runs = {key.rsplit("/", 2)[0] for key in seen}  # a key is run id / step / delivery
    assert len(runs) == 1 + 4  # the parent and its four children, none started twice
