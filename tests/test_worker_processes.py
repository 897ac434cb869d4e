"""Worker processes (`blazen-trio worker`) on a real PostgreSQL server, killed, stopped and
cut off: SIGKILL chaos, a zombie woken after its lease was taken over, SIGTERM, and the
server restarted under running workers. Every run completes once with the result of an
uninterrupted run, and each committed step's effect is counted once under its idempotency key.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import IO, Any

import pytest
import trio
from _pg_fixtures import LEASE, POLL, effects, journaled_statuses, lease_holder
from _pg_workflow import REQUEST_ID, expected, expected_keys, workflow
from _postgres import Cluster

import blazen_trio as bz
from blazen_trio.postgres import PostgresCheckpointStore

TESTS = pathlib.Path(__file__).parent
FINISHED = {bz.RunStatus.COMPLETED, bz.RunStatus.FAILED, bz.RunStatus.ABORTED}


LOG = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / "blazen-trio-test-workers.log"


@pytest.fixture
async def processes(dsn: str) -> AsyncIterator[WorkerProcesses]:
    """Starts worker processes for the test and kills those still running at its end, passed
    or failed. Requested by each test that starts one: pytest-trio runs only the async fixtures
    a test requests (directly or through its fixtures), so an `autouse` one never ran, and
    workers of failed tests outlived them. If the test process itself is killed, they die with
    it (tests/_worker_child.py)."""
    started = WorkerProcesses(dsn)
    yield started
    await started.kill_all()


async def close_pipes(process: trio.Process) -> None:
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            await pipe.aclose()


class WorkerProcesses:
    """The `blazen-trio worker` processes one test started, on its database."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.started: list[trio.Process] = []

    async def start(
        self, *options: str, concurrency: int = 10, lease: float = LEASE
    ) -> WorkerProcess:
        """A worker, once it says it serves; its stderr goes to LOG."""
        with LOG.open("ab") as log:  # what to read when a test fails
            process = await self.spawn(
                "--concurrency", str(concurrency), "--lease", str(lease), *options, stderr=log
            )
        assert process.stdout is not None
        with trio.fail_after(30):
            line = b""
            while b"\n" not in line:
                chunk = await process.stdout.receive_some()
                assert chunk, "the worker exited before serving"
                line += chunk
        assert json.loads(line.split(b"\n")[0])["serving"] == ["pgtest"]
        return WorkerProcess(process)

    async def spawn(self, *options: str, stderr: int | IO[bytes]) -> trio.Process:
        """The worker process, tracked for the teardown, with its stdin and stdout pipes."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
        process = await trio.lowlevel.open_process(
            [sys.executable, str(TESTS / "_worker_child.py"), "worker", "--dsn", self.dsn,
             "_pg_workflow:workflow", "--poll-interval", str(POLL), *options],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env,
            cwd=str(TESTS),
        )  # fmt: skip
        self.started.append(process)
        return process

    async def kill_all(self) -> None:
        for process in self.started:
            if process.returncode is None:
                process.kill()
            await process.wait()
            await close_pipes(process)


class WorkerProcess:
    """`blazen-trio worker` in a child process, signalled and waited for with Trio."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process

    def signal(self, signum: int) -> None:
        if self.process.returncode is None:
            os.kill(self.process.pid, signum)

    async def wait(self) -> int:
        with trio.fail_after(30):
            code = await self.process.wait()
        await close_pipes(self.process)
        return code


async def submit(store: PostgresCheckpointStore, dsn: str, count: int, **input: Any) -> list[str]:
    client = bz.WorkflowClient(store)
    return [
        await client.submit("pgtest", {"dsn": dsn, **input}, run_id=f"run-{n}")
        for n in range(count)
    ]


async def answer_and_wait(store: PostgresCheckpointStore, run_ids: list[str]) -> None:
    """Answer each run once it waits for input; return once every run has completed."""
    client = bz.WorkflowClient(store)
    answered: set[str] = set()
    while True:
        infos = {info.run_id: info.status for info in await store.list()}
        for run_id in run_ids:
            if infos[run_id] is bz.RunStatus.WAITING_FOR_INPUT and run_id not in answered:
                await client.respond(run_id, REQUEST_ID, "yes")
                answered.add(run_id)
        if all(infos[run_id] in FINISHED for run_id in run_ids):
            return
        await trio.sleep(0.05)


