"""The workflow the worker tests distribute: fan-out, state, a bounded step, a fan-in and an
input request, each step execution counted in a table keyed by `ctx.idempotency_key`.

The start input: `{"dsn": DSN, "size": N, "delay": SECONDS}`. Imported as `_pg_workflow` by
the tests and by the worker processes they start (the tests directory on `sys.path`).
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import psycopg_pool
import trio

import blazen_trio as bz

REQUEST_ID = "approve"
EFFECTS_TABLE = "CREATE TABLE effects (key text PRIMARY KEY, executions integer NOT NULL)"

_pools: dict[str, psycopg_pool.ConnectionPool[Any]] = {}
_pools_lock = threading.Lock()


def expected(size: int, answer: Any = "yes") -> dict[str, Any]:
    """What every run of `size` items gives, however often it is interrupted."""
    return {"squares": [n * n for n in range(size)], "answer": answer}


def expected_keys(size: int) -> int:
    """Effect keys of one run: fan, size x work, size x join, finish."""
    return 2 + 2 * size


def _pool(dsn: str) -> psycopg_pool.ConnectionPool[Any]:
    with _pools_lock:
        pool = _pools.get(dsn)
        if pool is None:
            pool = _pools[dsn] = psycopg_pool.ConnectionPool(dsn, min_size=1, max_size=4, open=True)
        return pool


def close_pools() -> None:
    """Close this process's connections (tests call it at the end)."""
    with _pools_lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()


def _record(dsn: str, key: str) -> None:
    with _pool(dsn).connection() as connection, connection.transaction():
        connection.execute(
            "INSERT INTO effects VALUES (%s, 1) ON CONFLICT (key) DO UPDATE "
            "SET executions = effects.executions + 1",
            (key,),
        )


async def effect(ctx: bz.Context) -> None:
    """One real side effect of this execution, keyed as the engine keys it."""
    await trio.to_thread.run_sync(_record, ctx.get("dsn"), ctx.idempotency_key)


class Item(bz.Event, type_id="pgtest.Item"):
    n: int


class Done(bz.Event, type_id="pgtest.Done"):
    n: int


@bz.step
async def fan(ctx: bz.Context, ev: bz.StartEvent) -> list[Item]:
    ctx.set("dsn", ev.data["dsn"])
    ctx.set("size", ev.data.get("size", 4))
    ctx.set("delay", ev.data.get("delay", 0.0))
    await effect(ctx)
    return [Item(n=n) for n in range(ctx.get("size"))]


@bz.step(max_concurrency=2)
async def work(ctx: bz.Context, ev: Item) -> Done:
    await trio.sleep(ctx.get("delay"))
    await effect(ctx)
    ctx.set(f"square{ev.n}", ev.n * ev.n)
    return Done(n=ev.n)


@bz.step
async def join(ctx: bz.Context, ev: Done) -> bz.InputRequestEvent | None:
    done = ctx.collect_events(ev, [Done] * ctx.get("size"))
    await effect(ctx)
    if done is None:
        return None
    return bz.InputRequestEvent(prompt="ship it?", request_id=REQUEST_ID)


@bz.step
async def finish(ctx: bz.Context, ev: bz.InputResponseEvent) -> bz.StopEvent:
    await effect(ctx)
    squares = [ctx.get(f"square{n}") for n in range(ctx.get("size"))]
    return bz.StopEvent(result={"squares": squares, "answer": ev.response})


# A step's own write fails while the server restarts: it tries again, as real steps would.
RIDE_THROUGH_RESTARTS = bz.RetryPolicy(
    max_attempts=50, initial_delay=0.05, max_delay=0.5, retry_on=(psycopg.OperationalError,)
)
workflow = bz.Workflow("pgtest", [fan, work, join, finish], retry=RIDE_THROUGH_RESTARTS)
