"""The durability scenarios on LangGraph with its SQLite checkpointer, in its peer venv.

Invoked as `<peer python> -m benchmarks._peer_langgraph '<job JSON>'` like `_peer_llama`. A
durable chain is a `StateGraph` whose one node loops on itself (a conditional edge) until
`n == total`, compiled with `SqliteSaver` (`langgraph-checkpoint-sqlite`) and run with
`graph.invoke`: LangGraph writes a checkpoint per superstep. Concurrent runs need the async
saver, `AsyncSqliteSaver` (aiosqlite, one connection), and `asyncio.gather` of `ainvoke`. The
many-keys chain keeps its keys in one dict channel merged by a reducer, the way LangGraph
state grows; its checkpoint holds the whole channel each time it changes.

Settings (`store`): the saver's `setup()` puts the file in WAL mode; we set synchronous=FULL or
NORMAL on its connection, the settings of the blazen_trio store and the raw WAL commit. The
answer reports them as read back from that connection.
"""

# mypy: disallow-untyped-decorators=False, disallow-any-unimported=False

import asyncio
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

# Installed only in the peer venv, never in the main one.
import aiosqlite  # type: ignore[import-not-found]
from langgraph.checkpoint.sqlite import SqliteSaver  # type: ignore[import-not-found]
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver  # type: ignore[import-not-found]
from langgraph.graph import END, START, StateGraph  # type: ignore[import-not-found]

from benchmarks._aio import answer
from benchmarks._measure import Job, Metrics, Prepare

SETTINGS: dict[str, object] = {}
"""What the saver's connection reported (journal mode, synchronous)."""


def _merge(old: dict[str, int], new: dict[str, int]) -> dict[str, int]:
    return {**old, **new}


class Chain(TypedDict):
    n: int
    total: int


class Keys(TypedDict):
    n: int
    total: int
    kv: Annotated[dict[str, int], _merge]


def _route(state: Chain | Keys) -> str:
    return "tick" if state["n"] < state["total"] else END


def _tick(state: Chain) -> dict[str, int]:
    return {"n": state["n"] + 1}


async def _atick(state: Chain) -> dict[str, int]:
    return {"n": state["n"] + 1}


def _graph(state: type, tick: Callable[..., Any], begin: Callable[..., Any] | None = None) -> Any:
    builder = StateGraph(state)
    builder.add_node("tick", tick)
    if begin is None:
        builder.add_edge(START, "tick")
    else:
        builder.add_node("begin", begin)
        builder.add_edge(START, "begin")
        builder.add_edge("begin", "tick")
    builder.add_conditional_edges("tick", _route)
    return builder


def _keys_graph(keys: int, marks: list[float]) -> Any:
    def begin(state: Keys) -> dict[str, Any]:
        return {"n": 1, "kv": {f"key{i}": i for i in range(keys)}}

    def tick(state: Keys) -> dict[str, Any]:
        if not marks:
            marks.append(time.perf_counter())
        return {"n": state["n"] + 1, "kv": {f"key{state['n'] % keys}": state["n"]}}

    return _graph(Keys, tick, begin)


SETTING_PRAGMAS = ("journal_mode", "synchronous")


def _configure(connection: sqlite3.Connection, synchronous: str) -> None:
    """Set `synchronous` on the saver's connection (after `setup()`), note what it reports."""
    connection.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    mode, sync = (connection.execute(f"PRAGMA {p}").fetchone()[0] for p in SETTING_PRAGMAS)
    SETTINGS["settings"] = {"journal_mode": mode, "synchronous": sync}


def _sync_round(job: Job) -> Metrics:
    """One chain through `SqliteSaver` and `graph.invoke`, on a new file."""
    steps, marks = int(job["steps"]), list[float]()
    start: dict[str, object] = {"n": 0, "total": steps}
    if job["shape"] == "chain":
        builder = _graph(Chain, _tick)
    else:
        builder, start["kv"] = _keys_graph(int(job["keys"]), marks), {}
    config = {"configurable": {"thread_id": "bench"}, "recursion_limit": steps + 10}
    with tempfile.TemporaryDirectory(prefix="blazen-bench-lg-") as directory:
        connection = sqlite3.connect(os.path.join(directory, "lg.db"), check_same_thread=False)
        try:
            saver = SqliteSaver(connection)
            saver.setup()
            _configure(connection, str(job["store"]))
            graph = builder.compile(checkpointer=saver)
            started = time.perf_counter()
            graph.invoke(start, config)
            ended = time.perf_counter()
        finally:
            connection.close()
    if job["shape"] == "keys":  # from the first one-key step on, like the engine's figure
        return {"time": ended - started, "per_step": (ended - marks[0]) / (steps - 1)}
    return {"time": ended - started, "per_step": (ended - started) / steps}


async def _async_runs(job: Job) -> Metrics:
    """`runs` concurrent chains through `AsyncSqliteSaver` (one aiosqlite connection)."""
    steps, runs = int(job["steps"]), int(job["runs"])
    graph = _graph(Chain, _atick)
    with tempfile.TemporaryDirectory(prefix="blazen-bench-lg-") as directory:
        async with aiosqlite.connect(os.path.join(directory, "lg.db")) as connection:
            saver = AsyncSqliteSaver(connection)
            await saver.setup()
            await connection.execute(f"PRAGMA synchronous = {str(job['store']).upper()}")
            readings = []
            for pragma in SETTING_PRAGMAS:
                async with connection.execute(f"PRAGMA {pragma}") as cursor:
                    readings.append((await cursor.fetchone())[0])
            SETTINGS["settings"] = dict(zip(SETTING_PRAGMAS, readings, strict=True))
            compiled = graph.compile(checkpointer=saver)
            started = time.perf_counter()
            await asyncio.gather(
                *(
                    compiled.ainvoke(
                        {"n": 0, "total": steps}, {"configurable": {"thread_id": f"run-{i}"}}
                    )
                    for i in range(runs)
                )
            )
            elapsed = time.perf_counter() - started
    return {"time": elapsed, "per_step": elapsed / (runs * steps)}


def durable(job: Job) -> Callable[[], Metrics]:
    if job["shape"] == "runs":
        return lambda: asyncio.run(_async_runs(job))
    return lambda: _sync_round(job)


SCENARIOS: dict[str, Prepare] = {"durable": durable}


def main() -> None:
    answer(SCENARIOS, "langgraph", extra=lambda: dict(SETTINGS))


if __name__ == "__main__":
    main()
