"""The suite's scenarios on LlamaIndex Workflows, run inside a peer venv.

Invoked by the suite as `<peer python> -m benchmarks._peer_llama '<job JSON>'` from the repo
root, one fresh process per job, and answers with one JSON object on stdout. It imports only the
stdlib, the suite's stdlib-only modules and `llama-index-workflows`, which is why it is a
separate process: llama is asyncio and lives in its own venv, so its version never leaks into
ours.

Each scenario is written the way the LlamaIndex docs write it (`ctx.send_event` fan-out,
`num_workers`, `ctx.collect_events`, `handler.stream_events`, `ctx.to_dict`), with the same
event counts and payloads as the trio floor and the blazen_trio versions.
"""

# mypy: disallow-subclassing-any=False, disallow-untyped-decorators=False
# (llama-index-workflows is installed only in the peer venvs, so in the main venv its classes
# and its `@step` decorator are untyped `Any`; the ignores below say the same per import.)

import asyncio
import gc
import json
import time
from collections.abc import Callable
from typing import Any

# Installed only in the peer venvs, never in the main one.
from workflows import Context, Workflow, step  # type: ignore[import-not-found]
from workflows.events import Event, StartEvent, StopEvent  # type: ignore[import-not-found]

from benchmarks._aio import answer, timed
from benchmarks._measure import GaveUp, Job, Metrics, Prepare, rss_kib
from benchmarks._workload import YIELD_EVERY, expected

SETUP_LIMIT_BUDGETS = 2
"""Give up on a snapshot set-up (queueing the pending events) after this many job budgets."""


class Tick(Event):
    n: int
    total: int


class Item(Event):
    i: int
    total: int


class Done(Event):
    i: int
    total: int


class Chunk(Event):
    i: int


class Payload(Event):
    i: int
    text: str


class ChainFlow(Workflow):
    @step
    async def begin(self, ev: StartEvent) -> Tick:
        return Tick(n=1, total=ev.total)

    @step
    async def tick(self, ev: Tick) -> Tick | StopEvent:
        if ev.n + 1 >= ev.total:
            return StopEvent(result=ev.n + 1)
        return Tick(n=ev.n + 1, total=ev.total)


