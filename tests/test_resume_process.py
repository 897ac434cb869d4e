"""Pause a run, write its snapshot to a file, and resume it in a separate Python process."""

from __future__ import annotations

import json
import os
import pathlib
import sys

import _process_workflow
import pytest
import trio
import trio.testing
from _process_workflow import WORKFLOW, Progress

TESTS = pathlib.Path(__file__).parent
CHILD = TESTS / "resume_child.py"


async def paused_snapshot_bytes(codec: str, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, str]:
    """Run until parts 0 and 1 are done and part 2 is held; pause (cancel), snapshot, abort."""
    release = trio.Event()

    async def hold(index: int) -> None:
        if index == 2:
            await release.wait()

    monkeypatch.setattr(_process_workflow, "hold", hold)
    async with WORKFLOW.start("r1") as handler:
        seen: set[int] = set()
        async with handler.stream_events() as events:
            async for event in events:
                if isinstance(event, Progress):
                    seen.add(event.index)
                if seen == {0, 1, 2}:
                    break
        await trio.testing.wait_all_tasks_blocked()  # parts 0 and 1 committed and joined
        await handler.pause(cancel_in_flight=True)
        snapshot = await handler.snapshot()
        await handler.abort()

    # What the other process gets: part 2 pending, 0 and 1 in the join buffer, the request.
    assert [(p.target_step, p.event.payload) for p in snapshot.pending_events] == [
        ("work", {"index": 2})
    ]
    assert sorted(e.payload["index"] for e in snapshot.collect_buffers["join"]) == [0, 1]
    assert [e.payload["request_id"] for e in snapshot.input_requests] == ["approve-r1"]
    data = snapshot.to_json() if codec == "json" else snapshot.to_bytes()
    return data, handler.run_id


@pytest.mark.parametrize("codec", ["msgpack", "json"])
async def test_a_snapshot_resumes_in_another_process(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, codec: str
) -> None:
    data, run_id = await paused_snapshot_bytes(codec, monkeypatch)
    path = trio.Path(tmp_path / f"snapshot.{codec}")
    await path.write_bytes(data)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, str(CHILD), str(path), codec, "yes"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
            cwd=str(tmp_path),  # nothing importable by accident from the parent's directory
        )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert report == {
        "result": {
            "values": [0, 10, 20],
            "answer": "yes",
            "when": "2024-06-01T12:30:00+00:00",
            "budget": ["12.50", ["a", "b"], "Budget"],
            "state": ["budget", "part0", "part1", "part2", "seen", "when"],
        },
        "run_id": run_id,
        "usage": [10, 15],
        "answered": ["approve-r1"],
        "module": "_process_workflow.py",
    }
