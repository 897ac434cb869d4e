"""The durability scenarios on DBOS Transact with a SQLite system database, in its peer venv
(and the scale-out one on PostgreSQL, `_peer_dbos_scaleout`).

Invoked as `<peer python> -m benchmarks._peer_dbos '<job JSON>'` like `_peer_llama`. A durable
chain is a `@DBOS.workflow()` that awaits a `@DBOS.step()` once per step (DBOS records each step's
output before the workflow goes on); concurrent runs are that workflow started `runs` times
with `asyncio.gather`. Async workflows and steps: DBOS runs their database writes in threads.

Settings (`store`): "default" leaves DBOS's SQLite as DBOS opens it (rollback journal,
synchronous=FULL); "full" and "normal" put the file in WAL mode with synchronous=FULL / NORMAL
on every connection, through a SQLAlchemy connect hook: the settings of the blazen_trio store
and the raw WAL commit. The answer reports the settings read back from a connection.
DBOS keeps no workflow state beyond step outputs, so it has no many-keys scenario.
"""

# mypy: disallow-untyped-decorators=False, disallow-any-unimported=False
# (DBOS and SQLAlchemy are installed only in the peer venv, so here their decorators are untyped.)

import asyncio
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from typing import Any

# Installed only in the peer venv, never in the main one.
import sqlalchemy  # type: ignore[import-not-found]
from dbos import DBOS  # type: ignore[import-not-found]

from benchmarks._aio import answer
from benchmarks._measure import Job, Metrics, Prepare
from benchmarks._peer_dbos_scaleout import scaleout

SETTINGS: dict[str, object] = {}
"""The database file (`path`) and the `synchronous` the connect hook read back."""


def _use_wal(synchronous: str) -> None:
    """Every new SQLAlchemy connection in this process: WAL and `synchronous`."""

    @sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "connect")
    def pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        (SETTINGS["synchronous"],) = cursor.execute("PRAGMA synchronous").fetchone()
        cursor.close()


@DBOS.step()
async def tick(n: int) -> int:
    return n + 1


@DBOS.workflow()
async def chain(total: int) -> int:
    n = 0
    while n < total:
        n = await tick(n)
    return n


def _settings() -> dict[str, object]:
    """The file's journal mode and the synchronous level of DBOS's connections, read back.

    Without our hook DBOS's connections keep SQLite's default synchronous, read here from a
    fresh connection.
    """
    if "path" not in SETTINGS:
        return {}
    connection = sqlite3.connect(str(SETTINGS["path"]))
    try:
        (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
        (default,) = connection.execute("PRAGMA synchronous").fetchone()
    finally:
        connection.close()
    sync = SETTINGS.get("synchronous", default)
    return {"settings": {"journal_mode": mode, "synchronous": sync}}


async def _launch() -> None:
    DBOS.launch()


def durable(job: Job) -> Callable[[], Metrics]:
    """One DBOS (and database) per job: DBOS launches once per process."""
    if job["shape"] not in ("chain", "runs"):
        raise ValueError(f"no {job['shape']} scenario on DBOS")
    if job["store"] != "default":
        _use_wal(str(job["store"]))
    steps, runs = int(job["steps"]), int(job["runs"])
    path = os.path.join(tempfile.mkdtemp(prefix="blazen-bench-dbos-"), "dbos.sqlite")
    SETTINGS["path"] = path
    DBOS(config={"name": "bench", "system_database_url": f"sqlite:///{path}"})
    runner = asyncio.Runner()
    runner.run(_launch())

    async def one_round() -> Metrics:
        started = time.perf_counter()
        await asyncio.gather(*(chain(steps) for _ in range(runs)))
        elapsed = time.perf_counter() - started
        return {"time": elapsed, "per_step": elapsed / (runs * steps)}

    return lambda: runner.run(one_round())


SCENARIOS: dict[str, Prepare] = {"durable": durable, "scaleout": scaleout}


def main() -> None:
    try:
        answer(SCENARIOS, "dbos", extra=_settings)
    finally:
        DBOS.destroy()


if __name__ == "__main__":
    main()
