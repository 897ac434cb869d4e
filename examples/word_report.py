"""Example workflow: fetch documents in parallel, count their words, report.

Shows fan-out (a list return), `max_concurrency`, a retry (one fetch fails the first time),
fan-in with `collect_events`, shared state, usage accounting, a subscriber printing the
run's stream as it happens, and a durable run: every step is committed to the embedded SQLite
store (`word_report.db`) before its outputs move on. The result is the same on every run.

    python examples/word_report.py [STORE_PATH]
"""

from __future__ import annotations

import sys
from collections import Counter

import trio

import blazen_trio as bz

DOCUMENTS = {
    "trio": "structured concurrency makes async code readable and cancellation reliable",
    "msgspec": "fast serialization and validation of structured data for python",
    "attrs": "classes without boilerplate python classes with attributes done right",
    "blazen": "event driven pausable workflows with snapshots streaming and resume",
}
FLAKY = {"blazen"}  # their first fetch fails, as networks do, and the retry policy tries again


class FetchDocument(bz.Event):
    name: str
    seconds: float = 0.05  # how long the "network" takes (the README's crash demo: longer)


class DocumentCounted(bz.Event):
    name: str
    words: dict[str, int]


class Progress(bz.Event):
    message: str


@bz.step
async def plan(ctx: bz.Context, ev: bz.StartEvent) -> list[FetchDocument]:
    names = sorted(ev.data["documents"])
    ctx.set("expected", len(names))
    ctx.write_event_to_stream(Progress(message=f"planning {len(names)} documents"))
    seconds = ev.data.get("seconds", 0.05)
    return [FetchDocument(name=name, seconds=seconds) for name in names]


@bz.step(max_concurrency=2, timeout=5.0, retry=bz.RetryPolicy(max_attempts=3, initial_delay=0.1))
async def count_words(ctx: bz.Context, ev: FetchDocument) -> DocumentCounted:
    await trio.sleep(ev.seconds)  # stands in for network I/O
    if ev.name in FLAKY and ctx.attempt == 1:
        raise ConnectionError(f"fetching {ev.name!r} timed out")
    text = DOCUMENTS[ev.name]
    ctx.emit_usage(bz.UsageEvent(provider="local", model="counter", total_tokens=len(text.split())))
    ctx.write_event_to_stream(Progress(message=f"counted {ev.name}"))
    return DocumentCounted(name=ev.name, words=dict(Counter(text.split())))


@bz.step
async def report(ctx: bz.Context, ev: DocumentCounted) -> bz.StopEvent | None:
    expected = [DocumentCounted] * ctx.get("expected")
    counted = ctx.collect_events(ev, expected)
    if counted is None:
        return None
    total: Counter[str] = Counter()
    for document in counted:
        assert isinstance(document, DocumentCounted)
        total.update(document.words)
    # Ties broken by word: the documents arrive in whatever order their steps finish.
    top = sorted(total.items(), key=lambda item: (-item[1], item[0]))[:3]
    return bz.StopEvent(result={"documents": len(counted), "top": top})


workflow = bz.Workflow("word-report", [plan, count_words, report], publish_lifecycle=True)


async def main(store_path: str = "word_report.db") -> None:
    async with bz.SqliteCheckpointStore(store_path) as store:
        durable = workflow.with_checkpoint_store(store)
        async with durable.start({"documents": list(DOCUMENTS)}) as handler:
            await _print_progress(handler)
            result = await handler.result()
        checkpoints = await store.history(result.run_id)
    print(f"result    {result.result}")
    print(f"tokens    {result.usage.total_tokens} in run {result.run_id}")
    print(f"stored    {len(checkpoints)} journal records in {store_path}")


async def _print_progress(handler: bz.WorkflowHandler) -> None:
    async for event in handler.stream_events():
        match event:
            case Progress(message=message):
                print(f"progress  {message}")
            case bz.StepErrored(step=step, attempt=attempt, error=error):
                print(f"errored   {step} attempt {attempt}: {error}")
            case bz.StepStarted(step=step, attempt=attempt) if attempt > 1:
                print(f"retrying  {step} attempt {attempt}")
            case bz.StepCompleted(step=step, duration=duration):
                print(f"completed {step} in {duration * 1000:.0f} ms")
            case bz.UsageEvent(total_tokens=tokens):
                print(f"usage     {tokens} tokens")
            case bz.StopEvent():
                print("stopped")


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "word_report.db")