async def check_every_run(
    store: PostgresCheckpointStore, dsn: str, run_ids: list[str], size: int
) -> dict[str, int]:
    """Each run completed once with the uninterrupted result; its journal has no gap or fork;
    each committed step has exactly one effect key. Returns the effects table."""
    client = bz.WorkflowClient(store)
    for run_id in run_ids:
        assert (await client.result(run_id)).result == expected(size), run_id
        seqs = [info.seq for info in await store.history(run_id)]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True
    counted = effects(dsn)
    for run_id in run_ids:
        keys = [key for key in counted if key.startswith(f"{run_id}/")]
        assert len(keys) == expected_keys(size), (run_id, sorted(keys))
    return counted


async def wait_for(predicate: Any, *args: Any) -> None:
    """Poll `await predicate(*args)` until it is true: what it waits for is a row written by
    another process, which no Trio event of this one can announce."""
    while not await predicate(*args):  # noqa: ASYNC110  # see the docstring
        await trio.sleep(0.02)


async def started(store: PostgresCheckpointStore, run_id: str) -> bool:
    snapshot = await store.load(run_id)
    return snapshot is not None and snapshot.journal_seq >= 2  # its fan-out committed


async def held_by(dsn: str, run_id: str, owner: str) -> bool:
    return (await lease_holder(dsn, run_id))[0] == owner


async def waiting(store: PostgresCheckpointStore, count: int) -> bool:
    return len(await store.list(status=bz.RunStatus.WAITING_FOR_INPUT)) >= count


async def test_a_zombie_worker_cannot_commit_after_its_lease_was_taken_over(
    dsn: str, store: PostgresCheckpointStore, processes: WorkerProcesses
) -> None:
    """SIGSTOP a worker past its lease; another reclaims the run; SIGCONT: the zombie's
    commits are refused and the run's journal is not forked."""
    [run_id] = await submit(store, dsn, 1, size=4, delay=0.4)
    zombie = await processes.start()
    with trio.fail_after(60):
        await wait_for(started, store, run_id)
        zombie.signal(signal.SIGSTOP)  # mid-step: two `work` invocations are sleeping
        stopped_at = await store.load(run_id)
        assert stopped_at is not None
        owner, epoch = await lease_holder(dsn, run_id)
        async with bz.open_worker(store, [workflow], lease=LEASE, poll_interval=POLL) as rescuer:
            await wait_for(held_by, dsn, run_id, rescuer.name)
            assert (await lease_holder(dsn, run_id))[1] == epoch + 1
            zombie.signal(signal.SIGCONT)  # its steps finish: their commits must be refused
            await answer_and_wait(store, [run_id])
            zombie.signal(signal.SIGTERM)
            assert await zombie.wait() == 0
    final = await store.load(run_id)
    assert final is not None
    assert final.status is bz.RunStatus.COMPLETED
    assert owner is not None
    assert owner != rescuer.name
    await check_every_run(store, dsn, [run_id], size=4)
    history = await store.history(run_id)
    assert [info.seq for info in history] == list(range(1, final.journal_seq + 1))


@pytest.mark.parametrize("runs", [200])
async def test_chaos_sigkilled_workers_complete_every_run_once(
    dsn: str, store: PostgresCheckpointStore, processes: WorkerProcesses, runs: int
) -> None:
    """3 worker processes, one SIGKILLed at random every few hundred ms and restarted."""
    run_ids = await submit(store, dsn, runs, size=3, delay=0.5)  # runs long enough to be hit
    workers = [await processes.start(concurrency=5) for _ in range(3)]
    kills = 0
    chaos = random.Random(1)
    started = time.monotonic()

    async def kill_and_restart() -> None:
        nonlocal kills
        while True:
            await trio.sleep(chaos.uniform(0.2, 0.5))
            index = chaos.randrange(len(workers))
            workers[index].signal(signal.SIGKILL)
            await workers[index].wait()
            kills += 1
            with trio.CancelScope(shield=True):  # a process spawned is always tracked
                workers[index] = await processes.start(concurrency=5)

    with trio.fail_after(300):  # about 25 s here; a slow CI machine gets room, not a flake
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_and_restart)
            await answer_and_wait(store, run_ids)
            nursery.cancel_scope.cancel()
    elapsed = time.monotonic() - started
    for worker in workers:
        if worker.process.returncode is None:  # not the one killed as the chaos was cancelled
            worker.signal(signal.SIGTERM)
            assert await worker.wait() == 0
    counted = await check_every_run(store, dsn, run_ids, size=3)
    assert len(counted) == runs * expected_keys(3)
    reruns = sum(executions - 1 for executions in counted.values())
    print(f"chaos: {runs} runs in {elapsed:.1f}s, {kills} kills, {reruns} re-executed steps")
    assert kills >= 5