class FanFlow(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Item | None:
        for i in range(ev.total):
            ctx.send_event(Item(i=i, total=ev.total))
        return None

    @step(num_workers=8)
    async def work(self, ev: Item) -> Done:
        return Done(i=ev.i, total=ev.total)

    @step
    async def gather(self, ctx: Context, ev: Done) -> StopEvent | None:
        done = ctx.collect_events(ev, expected(Done, ev.total))
        if done is None:
            return None
        return StopEvent(result=len(done))


class TrivialFlow(Workflow):
    @step
    async def only(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=None)


class _Idle:
    """Where idle runs park: a gate and an arrival count (one measurement per process)."""

    gate: asyncio.Event
    arrived = 0
    target = 0
    all_in: asyncio.Event


class IdleFlow(Workflow):
    @step
    async def only(self, ev: StartEvent) -> StopEvent:
        _Idle.arrived += 1
        if _Idle.arrived == _Idle.target:
            _Idle.all_in.set()
        await _Idle.gate.wait()
        return StopEvent(result=None)


class StreamFlow(Workflow):
    @step
    async def produce(self, ctx: Context, ev: StartEvent) -> StopEvent:
        for i in range(ev.total):
            ctx.write_event_to_stream(Chunk(i=i))
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        return StopEvent(result=ev.total)


class SnapshotFlow(Workflow):
    @step
    async def fill(self, ctx: Context, ev: StartEvent) -> Payload | None:
        for i in range(ev.n_keys):
            await ctx.store.set(f"key{i}", i)
        for i in range(ev.n_events):
            ctx.send_event(Payload(i=i, text="x" * 16))
        return None

    @step(num_workers=1)
    async def sink(self, ev: Payload) -> StopEvent:
        await asyncio.sleep(3600)  # parked: every other Payload stays queued
        return StopEvent(result=None)


def chain(job: Job) -> Callable[[], Metrics]:
    return timed(lambda: ChainFlow(timeout=None).run(total=job["n"]))


def fanout(job: Job) -> Callable[[], Metrics]:
    return timed(lambda: FanFlow(timeout=None).run(total=job["n"]))


async def _trivial_runs(n: int) -> None:
    wf = TrivialFlow(timeout=None)
    await asyncio.gather(*(wf.run() for _ in range(n)))


async def _idle_run_kib(n: int) -> float:
    """KiB of RSS per run while `n` runs are parked inside their step at once."""
    await _trivial_runs(min(100, n))  # one-time allocations out of the way
    gc.collect()
    baseline = rss_kib()
    _Idle.gate, _Idle.all_in, _Idle.arrived, _Idle.target = asyncio.Event(), asyncio.Event(), 0, n
    wf = IdleFlow(timeout=None)
    handlers = [wf.run() for _ in range(n)]
    await _Idle.all_in.wait()
    peak = rss_kib()
    _Idle.gate.set()
    await asyncio.gather(*handlers)
    return (peak - baseline) / n


def runs(job: Job) -> Callable[[], Metrics]:
    """Memory first, in this fresh process, then the timed rounds."""
    kib = asyncio.run(_idle_run_kib(job["n"]))
    timed_round = timed(lambda: _trivial_runs(job["n"]))
    return lambda: {**timed_round(), "kib_per_idle_run": kib}


async def _count(events: Any, counts: list[int], slot: int) -> None:
    async for ev in events:
        if isinstance(ev, Chunk):
            counts[slot] += 1


async def _drain_queue(queue: asyncio.Queue[Any], counts: list[int], slot: int) -> None:
    while await queue.get() is not None:
        counts[slot] += 1


async def _stream_round(n: int, subscribers: int) -> Metrics:
    """LlamaIndex streams to one consumer per run, so more subscribers need a hand fan-out."""
    counts = [0] * subscribers
    started = time.perf_counter()
    handler = StreamFlow(timeout=None).run(total=n)
    if subscribers == 1:
        await _count(handler.stream_events(), counts, 0)
    else:
        queues: list[asyncio.Queue[Any]] = [asyncio.Queue() for _ in range(subscribers)]
        drains = [asyncio.create_task(_drain_queue(q, counts, s)) for s, q in enumerate(queues)]
        async for ev in handler.stream_events():
            if isinstance(ev, Chunk):
                for queue in queues:
                    queue.put_nowait(ev)
        for queue in queues:
            queue.put_nowait(None)
        await asyncio.gather(*drains)
    await handler
    elapsed = time.perf_counter() - started
    return {"time": elapsed, "delivered": float(sum(counts))}


def stream(job: Job) -> Callable[[], Metrics]:
    return lambda: asyncio.run(_stream_round(job["n"], job["subscribers"]))


def _pending(saved: dict[str, Any]) -> int:
    sink = saved["workers"]["sink"]
    return len(sink["queue"]) + len(sink["in_progress"]) + len(saved.get("deliveries", []))


async def _snapshot_round(keys: int, events: int, setup_limit_s: float) -> Metrics:
    """LlamaIndex has no pause: its snapshot is `ctx.to_dict()` of a run parked on one step."""
    wf = SnapshotFlow(timeout=None)
    handler = wf.run(n_keys=keys, n_events=events)
    give_up_at = time.perf_counter() + setup_limit_s
    delay = 0.001
    while (queued := _pending(handler.ctx.to_dict())) < events:
        if handler.done():
            await handler  # raises the run's error
        if time.perf_counter() > give_up_at:
            await handler.cancel_run()
            raise GaveUp(f"{queued:,} of {events:,} events queued after {setup_limit_s:.0f} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    started = time.perf_counter()
    encoded = json.dumps(handler.ctx.to_dict())
    encoded_at = time.perf_counter()
    Context.from_dict(wf, json.loads(encoded))
    decoded_at = time.perf_counter()
    await handler.cancel_run()
    return {
        "json_enc": encoded_at - started,
        "json_dec": decoded_at - encoded_at,
        "json_time": decoded_at - started,
        "json_bytes": float(len(encoded.encode())),
    }


def snapshot(job: Job) -> Callable[[], Metrics]:
    keys, events, limit = job["keys"], job["events"], SETUP_LIMIT_BUDGETS * job["budget_s"]
    return lambda: asyncio.run(_snapshot_round(keys, events, limit))


SCENARIOS: dict[str, Prepare] = {
    "chain": chain,
    "fanout": fanout,
    "runs": runs,
    "stream": stream,
    "snapshot": snapshot,
}
UNSUPPORTED = {"pause": "no pause API", "durable": "no checkpointer"}


def main() -> None:
    answer(SCENARIOS, "llama-index-workflows", UNSUPPORTED)


if __name__ == "__main__":
    main()
