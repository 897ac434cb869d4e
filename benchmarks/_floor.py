"""The Trio floor: each scenario's work done with bare Trio, no engine.

One memory channel carries the events, a loop starts one task per event, the first `Stop` ends
the run: the least any Trio engine can do. Events are frozen `msgspec.Struct`s like
blazen_trio's, so `engine / floor` measures routing and bookkeeping, not event objects.
The snapshot scenario's floor is the stdlib (`json`, `pickle`) on the same data as plain dicts.
"""

import json
import math
import pickle
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
import trio

from benchmarks._common import Gate, codec_metrics, count, in_fresh_loop, runs_scenario, timed
from benchmarks._measure import Job, Metrics, Prepare

YIELD_EVERY = 64
"""The streaming producer yields to the scheduler every this many events (in every engine)."""


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


async def dispatch(first: object, handlers: Mapping[type, Handler]) -> object:
    """The whole floor engine: route each event to a new task; the first `Stop` ends the run."""
    # Unbounded: a step's output must never block on the loop that is waiting to start it.
    send, receive = trio.open_memory_channel[object](math.inf)
    send.send_nowait(first)
    async with trio.open_nursery() as nursery:
        async for event in receive:
            if isinstance(event, Stop):
                nursery.cancel_scope.cancel(reason="the run stopped")
                return event.result
            nursery.start_soon(handlers[type(event)], event, send)
    raise AssertionError("the event channel closed")  # the loop holds `send`: unreachable


# -- (1) chain ------------------------------------------------------------------------------


async def _chain_begin(ev: Start, send: Send) -> None:
    send.send_nowait(Tick(n=1, total=ev.data))


async def _chain_tick(ev: Tick, send: Send) -> None:
    if ev.n + 1 >= ev.total:
        send.send_nowait(Stop(result=ev.n + 1))
    else:
        send.send_nowait(Tick(n=ev.n + 1, total=ev.total))


CHAIN: Mapping[type, Handler] = {Start: _chain_begin, Tick: _chain_tick}


def chain(job: Job) -> Callable[[], Metrics]:
    return timed(lambda: dispatch(Start(data=count(job, "n")), CHAIN))


# -- (2) fan-out / fan-in -------------------------------------------------------------------


async def _fanout_run(total: int, workers: int) -> object:
    limiter = trio.CapacityLimiter(workers)
    done: list[Done] = []

    async def begin(ev: Start, send: Send) -> None:
        for i in range(ev.data):
            send.send_nowait(Item(i=i, total=ev.data))

    async def work(ev: Item, send: Send) -> None:
        async with limiter:
            send.send_nowait(Done(i=ev.i, total=ev.total))

    async def gather(ev: Done, send: Send) -> None:
        done.append(ev)
        if len(done) == ev.total:
            send.send_nowait(Stop(result=len(done)))

    handlers: dict[type, Handler] = {Start: begin, Item: work, Done: gather}
    return await dispatch(Start(data=total), handlers)


def fanout(job: Job) -> Callable[[], Metrics]:
    return timed(lambda: _fanout_run(count(job, "n"), count(job, "workers")))


# -- (3) concurrent runs --------------------------------------------------------------------


async def _trivial(ev: Start, send: Send) -> None:
    send.send_nowait(Stop(result=None))


TRIVIAL: Mapping[type, Handler] = {Start: _trivial}


async def _concurrent_runs(n: int) -> None:
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(dispatch, Start(data=None), TRIVIAL)


def _parked_run(gate: Gate) -> Callable[[], Awaitable[object]]:
    async def parked(ev: Start, send: Send) -> None:
        await gate.arrive_and_wait()
        send.send_nowait(Stop(result=None))

    return lambda: dispatch(Start(data=None), {Start: parked})


def runs(job: Job) -> Callable[[], Metrics]:
    return runs_scenario(count(job, "n"), _concurrent_runs, _parked_run)


# -- (4) streaming --------------------------------------------------------------------------


async def _consume(receive: trio.MemoryReceiveChannel[Chunk], counts: list[int], slot: int) -> None:
    async with receive:
        async for _ in receive:
            counts[slot] += 1


async def _stream_round(n: int, subscribers: int) -> Metrics:
    counts = [0] * subscribers
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        sends: list[trio.MemorySendChannel[Chunk]] = []
        for slot in range(subscribers):
            send, receive = trio.open_memory_channel[Chunk](n)  # lossless, like the engine's
            nursery.start_soon(_consume, receive, counts, slot)
            sends.append(send)

        async def produce(ev: Start, out: Send) -> None:
            for i in range(ev.data):
                chunk = Chunk(i=i)
                for subscriber in sends:
                    subscriber.send_nowait(chunk)
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    await trio.lowlevel.checkpoint()
            out.send_nowait(Stop(result=ev.data))

        await dispatch(Start(data=n), {Start: produce})
        for send in sends:
            send.close()
    return {"time": time.perf_counter() - started, "delivered": float(sum(counts))}


def stream(job: Job) -> Callable[[], Metrics]:
    n, subscribers = count(job, "n"), count(job, "subscribers")
    return in_fresh_loop(lambda: _stream_round(n, subscribers))


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

    def one_round() -> Metrics:
        metrics = {
            **codec_metrics("json", lambda: json.dumps(data).encode(), json.loads),
            **codec_metrics("pickle", lambda: pickle.dumps(data), pickle.loads),
        }
        # The stdlib way to keep such a run: json for the data, pickle for the objects.
        metrics["json_pickle_time"] = metrics["json_time"] + metrics["pickle_time"]
        return metrics

    return one_round


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


SCENARIOS: dict[str, Prepare] = {
    "chain": chain,
    "fanout": fanout,
    "runs": runs,
    "stream": stream,
    "snapshot": snapshot,
    "pause": pause,
}