async def test_sigterm_pauses_at_the_next_commit_and_lets_go(
    dsn: str, store: PostgresCheckpointStore, processes: WorkerProcesses
) -> None:
    run_ids = await submit(store, dsn, 3, size=4, delay=0.3)
    worker = await processes.start()
    with trio.fail_after(60):
        for run_id in run_ids:
            await wait_for(started, store, run_id)
        worker.signal(signal.SIGTERM)
        assert await worker.wait() == 0  # after the running steps committed
        for run_id in run_ids:
            assert await lease_holder(dsn, run_id) == (None, 1)  # let go, never taken over
            assert (await store.list(status=bz.RunStatus.RUNNING)) != []
        keys_before = effects(dsn)
        async with bz.open_worker(store, [workflow], lease=LEASE, poll_interval=POLL):
            await answer_and_wait(store, run_ids)
    counted = await check_every_run(store, dsn, run_ids, size=4)
    assert all(counted[key] == 1 for key in keys_before)  # nothing committed ran again


async def test_sigterm_cancels_the_steps_still_running_after_the_drain_timeout(
    dsn: str, store: PostgresCheckpointStore, processes: WorkerProcesses
) -> None:
    [run_id] = await submit(store, dsn, 1, size=2, delay=3600)  # its `work` steps sleep on
    worker = await processes.start("--drain-timeout", "0.2")
    with trio.fail_after(30):
        await wait_for(started, store, run_id)
        worker.signal(signal.SIGTERM)
        assert await worker.wait() == 0  # 0.2 s after, not an hour
    assert await lease_holder(dsn, run_id) == (None, 1)  # let go
    paused, requeued = (await journaled_statuses(store, run_id))[-2:]
    assert (paused, requeued) == (bz.RunStatus.PAUSED, bz.RunStatus.RUNNING)  # runnable
    assert list(effects(dsn)) == [f"{run_id}/fan/1"]  # the cancelled steps committed nothing


async def test_workers_ride_through_a_server_restart(
    dsn: str, store: PostgresCheckpointStore, postgres_cluster: Cluster, processes: WorkerProcesses
) -> None:
    if postgres_cluster.pg_ctl is None:
        pytest.skip("the server is BLAZEN_TRIO_TEST_DSN's: this session cannot restart it")
    run_ids = await submit(store, dsn, 20, size=4, delay=0.1)
    workers = [await processes.start() for _ in range(2)]
    with trio.fail_after(90):
        await wait_for(waiting, store, 3)
        await trio.to_thread.run_sync(postgres_cluster.restart)
        await answer_and_wait(store, run_ids)
        for worker in workers:
            worker.signal(signal.SIGTERM)
            assert await worker.wait() == 0
    await check_every_run(store, dsn, run_ids, size=4)


async def test_a_worker_dies_with_the_test_process_that_started_it(
    processes: WorkerProcesses,
) -> None:
    """What tests/_worker_child.py promises: the pipe from the test process closes (as the
    kernel closes it when that process dies), and the worker goes at once."""
    worker = await processes.start()
    assert worker.process.stdin is not None
    await worker.process.stdin.aclose()
    assert await worker.wait() == -signal.SIGKILL


async def test_a_worker_whose_stdout_was_closed_exits_141_without_a_traceback(
    processes: WorkerProcesses,
) -> None:
    """The reader of its stdout went away before it said it was serving (its printing task
    gets BrokenPipeError inside the serving nursery): the exit status of `| head`, quietly."""
    process = await processes.spawn(stderr=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stderr is not None
    await process.stdout.aclose()
    with trio.fail_after(30):
        assert await process.wait() == 141
    errors = b""
    while chunk := await process.stderr.receive_some():
        errors += chunk
    await process.stderr.aclose()
    assert b"Traceback" not in errors
