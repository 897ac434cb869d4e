"""The `blazen-trio` command over a store, SQLite (`--store`) and PostgreSQL (`--dsn`, a real
server: tests/_postgres.py) alike: durable runs, `runs ...`, Ctrl-C pauses; `worker`'s bad
arguments."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import trio

import blazen_trio as bz
from blazen_trio.cli import main
from blazen_trio.postgres import PostgresCheckpointStore

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


@pytest.fixture(params=["sqlite", "postgres"])
def store_args(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> list[str]:
    """The option naming the store, for every command that takes one."""
    if request.param == "sqlite":
        return ["--store", str(tmp_path / "runs.db")]
    return ["--dsn", request.getfixturevalue("postgres_dsn")]


def run(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[Any], str]:
    """Exit status, stdout's JSON lines, stderr."""
    status = main(argv)
    captured = capsys.readouterr()
    return status, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_a_durable_run_then_list_show_history_fork_prune(
    store_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = store_args
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
    status, lines, _ = run(["runs", "prune", "--older-than-days", "0", *args], capsys)
    assert (status, lines) == (0, [{"pruned": 2}])
    assert run(["runs", "list", *args], capsys)[:2] == (0, [])


@pytest.fixture
def asks_module(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`asks:workflow`, importable from the current directory for the test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "asks.py").write_text(ASKS)
    yield "asks:workflow"
    sys.modules.pop("asks", None)


def test_a_run_waiting_for_input_is_kept_answered_and_recovered(
    asks_module: str, store_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    status, lines, err = run(["run", asks_module, *store_args, "--run-id", "a1"], capsys)
    assert status == 0
    assert lines[-1] == {"suspended": "a1", "input_requests": ["ship"]}
    assert "runs respond a1" in err
    status, _, err = run(["runs", "respond", "a1", "nope", "--response", "1", *store_args], capsys)
    assert status == 1
    assert "no outstanding input request with id 'nope'" in err
    status, _, _ = run(
        ["runs", "respond", "a1", "ship", "--response", '"yes"', *store_args], capsys
    )
    assert status == 0
    status, lines, _ = run(["runs", "recover", asks_module, *store_args], capsys)
    assert (status, lines) == (0, [{"run_id": "a1", "result": "answer: yes"}])


def test_recover_over_postgres_leaves_runs_that_workers_hold_to_them(
    asks_module: str, postgres_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:

    async def held_by_a_worker() -> None:
        async with PostgresCheckpointStore(postgres_dsn) as store:
            await bz.WorkflowClient(store).submit("asks", run_id="h")
            assert await store.claim("a-worker", ["asks"], 1, lease=300) != []

    trio.run(held_by_a_worker)
    status, lines, _ = run(["runs", "recover", asks_module, "--dsn", postgres_dsn], capsys)
    assert status == 0
    assert lines == [{"run_id": "h", "held": str(bz.RunHeld("h"))}]


def test_bad_store_arguments_are_one_line_errors(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    status, _, err = run(["runs", "list", "--store", str(garbage)], capsys)
    assert status == 1
    assert len(err.splitlines()) == 1
    assert str(garbage) in err
    status, _, err = run(["run", TARGET, "--run-id", "x"], capsys)
    assert status == 2
    assert "--store" in err


@pytest.mark.parametrize("command", ["show", "history"])
def test_an_unknown_run_is_a_one_line_usage_error(
    command: str, store_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(["runs", command, "nobody", *store_args], capsys)
    assert (status, len(err.splitlines())) == (2, 1)
    assert "no run 'nobody'" in err


async def test_ctrl_c_pauses_a_durable_run_and_says_how_to_resume(
    tmp_path: pathlib.Path, store_args: list[str]
) -> None:
    (tmp_path / "slow.py").write_text(SLOW)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    command = [sys.executable, "-m", "blazen_trio", "run", "slow:workflow", *store_args]
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
        [sys.executable, "-m", "blazen_trio", "runs", "resume", "s1", "slow:workflow", *store_args],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
    )
    ticks = [line for line in done.stdout.decode().splitlines() if line.startswith("tick")]
    assert json.loads(done.stdout.decode().splitlines()[-1]) == {"result": 40}
    assert ticks
    assert ticks[0] != "tick 0"


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["nomodule:workflow"], 2, "cannot load 'nomodule:workflow': ModuleNotFoundError"),
        ([f"{TARGET}x"], 2, f"cannot load '{TARGET}x': AttributeError"),
        (["examples.word_report:Progress"], 2, "is a _EventMeta, not a Workflow"),
        ([TARGET, "--concurrency", "0"], 2, "concurrency must be an int >= 1, got 0"),
        ([TARGET, "--drain-timeout", "-1"], 2, "drain_timeout must be >= 0 seconds, got -1"),
        ([TARGET, "--dsn", "nonsense"], 1, 'not a PostgreSQL DSN: missing "=" after "nonsense"'),
        (["--dsn", "host=localhost"], 2, "the following arguments are required: MODULE"),
    ],
)
def test_a_worker_given_bad_arguments_says_so_in_one_line(
    argv: list[str], status: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = [] if "--dsn" in argv else ["--dsn", "host=localhost"]  # never reached: refused first
    assert main(["worker", *argv, *dsn]) == status
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert message in captured.err
