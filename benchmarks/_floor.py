"""The floors: each scenario's work done as tightly as an expert would with bare Trio, no engine.

Every floor is correct for its scenario (every event reaches its handler, the run ends on the
stop event) and pays no cost the work does not need: a sequential chain runs in one task with
its handler awaited inline, a bounded fan-out keeps at most `workers` tasks, a stream reader
drains its channel in batches. Events are frozen `msgspec.Struct`s like blazen_trio's, so
`engine / floor` measures routing and bookkeeping, not event objects. Each Trio floor comes
with a plain loop (no Trio, no coroutines): the physical limit of doing the same handler calls
in Python. The snapshot floor is the stdlib (`pickle`, `json`) on the same data as plain dicts;
the durability floor is one raw SQLite WAL commit.
"""

import json
import math
import os
import pickle
import sqlite3
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import trio

from benchmarks._common import (
    Gate,
    codec_metrics,
    count,
    in_fresh_loop,
    runs_scenario,
    timed,
    with_plain,
)
from benchmarks._measure import Job, Metrics, Prepare
from benchmarks._workload import YIELD_EVERY


class Start(msgspec.Struct, frozen=True):
    data: Any


class Stop(msgspec.Struct, frozen=True):
    result: Any


class Tick(msgspec.Struct, frozen=True):
    n: int
    total: int


class Item(msgspec.Struct, frozen=True):
    i: int
    total: int


class Done(msgspec.Struct, frozen=True):
    i: int
    total: int


class Chunk(msgspec.Struct, frozen=True):
    i: int


class Work(msgspec.Struct, frozen=True):
    i: int


Send = trio.MemorySendChannel[object]
Handler = Callable[[Any, Send], Awaitable[None]]


def _channel() -> tuple[Send, trio.MemoryReceiveChannel[object]]:
    # Unbounded: a handler's output must never block on the loop that is waiting to run it.
    return trio.open_memory_channel[object](math.inf)


async def serve(first: object, handlers: Mapping[type, Handler]) -> object:
    """A run in one task: each event from the channel is handled inline; `Stop` ends it.

    The tight floor for sequential steps: no task per step, the same memory channel the engine
    routes through, one checkpoint per event (the channel's receive).
    """
    send, receive = _channel()
    send.send_nowait(first)
    async for event in receive:
        if isinstance(event, Stop):
            return event.result
        await handlers[type(event)](event, send)
    raise AssertionError("the event channel closed")  # the loop holds `send`: unreachable


def plain_serve(
    first: object, handlers: Mapping[type, Callable[[Any, deque[object]], None]]
) -> Any:
    """The same loop with no Trio and no coroutines: a deque and plain function calls."""
    queue: deque[object] = deque([first])
    while True:
        event = queue.popleft()
        if isinstance(event, Stop):
            return event.result
        handlers[type(event)](event, queue)


# -- (1) chain ------------------------------------------------------------------------------


def _next_tick(ev: Tick) -> Tick | Stop:
    return Stop(result=ev.n + 1) if ev.n + 1 >= ev.total else Tick(n=ev.n + 1, total=ev.total)


async def _chain_begin(ev: Start, send: Send) -> None:
    send.send_nowait(Tick(n=1, total=ev.data))


async def _chain_tick(ev: Tick, send: Send) -> None:
    send.send_nowait(_next_tick(ev))


CHAIN: Mapping[type, Handler] = {Start: _chain_begin, Tick: _chain_tick}
PLAIN_CHAIN: Mapping[type, Callable[[Any, deque[object]], None]] = {
    Start: lambda ev, q: q.append(Tick(n=1, total=ev.data)),
    Tick: lambda ev, q: q.append(_next_tick(ev)),
}


def chain(job: Job) -> Callable[[], Metrics]:
    n = count(job, "n")
    return with_plain(
        timed(lambda: serve(Start(data=n), CHAIN)), lambda: plain_serve(Start(n), PLAIN_CHAIN)
    )


# -- (2) fan-out / fan-in -------------------------------------------------------------------


async def _work(ev: Item, send: Send) -> None:
    send.send_nowait(Done(i=ev.i, total=ev.total))


