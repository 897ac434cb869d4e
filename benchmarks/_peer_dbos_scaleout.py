"""The scale-out scenario on DBOS Transact queues, in the DBOS peer venv.

The same 3-step run as blazen_trio's (`benchmarks._scaleout`): a `@DBOS.workflow()` awaiting
three `@DBOS.step()`s, each adding 1. The driver (this process, the client) launches DBOS on a
fresh system database on the job's server, listening to no queue, registers the queue with
`worker_concurrency` = the job's concurrency, and starts N worker processes
(`python -m benchmarks._peer_dbos_scaleout URL INDEX`), each launching DBOS on the same
database with an executor id of its own and dequeuing from the queue (whose configuration,
`worker_concurrency` included, DBOS keeps in the database). The client enqueues
with `Queue.enqueue_async` and waits with the handles' `get_result`.

DBOS's queues and results are polled, not notified: its defaults (1 s) would put a second on
every latency, so the queue and the result waits poll every `POLL_S`, DBOS's figure in its
best light (`Queue(polling_interval_sec=)`, `get_result(polling_interval_sec=)`).
"""

# mypy: disallow-untyped-decorators=False, disallow-any-unimported=False
# (DBOS is installed only in the peer venv, so here its decorators are untyped.)

import asyncio
import atexit
import sys
from collections.abc import Callable, Sequence
from typing import Any

import psycopg.conninfo

# Installed only in the peer venv, never in the main one.
from dbos import DBOS  # type: ignore[import-not-found]

from benchmarks._fleet import SUBMITTERS, Fleet, scaleout_round, serve_until_stdin_closes
from benchmarks._measure import Job, Metrics
from benchmarks._pgserver import fresh_database

QUEUE = "scaleout"
POLL_S = 0.01
"""How often DBOS's queue workers and result waits look at the database."""

VERSION = "scaleout-bench"
"""The application version of every process: DBOS dequeues only runs of its own version."""


@DBOS.step()
async def add_one(n: int) -> int:
    return n + 1


@DBOS.workflow()
async def three_steps(n: int) -> int:
    n = await add_one(n)
    n = await add_one(n)
    result: int = await add_one(n)
    return result


def _url(dsn: str) -> str:
    """The SQLAlchemy URL of the database a libpq DSN names."""
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    password = f":{parts['password']}" if parts.get("password") else ""
    where = f"{parts.get('host', 'localhost')}:{parts.get('port', '5432')}/{parts['dbname']}"
    return f"postgresql+psycopg://{parts.get('user', 'postgres')}{password}@{where}"


def _launch(url: str, executor_id: str, listen: bool) -> None:
    DBOS(
        config={
            "name": "bench",
            "system_database_url": url,
            "executor_id": executor_id,
            "application_version": VERSION,
            "log_level": "WARNING",
        }
    )
    if not listen:
        DBOS.listen_queues([])
    DBOS.launch()


class _Client:
    """DBOS's queue as the round drives it; results are awaited through the handles."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue
        self._handles: dict[str, Any] = {}

    async def submit_many(self, inputs: Sequence[int]) -> list[str]:
        slots = asyncio.Semaphore(SUBMITTERS)

        async def submit(n: int) -> str:
            async with slots:
                handle = await self._queue.enqueue_async(three_steps, n)
            run_id: str = handle.get_workflow_id()
            self._handles[run_id] = handle
            return run_id

        return list(await asyncio.gather(*(submit(n) for n in inputs)))

    async def result(self, run_id: str) -> int:
        value: int = await self._handles.pop(run_id).get_result(polling_interval_sec=POLL_S)
        return value


def scaleout(job: Job) -> Callable[[], Metrics]:
    """Launch DBOS as the client on a fresh system database, register the queue, start the
    job's workers and warm them up; each round is a client run against them."""
    workers, concurrency = int(job["workers"]), int(job["concurrency"])
    dsn = fresh_database(str(job["dsn"]), f"dbos_scaleout_w{workers}")
    url = _url(dsn)
    _launch(url, "client", listen=False)
    queue = DBOS.register_queue(QUEUE, worker_concurrency=concurrency, polling_interval_sec=POLL_S)
    command = [sys.executable, "-m", "benchmarks._peer_dbos_scaleout", url]
    fleet = Fleet(command, workers)
    atexit.register(fleet.stop)  # the job's process ends after its last round
    runner = asyncio.Runner()
    client = _Client(queue)
    runner.run(scaleout_round(client, int(job["warmup_runs"]), 1))
    runs, latency_runs = int(job["runs"]), int(job["latency_runs"])
    return lambda: runner.run(scaleout_round(client, runs, latency_runs))


def main(argv: list[str]) -> None:
    """`URL INDEX`: one DBOS worker process, serving until its stdin closes."""
    url, index = argv
    _launch(url, f"worker-{index}", listen=True)
    try:
        serve_until_stdin_closes()
    finally:
        DBOS.destroy()


if __name__ == "__main__":
    main(sys.argv[1:])
