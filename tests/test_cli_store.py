"""The `blazen-trio` command over a SQLite store: durable runs, `runs ...`, Ctrl-C pauses."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest
import trio

from blazen_trio.cli import main

TARGET = "examples.word_report:workflow"
ROOT = pathlib.Path(__file__).parent.parent

ASKS = """
import blazen_trio as bz


@bz.step
async def ask(ev: bz.StartEvent) -> bz.InputRequestEvent:
    return bz.InputRequestEvent(prompt="ship?", request_id="ship")


@bz.step
async def shipped(ev: bz.InputResponseEvent) -> bz.StopEvent:
    return bz.StopEvent(result=f"answer: {ev.response}")


workflow = bz.Workflow("asks", [ask, shipped])
"""

SLOW = """
import trio
import blazen_trio as bz


class Tick(bz.Event):
    n: int


@bz.step
async def tick(ctx: bz.Context, ev: bz.StartEvent | Tick) -> Tick | bz.StopEvent:
    n = 0 if isinstance(ev, bz.StartEvent) else ev.n + 1
    print(f"tick {n}", flush=True)
    await trio.sleep(0.05)
    return bz.StopEvent(result=n) if n == 40 else Tick(n=n)


workflow = bz.Workflow("slow", [tick])
"""


def run(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[Any], str]:
    """Exit status, stdout's JSON lines, stderr."""
    status = main(argv)
    captured = capsys.readouterr()
    return status, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_a_durable_run_then_list_show_history_fork(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "runs.db")
    args = ["--store", db]
    status, lines, _ = run(
        ["run", TARGET, "--input", '{"documents": ["trio"]}', *args, "--run-id", "r1"], capsys
    )
    assert status == 0
    result = lines[-1]["result"]
    assert result["documents"] == 1
    # Starting the same run id again attaches: the stored result, no second run.
    status, lines, _ = run(
        ["run", TARGET, "--input", '{"documents": ["trio"]}', *args, "--run-id", "r1"], capsys
    )
    assert (status, lines[-1]["result"]) == (0, result)

    status, lines, _ = run(["runs", "list", *args], capsys)
    assert [(line["run_id"], line["status"]) for line in lines] == [("r1", "completed")]
    assert main(["runs", "show", "r1", *args]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["status"], shown["result"]) == ("completed", result)
    status, history, _ = run(["runs", "history", "r1", *args], capsys)
    assert [entry["seq"] for entry in history] == list(range(1, len(history) + 1))
    assert history[0]["step"] == "plan"  # the start event is in the run's first base
    status, lines, _ = run(
        ["runs", "fork", "r1", TARGET, "--at", "2", "--new-run-id", "r2", *args], capsys
    )
    assert (status, lines[-1]["result"]) == (0, result)
    status, lines, _ = run(["runs", "list", *args], capsys)
    assert {line["run_id"] for line in lines} == {"r1", "r2"}


def test_a_run_waiting_for_input_is_kept_answered_and_recovered(
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "asks.py").write_text(ASKS)
    db = str(tmp_path / "runs.db")
    status, lines, err = run(["run", "asks:workflow", "--store", db, "--run-id", "a1"], capsys)
    assert status == 0
    assert lines[-1] == {"suspended": "a1", "input_requests": ["ship"]}
    assert "runs respond a1" in err
    status, _, err = run(
        ["runs", "respond", "a1", "nope", "--response", "1", "--store", db], capsys
    )
    assert status == 1
    assert "no outstanding input request with id 'nope'" in err
    status, _, _ = run(
        ["runs", "respond", "a1", "ship", "--response", '"yes"', "--store", db], capsys
    )
    assert status == 0
    status, lines, _ = run(["runs", "recover", "asks:workflow", "--store", db], capsys)
    assert (status, lines) == (0, [{"run_id": "a1", "result": "answer: yes"}])
    sys.modules.pop("asks", None)


def test_bad_store_arguments_are_one_line_errors(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    status, _, err = run(["runs", "list", "--store", str(garbage)], capsys)
    assert status == 1
    assert len(err.splitlines()) == 1
    assert str(garbage) in err
    db = str(tmp_path / "runs.db")
    status, _, err = run(["runs", "show", "nobody", "--store", db], capsys)
    assert (status, len(err.splitlines())) == (2, 1)
    assert "no run 'nobody'" in err
    status, _, err = run(["run", TARGET, "--run-id", "x"], capsys)
    assert status == 2
    assert "--store" in err


async def test_ctrl_c_pauses_a_durable_run_and_says_how_to_resume(tmp_path: pathlib.Path) -> None:
    (tmp_path / "slow.py").write_text(SLOW)
    db = tmp_path / "runs.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    command = [sys.executable, "-m", "blazen_trio", "run", "slow:workflow", "--store", str(db)]
    process = await trio.lowlevel.open_process(
        [*command, "--run-id", "s1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert process.stdout is not None
    assert process.stderr is not None
    seen = b""
    with trio.fail_after(30):
        while b"tick 3" not in seen:
            seen += await process.stdout.receive_some()
        process.send_signal(signal.SIGINT)
        status = await process.wait()
    err = (await process.stderr.receive_some()).decode()
    assert status == 130
    assert "paused run s1" in err
    assert "blazen-trio runs resume s1 slow:workflow" in err
    done = await trio.run_process(
        [
            sys.executable,
            "-m",
            "blazen_trio",
            "runs",
            "resume",
            "s1",
            "slow:workflow",
            "--store",
            str(db),
        ],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
    )
    ticks = [line for line in done.stdout.decode().splitlines() if line.startswith("tick")]
    assert json.loads(done.stdout.decode().splitlines()[-1]) == {"result": 40}
    assert ticks
    assert ticks[0] != "tick 0"