class _Gather:
    """The fan-in step: keeps each `Done`; true once all `total` are in."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done: list[Done] = []

    def add(self, ev: object) -> bool:
        assert isinstance(ev, Done)  # only Item and Done flow through a fan-out's channel
        self.done.append(ev)
        return len(self.done) == self.total


async def _fanout_spawn(total: int, workers: int) -> int:
    """Limiter-gated spawn: a slot is taken before each task starts, so at most `workers` exist."""
    limiter = trio.CapacityLimiter(workers)
    gather = _Gather(total)
    send, receive = _channel()

    async def work(ev: Item, token: object) -> None:
        try:
            await _work(ev, send)
        finally:
            limiter.release_on_behalf_of(token)

    async with trio.open_nursery() as nursery:
        for i in range(total):  # the `begin` step, inline
            send.send_nowait(Item(i=i, total=total))
        async for event in receive:
            if isinstance(event, Item):
                token = object()
                await limiter.acquire_on_behalf_of(token)
                nursery.start_soon(work, event, token)
            elif gather.add(event):
                return len(gather.done)
    raise AssertionError("the event channel closed")


async def _fanout_pool(total: int, workers: int) -> int:
    """A pool of `workers` tasks reading one channel of items; fan-in inline in the router."""
    gather = _Gather(total)
    send, receive = _channel()
    items_send, items_receive = trio.open_memory_channel[Item](math.inf)  # router never blocks

    async def worker() -> None:
        async for ev in items_receive:
            await _work(ev, send)

    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)
        for i in range(total):
            send.send_nowait(Item(i=i, total=total))
        async for event in receive:
            if isinstance(event, Item):
                items_send.send_nowait(event)
            elif gather.add(event):
                nursery.cancel_scope.cancel(reason="the run stopped")
                return len(gather.done)
    raise AssertionError("the event channel closed")


def _plain_fanout(total: int) -> int:
    gather = _Gather(total)
    queue: deque[object] = deque(Item(i=i, total=total) for i in range(total))
    while queue:
        event = queue.popleft()
        if isinstance(event, Item):
            queue.append(Done(i=event.i, total=event.total))
        elif gather.add(event):
            return len(gather.done)
    raise AssertionError("the fan-in never completed")


def fanout(job: Job) -> Callable[[], Metrics]:
    n, workers = count(job, "n"), count(job, "workers")
    spawn = timed(lambda: _fanout_spawn(n, workers))
    pool = timed(lambda: _fanout_pool(n, workers))
    floors = with_plain(lambda: {"spawn_time": spawn()["time"]}, lambda: _plain_fanout(n))
    return lambda: {**floors(), "pool_time": pool()["time"]}


# -- (3) concurrent runs --------------------------------------------------------------------


async def _trivial(ev: Start, send: Send) -> None:
    send.send_nowait(Stop(result=None))


TRIVIAL: Mapping[type, Handler] = {Start: _trivial}
PLAIN_TRIVIAL: Mapping[type, Callable[[Any, deque[object]], None]] = {
    Start: lambda ev, q: q.append(Stop(result=None))
}


async def _concurrent_runs(n: int) -> None:
    """A nursery and one task per run; each run's single step is awaited inline in it."""
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(serve, Start(data=None), TRIVIAL)


async def _run_in_a_nursery() -> None:
    """A run as the design shapes one: a nursery of its own, its step in a cancel scope."""
    async with trio.open_nursery():
        with trio.CancelScope():
            await serve(Start(data=None), TRIVIAL)


async def _concurrent_nursery_runs(n: int) -> None:
    """The floor plus what every run is by design: what the engine cannot go below."""
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(_run_in_a_nursery)


def _plain_runs(n: int) -> None:
    for _ in range(n):
        plain_serve(Start(data=None), PLAIN_TRIVIAL)


def _parked_run(gate: Gate) -> Callable[[], Awaitable[object]]:
    async def parked(ev: Start, send: Send) -> None:
        await gate.arrive_and_wait()
        send.send_nowait(Stop(result=None))

    return lambda: serve(Start(data=None), {Start: parked})


def runs(job: Job) -> Callable[[], Metrics]:
    n = count(job, "n")
    tight = with_plain(runs_scenario(n, _concurrent_runs, _parked_run), lambda: _plain_runs(n))
    nursery = timed(lambda: _concurrent_nursery_runs(n))
    return lambda: {**tight(), "nursery_time": nursery()["time"]}


# -- (4) streaming --------------------------------------------------------------------------


async def _consume(receive: trio.MemoryReceiveChannel[Chunk], counts: list[int], slot: int) -> None:
    """Wait for one event, then drain what is buffered without yielding: batched reads."""
    async with receive:
        async for _ in receive:
            got = 1
            try:
                while True:
                    receive.receive_nowait()
                    got += 1
            except (trio.WouldBlock, trio.EndOfChannel):
                pass
            counts[slot] += got


async def _stream_round(n: int, subscribers: int) -> Metrics:
    counts = [0] * subscribers
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        sends: list[trio.MemorySendChannel[Chunk]] = []
        for slot in range(subscribers):
            send, receive = trio.open_memory_channel[Chunk](n)  # lossless, like the engine's
            nursery.start_soon(_consume, receive, counts, slot)
            sends.append(send)
        for i in range(n):  # the producing step, in this task
            chunk = Chunk(i=i)
            for subscriber in sends:
                subscriber.send_nowait(chunk)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await trio.lowlevel.checkpoint()
        for send in sends:
            send.close()
    return {"time": time.perf_counter() - started, "delivered": float(sum(counts))}


def _plain_stream(n: int, subscribers: int) -> None:
    """Per-subscriber deques, drained after every `YIELD_EVERY` events (where Trio would yield)."""
    queues: list[deque[Chunk]] = [deque() for _ in range(subscribers)]
    counts = [0] * subscribers
    for i in range(n):
        chunk = Chunk(i=i)
        for queue in queues:
            queue.append(chunk)
        if i % YIELD_EVERY == YIELD_EVERY - 1 or i == n - 1:
            for slot, queue in enumerate(queues):
                while queue:
                    queue.popleft()
                    counts[slot] += 1
    assert sum(counts) == n * subscribers


