"""The `blazen-trio` command: run a workflow, draw its graph, or look inside a snapshot.

blazen-trio run examples.word_report:workflow --input '{"documents": ["trio"]}'
blazen-trio graph examples.word_report:workflow
blazen-trio inspect run.snapshot
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import trio

from ._codec import WorkflowSnapshot, resolve_type_path
from ._errors import SnapshotError, WorkflowError
from ._workflow import Workflow


def _load_workflow(target: str) -> Workflow:
    """`package.module:attribute` -> the Workflow it names (the current directory importable)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"blazen-trio: expected MODULE:ATTRIBUTE, got {target!r}")
    sys.path.insert(0, str(Path.cwd()))
    try:
        found = resolve_type_path(target)
    except (ImportError, AttributeError, ValueError) as exc:
        raise SystemExit(f"blazen-trio: cannot load {target!r}: {exc}") from None
    if not isinstance(found, Workflow):
        raise SystemExit(f"blazen-trio: {target!r} is a {type(found).__name__}, not a Workflow")
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
    value = json.loads(args.input) if args.input is not None else None
    result = trio.run(_run, workflow, value, snapshot)
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
    parser = argparse.ArgumentParser(prog="blazen-trio", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a workflow, printing its stream as JSON lines")
    run.add_argument("workflow", help="MODULE:ATTRIBUTE of a Workflow")
    run.add_argument("--input", help="the start value, as JSON")
    run.add_argument("--resume", type=Path, help="resume this snapshot file instead")
    run.set_defaults(handle=_command_run)
    graph = commands.add_parser("graph", help="print a workflow's graph as Mermaid")
    graph.add_argument("workflow", help="MODULE:ATTRIBUTE of a Workflow")
    graph.set_defaults(handle=_command_graph)
    inspect = commands.add_parser("inspect", help="summarize a snapshot file (JSON or msgpack)")
    inspect.add_argument("snapshot", type=Path)
    inspect.set_defaults(handle=_command_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `blazen-trio` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        status: int = args.handle(args)
    except (WorkflowError, OSError) as exc:
        kind = "snapshot" if isinstance(exc, SnapshotError) else type(exc).__name__
        print(f"blazen-trio: {kind}: {exc}", file=sys.stderr)
        return 1
    return status
