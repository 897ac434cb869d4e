"""A workflow written as a script: run as `__main__`, it snapshots a paused run to a file.

    python _script_workflow.py SNAPSHOT_PATH

Its classes then have `__main__` ids and type paths. tests/test_main_module.py runs it in a
child process and resumes the snapshot in its own process, where this file is the module
`_script_workflow`. The child prints, as JSON, the error a snapshot holding a `__main__`
dataclass in its state gets.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Awaitable, Callable

import trio
import trio.testing

import blazen_trio as bz


class Greet(bz.Event):
    name: str


@dataclasses.dataclass
class Stats:
    """A state value of a class defined in the script."""

    count: int


async def _no_hold() -> None:
    pass


hold: Callable[[], Awaitable[None]] = _no_hold
"""Awaited by `greet`; the script holds it so that a Greet is in flight when it pauses."""


@bz.step
async def parse(ctx: bz.Context, ev: bz.StartEvent) -> Greet:
    if ev.data.get("stats"):
        ctx.set("stats", Stats(count=1))
    return Greet(name=ev.data["name"])


@bz.step
async def greet(ev: Greet) -> bz.StopEvent:
    await hold()
    return bz.StopEvent(result=f"Hello, {ev.name}!")


WORKFLOW = bz.Workflow("script", [parse, greet])


async def paused_snapshot(data: dict[str, object]) -> bz.WorkflowSnapshot:
    """A run paused with its Greet pending (greet was holding)."""
    async with WORKFLOW.start(data) as handler:
        await trio.testing.wait_all_tasks_blocked()
        await handler.pause(cancel_in_flight=True)
        snapshot = await handler.snapshot()
        await handler.abort()
    return snapshot


async def main(path: str) -> None:
    snapshot = await paused_snapshot({"name": "Ada"})
    await trio.Path(path).write_bytes(snapshot.to_bytes())
    try:
        await paused_snapshot({"name": "Bo", "stats": True})
    except bz.SnapshotError as error:
        print(json.dumps({"state_error": str(error)}))
    else:
        print(json.dumps({"state_error": None}))


if __name__ == "__main__":

    async def _forever() -> None:
        await trio.sleep_forever()

    hold = _forever
    trio.run(main, sys.argv[1])
