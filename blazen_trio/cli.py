"""The `blazen-trio` command: run a workflow, draw its graph, or look inside a snapshot.

blazen-trio run examples.word_report:workflow --input '{"documents": ["trio"]}'
blazen-trio graph examples.word_report:workflow
blazen-trio inspect run.snapshot

Every error is one line on stderr. Exit status: 0 done, 1 the run (or reading a snapshot)
failed, 2 a usage error (bad arguments, a target that does not load), 130 interrupted
(Ctrl-C), 141 stdout closed early (`| head`: the run is aborted, nothing is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import msgspec
import trio

from . import __version__
from ._codec import WorkflowSnapshot, resolve_type_path
from ._errors import SnapshotError, WorkflowError
from ._workflow import Workflow

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `cat` in `cat big | head`


class _UsageError(Exception):
    """The command line asks for something that cannot be done (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors raised as one-line `_UsageError`s instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _json(text: str) -> Any:
    """`--input`'s value, refused as a usage error when it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None


def _load_workflow(target: str) -> Workflow:
    """`package.module:attribute` -> the Workflow it names (the current directory importable)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise _UsageError(f"expected MODULE:ATTRIBUTE, got {target!r}")
    sys.path.insert(0, str(Path.cwd()))
    try:
        found = resolve_type_path(target)
    except Exception as exc:  # whatever importing the user's module raised, SyntaxError too
        raise _UsageError(f"cannot load {target!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(found, Workflow):
        raise _UsageError(f"{target!r} is a {type(found).__name__}, not a Workflow")
    return found


def _read_snapshot(path: Path) -> WorkflowSnapshot:
    data = path.read_bytes()
    if data[:1] == b"{":
        return WorkflowSnapshot.from_json(data)
    return WorkflowSnapshot.from_bytes(data)


async def _run(workflow: Workflow, value: Any, snapshot: WorkflowSnapshot | None) -> Any:
    async with workflow.start(None if snapshot else value, resume=snapshot) as handler:
        async for event in handler.stream_events():
            print(msgspec.json.encode({type(event).__name__: event}).decode(), flush=True)
        return (await handler.result()).result


def _command_run(args: argparse.Namespace) -> int:
    workflow = _load_workflow(args.workflow)
    snapshot = _read_snapshot(args.resume) if args.resume else None
    result = trio.run(_run, workflow, args.input, snapshot)
    print(json.dumps({"result": result}, default=repr))
    return 0


def _command_graph(args: argparse.Namespace) -> int:
    print(_load_workflow(args.workflow).to_mermaid(), end="")
    return 0


def _command_inspect(args: argparse.Namespace) -> int:
    snapshot = _read_snapshot(args.snapshot)
    snapshot.validate()
    pending: dict[str, int] = {}
    for item in snapshot.pending_events:
        pending[item.event.type_id] = pending.get(item.event.type_id, 0) + 1
    summary = {
        "workflow": snapshot.workflow_name,
        "run_id": snapshot.run_id,
        "version": snapshot.version,
        "created_at": snapshot.created_at.isoformat(),
        "status": snapshot.status,
        "state_keys": sorted(snapshot.state),
        "pending_events": pending,
        "collect_buffers": {step: len(buf) for step, buf in snapshot.collect_buffers.items()},
        "input_requests": [request.payload for request in snapshot.input_requests],
        "usage": msgspec.to_builtins(snapshot.usage),
        "history_entries": len(snapshot.history),
        "session_refs": sorted(snapshot.session_refs),
        "active_time": snapshot.active_time,
    }
    print(json.dumps(summary, indent=2))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="blazen-trio", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"blazen-trio {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a workflow, printing its stream as JSON lines")
    run.add_argument("workflow", help="MODULE:ATTRIBUTE of a Workflow")
    start = run.add_mutually_exclusive_group()  # a resumed run goes on from its snapshot
    start.add_argument("--input", type=_json, help="the start value, as JSON")
    start.add_argument("--resume", type=Path, help="resume this snapshot file instead")
    run.set_defaults(handle=_command_run)
    graph = commands.add_parser("graph", help="print a workflow's graph as Mermaid")
    graph.add_argument("workflow", help="MODULE:ATTRIBUTE of a Workflow")
    graph.set_defaults(handle=_command_graph)
    inspect = commands.add_parser("inspect", help="summarize a snapshot file (JSON or msgpack)")
    inspect.add_argument("snapshot", type=Path)
    inspect.set_defaults(handle=_command_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `blazen-trio` command; returns the exit status (listed above)."""
    try:
        args = _parser().parse_args(argv)
        status: int = args.handle(args)
        sys.stdout.flush()  # a reader gone away shows here, not as a traceback at exit
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except _UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (WorkflowError, OSError) as exc:
        kind = "snapshot" if isinstance(exc, SnapshotError) else type(exc).__name__
        return _fail(f"{kind}: {exc}", EXIT_FAILED)
    except (KeyboardInterrupt, BaseExceptionGroup) as exc:
        if not _interrupted(exc):
            raise
        return _fail("interrupted", EXIT_INTERRUPTED)
    return status


def _fail(message: str, status: int) -> int:
    """Say what went wrong in one line on stderr; returns `status`."""
    print(f"blazen-trio: {' '.join(message.split())}", file=sys.stderr)
    return status


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C: in the main task, or inside a step (then it leaves the run in a group)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(KeyboardInterrupt) is not None
    return isinstance(exc, KeyboardInterrupt)


def _silence_stdout() -> None:
    """Point stdout at devnull, so flushing it at exit cannot raise again (Python's docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
