"""The `blazen-trio` command: run, graph, inspect, and clear errors for bad arguments."""

from __future__ import annotations

import json
import pathlib

import pytest
import trio

import blazen_trio as bz
from blazen_trio.cli import main

TARGET = "examples.word_report:workflow"


def test_graph_prints_the_mermaid_of_the_workflow(capsys: pytest.CaptureFixture[str]) -> None:
    from examples.word_report import workflow

    assert main(["graph", TARGET]) == 0
    assert capsys.readouterr().out == workflow.to_mermaid()


def test_run_streams_json_lines_then_prints_the_result(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", TARGET, "--input", '{"documents": ["trio"]}']) == 0
    lines = capsys.readouterr().out.splitlines()
    stream = [json.loads(line) for line in lines[:-1]]
    names = [next(iter(line)) for line in stream]
    assert names[0] == "StepStarted"
    assert {"Progress", "StepCompleted", "UsageEvent"} <= set(names)
    assert stream[-1] == {"StopEvent": {"result": json.loads(lines[-1])["result"]}}
    assert json.loads(lines[-1])["result"]["documents"] == 1


async def _paused_snapshot() -> bz.WorkflowSnapshot:
    from examples.word_report import workflow

    async with workflow.start({"documents": ["trio", "attrs"]}) as handler:
        await handler.pause()
        snapshot = await handler.snapshot()
        await handler.abort()
    return snapshot


@pytest.mark.parametrize("form", ["msgpack", "json"])
def test_inspect_summarizes_a_snapshot_file(
    form: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snapshot = trio.run(_paused_snapshot)
    path = tmp_path / "run.snapshot"
    path.write_bytes(snapshot.to_json() if form == "json" else snapshot.to_bytes())
    assert main(["inspect", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["workflow"] == "word-report"
    assert summary["run_id"] == snapshot.run_id
    assert sum(summary["pending_events"].values()) == len(snapshot.pending_events)


def test_run_resumes_a_snapshot_file(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.snapshot"
    path.write_bytes(trio.run(_paused_snapshot).to_bytes())
    assert main(["run", TARGET, "--resume", str(path)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["result"]["documents"] == 2


def test_a_corrupt_snapshot_is_a_clear_error(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.snapshot"
    path.write_bytes(b"\x00garbage")
    assert main(["inspect", str(path)]) == 1
    assert capsys.readouterr().err.startswith("blazen-trio: snapshot: ")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", "expected MODULE:ATTRIBUTE"),
        ("examples.word_report:nothing", "cannot load"),
        ("examples.word_report:DOCUMENTS", "is a dict, not a Workflow"),
    ],
)
def test_a_bad_workflow_target_is_a_clear_error(target: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        main(["graph", target])