def stream(job: Job) -> Callable[[], Metrics]:
    n, subscribers = count(job, "n"), count(job, "subscribers")
    trio_round = in_fresh_loop(lambda: _stream_round(n, subscribers))
    return with_plain(trio_round, lambda: _plain_stream(n, subscribers))


# -- (5) snapshot codec ---------------------------------------------------------------------


def snapshot_data(keys: int, events: int) -> dict[str, object]:
    """A paused run's state and pending events as plain dicts: what the stdlib would store."""
    return {
        "state": {f"key{i}": i for i in range(keys)},
        "pending_events": [
            {
                "type_id": "benchmarks._engine.Payload",
                "payload": {"i": i, "text": "x" * 16},
                "source_step": "fill",
            }
            for i in range(events)
        ],
    }


def snapshot(job: Job) -> Callable[[], Metrics]:
    data = snapshot_data(count(job, "keys"), count(job, "events"))
    return lambda: {
        **codec_metrics("json", lambda: json.dumps(data).encode(), json.loads),
        **codec_metrics("pickle", lambda: pickle.dumps(data), pickle.loads),
    }


# -- (6) pause to quiescent -----------------------------------------------------------------


async def _pause_round(n: int, cancel_in_flight: bool) -> Metrics:
    """`n` step tasks in flight; "pause" = stop and wait until none runs, as the engine must."""
    gate = Gate(n)
    pending: list[object] = []
    quiescent = trio.Event()

    async def step(ev: Work) -> None:
        try:
            await gate.arrive_and_wait()
        except trio.Cancelled:
            pending.append(ev)  # its input waits to be re-run
            raise
        pending.append(Done(i=ev.i, total=n))  # its output waits to be routed

    async def in_flight(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with trio.open_nursery() as steps:
                for i in range(n):
                    steps.start_soon(step, Work(i=i))
        quiescent.set()

    async with trio.open_nursery() as nursery:
        scope: trio.CancelScope = await nursery.start(in_flight)
        await gate.all_in.wait()
        if not cancel_in_flight:
            gate.open.set()
        started = time.perf_counter()
        if cancel_in_flight:
            scope.cancel(reason="pause")
        await quiescent.wait()
        latency = time.perf_counter() - started
    return {"latency": latency, "pending": float(len(pending))}


def pause(job: Job) -> Callable[[], Metrics]:
    n, cancel_in_flight = count(job, "n"), job["mode"] == "cancel"
    return in_fresh_loop(lambda: _pause_round(n, cancel_in_flight))


# -- (7) durability: one raw SQLite WAL commit ----------------------------------------------

RECORD_BYTES = 256
"""The payload of each raw commit: about one journal record of a chain step."""


class _WalLoop:
    """A minimal insert + commit loop on a new WAL-mode file at `synchronous`."""

    def __init__(self, path: Path, synchronous: str) -> None:
        # Awaited commits may run on different worker threads, one at a time.
        self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.connection.execute("PRAGMA journal_mode = WAL")
        self.connection.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        self.connection.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, data BLOB)")
        self.payload = os.urandom(RECORD_BYTES)

    def commit(self, times: int = 1) -> None:
        for _ in range(times):
            self.connection.execute("BEGIN IMMEDIATE")
            self.connection.execute("INSERT INTO records (data) VALUES (?)", (self.payload,))
            self.connection.execute("COMMIT")


async def _wal_round(synchronous: str, commits: int, hop: bool) -> Metrics:
    """The whole loop in one worker thread (the limit), or each commit awaited from Trio
    through its own `trio.to_thread.run_sync` round trip (`hop`)."""
    with tempfile.TemporaryDirectory(prefix="blazen-bench-") as directory:
        loop = _WalLoop(Path(directory) / "wal.db", synchronous)
        try:
            started = time.perf_counter()
            if hop:
                for _ in range(commits):
                    await trio.to_thread.run_sync(loop.commit)
            else:
                await trio.to_thread.run_sync(loop.commit, commits)
            elapsed = time.perf_counter() - started
        finally:
            loop.connection.close()
    return {"per_step": elapsed / commits, "time": elapsed}


def durable(job: Job) -> Callable[[], Metrics]:
    if job["shape"] not in ("wal", "walhop"):
        raise ValueError(f"the floor measures only the raw WAL commit, not {job['shape']!r}")
    synchronous, commits, hop = str(job["store"]), count(job, "commits"), job["shape"] == "walhop"
    return in_fresh_loop(lambda: _wal_round(synchronous, commits, hop))


SCENARIOS: dict[str, Prepare] = {
    "chain": chain,
    "fanout": fanout,
    "runs": runs,
    "stream": stream,
    "snapshot": snapshot,
    "pause": pause,
    "durable": durable,
}
