"""The `blazen-trio` command: run, graph, inspect, and clear errors for bad arguments."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence

import _legacy_formats as legacy
import pytest
import trio

import blazen_trio as bz
from blazen_trio.cli import main

TARGET = "examples.word_report:workflow"

HANGS = """
import trio
import blazen_trio as bz


class Began(bz.Event):
    pass


@bz.step
async def wait(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
    ctx.write_event_to_stream(Began())
    await trio.sleep_forever()


workflow = bz.Workflow("hangs", [wait])
"""

FAILS = """
import blazen_trio as bz


@bz.step
async def fail(ev: bz.StartEvent) -> bz.StopEvent:
    raise ValueError("no such document")


workflow = bz.Workflow("fails", [fail])
"""

INTERRUPTED_IN_A_STEP = """
import blazen_trio as bz


@bz.step
async def interrupted(ev: bz.StartEvent) -> bz.StopEvent:
    raise KeyboardInterrupt  # what Ctrl-C does while a step's own code runs


workflow = bz.Workflow("interrupted", [interrupted])
"""

WriteTarget = Callable[[str, str], pathlib.Path]


@pytest.fixture
def write_target(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> WriteTarget:
    """Write a module into a directory made current, as a user's own workflow file would be."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI puts the current directory on it

    def write(name: str, source: str) -> pathlib.Path:
        request.addfinalizer(lambda: sys.modules.pop(name, None))
        (tmp_path / f"{name}.py").write_text(source)
        return tmp_path

    return write


def cli(argv: Sequence[str]) -> int | str | None:
    """`main`'s exit status, whether it returned it or argparse exited with it."""
    try:
        return main(argv)
    except SystemExit as exit:
        return exit.code


def one_line(text: str) -> str:
    """The only line of `text` (a test fails if there are more)."""
    [line] = text.splitlines()
    return line


COMMAND = [sys.executable, "-m", "blazen_trio"]  # the `blazen-trio` command, in a fresh process


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


@pytest.mark.parametrize("name", ["snapshot_v2.msgpack", "snapshot_v2.json"])
def test_inspect_reads_a_snapshot_file_of_the_version_2_release(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(legacy.FORMATS / name)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["run_id"] == legacy.RUN_ID
    assert summary["pending_events"] == {"tests.Item": 2, "tests.Part": 1}


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
        ("no_colon", "expected MODULE:ATTRIBUTE, got 'no_colon'"),
        ("examples.word_report:nothing", "cannot load 'examples.word_report:nothing': "),
        ("no_such_module:workflow", "cannot load 'no_such_module:workflow': ModuleNotFoundError"),
        ("examples.word_report:DOCUMENTS", "is a dict, not a Workflow"),
    ],
)
def test_a_bad_workflow_target_is_one_line_and_status_2(
    target: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["graph", target]) == 2
    assert message in one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('raise RuntimeError("boom")\n', "RuntimeError: boom"),
        ("def (:\n", "SyntaxError: invalid syntax"),
        (
            "import blazen_trio as bz\nworkflow = bz.Workflow('empty', [])\n",
            "ValidationError: 1 problem(s): - ",  # its list of problems, on the same line
        ),
    ],
)
def test_a_target_module_that_fails_to_import_is_one_line_and_status_2(
    source: str, message: str, write_target: WriteTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    write_target("broken_target", source)
    assert cli(["run", "broken_target:workflow"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("blazen-trio: cannot load 'broken_target:workflow': ")
    assert message in line


def test_input_that_is_not_json_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli(["run", TARGET, "--input", "{bad"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert one_line(captured.err).startswith("blazen-trio: argument --input: not valid JSON")


def test_input_with_resume_is_refused_in_one_line_with_status_2(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.snapshot"
    path.write_bytes(trio.run(_paused_snapshot).to_bytes())
    assert cli(["run", TARGET, "--input", "{}", "--resume", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "not allowed with argument --input" in one_line(captured.err)


def test_a_failed_run_is_one_line_naming_the_cause_and_status_1(
    write_target: WriteTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    write_target("failing_target", FAILS)
    assert cli(["run", "failing_target:workflow"]) == 1
    assert one_line(capsys.readouterr().err) == (
        "blazen-trio: StepFailed: step 'fail' failed: ValueError: no such document"
    )


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--version"]) == 0
    assert capsys.readouterr().out == f"blazen-trio {bz.__version__}\n"


def test_ctrl_c_inside_a_step_is_one_line_and_status_130(
    write_target: WriteTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    write_target("interrupted_target", INTERRUPTED_IN_A_STEP)
    assert cli(["run", "interrupted_target:workflow"]) == 130
    assert one_line(capsys.readouterr().err) == "blazen-trio: interrupted"


def test_ctrl_c_is_one_line_and_status_130(write_target: WriteTarget) -> None:
    cwd = write_target("hanging_target", HANGS)
    process = subprocess.Popen(
        [*COMMAND, "run", "hanging_target:workflow"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell running us in the background may ignore SIGINT, and children inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    assert json.loads(process.stdout.readline()) == {"Began": {}}  # the run is waiting now
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert (process.returncode, err) == (130, "blazen-trio: interrupted\n")


def test_a_reader_that_goes_away_ends_the_run_quietly_with_status_141(
    write_target: WriteTarget,
) -> None:
    cwd = write_target("hanging_target", HANGS)
    read, write = os.pipe()
    os.close(read)  # as `| head` does once it has its lines: every write fails with EPIPE
    try:
        done = subprocess.run(
            [*COMMAND, "run", "hanging_target:workflow"],
            cwd=cwd,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")
