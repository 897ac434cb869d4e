"""The scale-out scenario on blazen_trio: N worker processes on one PostgreSQL database.

The job names the server (`dsn`); the job gets a fresh database of its own. Its workers are
`python -m benchmarks._scaleout DSN CONCURRENCY INDEX`, each a `bz.open_worker` over a
`PostgresCheckpointStore` (what `blazen-trio worker` runs), serving the 3-step workflow below
until its stdin closes. This process is the client: a `bz.WorkflowClient` on its own store.
"""

import atexit
import sys
from collections.abc import Callable, Sequence

import trio

import blazen_trio as bz
from benchmarks._common import count, in_fresh_loop, run_trio
from benchmarks._fleet import SUBMITTERS, Fleet, scaleout_round, serve_until_stdin_closes
from benchmarks._measure import Job, Metrics
from benchmarks._pgserver import fresh_database
from blazen_trio.postgres import PostgresCheckpointStore


class Second(bz.Event):
    n: int


class Third(bz.Event):
    n: int


@bz.step
async def first(ctx: bz.Context, ev: bz.StartEvent) -> Second:
    return Second(n=ev.data + 1)


@bz.step
async def second(ctx: bz.Context, ev: Second) -> Third:
    return Third(n=ev.n + 1)


@bz.step
async def third(ctx: bz.Context, ev: Third) -> bz.StopEvent:
    return bz.StopEvent(result=ev.n + 1)


workflow = bz.Workflow("scaleout", [first, second, third])


class _Client:
    """`WorkflowClient` as the round drives it."""

    def __init__(self, client: bz.WorkflowClient) -> None:
        self._client = client

    async def submit_many(self, inputs: Sequence[int]) -> list[str]:
        run_ids: list[str] = [""] * len(inputs)
        limiter = trio.CapacityLimiter(SUBMITTERS)

        async def submit(index: int) -> None:
            async with limiter:
                run_ids[index] = await self._client.submit(workflow.name, inputs[index])

        async with trio.open_nursery() as nursery:
            for index in range(len(inputs)):
                nursery.start_soon(submit, index)
        return run_ids

    async def result(self, run_id: str) -> int:
        outcome = await self._client.result(run_id)
        value: int = outcome.result
        return value


async def _round(dsn: str, runs: int, latency_runs: int) -> Metrics:
    async with PostgresCheckpointStore(dsn) as store:
        client = _Client(bz.WorkflowClient(store))
        return await scaleout_round(client, runs, latency_runs)


def scaleout(job: Job) -> Callable[[], Metrics]:
    """Start the job's workers on a fresh database and warm them up; each round is a client
    run against them."""
    workers, concurrency = count(job, "workers"), count(job, "concurrency")
    dsn = fresh_database(str(job["dsn"]), f"blazen_scaleout_w{workers}")
    command = [sys.executable, "-m", "benchmarks._scaleout", dsn, str(concurrency)]
    fleet = Fleet(command, workers)
    atexit.register(fleet.stop)  # the job's process ends after its last round
    run_trio(_round, dsn, count(job, "warmup_runs"), 1)
    runs, latency_runs = count(job, "runs"), count(job, "latency_runs")
    return in_fresh_loop(lambda: _round(dsn, runs, latency_runs))


async def _serve(dsn: str, concurrency: int) -> None:
    async with (
        PostgresCheckpointStore(dsn) as store,
        bz.open_worker(store, [workflow], concurrency=concurrency),
    ):
        await trio.to_thread.run_sync(serve_until_stdin_closes, abandon_on_cancel=True)


def main(argv: list[str]) -> None:
    """`DSN CONCURRENCY INDEX`: one worker process of the fleet (named by the worker itself,
    so the index is unused)."""
    dsn, concurrency, _index = argv
    trio.run(_serve, dsn, int(concurrency))


if __name__ == "__main__":
    main(sys.argv[1:])
