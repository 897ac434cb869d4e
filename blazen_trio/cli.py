"""The `blazen-trio` command: run workflows (durably, on a SQLite store), look inside them.

blazen-trio run examples.word_report:workflow --input '{"documents": ["trio"]}'
blazen-trio run examples.word_report:workflow --store runs.db --run-id r1   # durable
blazen-trio runs list --store runs.db
blazen-trio runs recover examples.word_report:workflow --store runs.db       # after a crash
blazen-trio graph examples.word_report:workflow
blazen-trio inspect run.snapshot
blazen-trio worker --dsn postgresql://... examples.word_report:workflow   # scale out
blazen-trio runs list --dsn postgresql://...                               # a PostgreSQL store

A durable run interrupted with Ctrl-C is paused at its next commit and kept in its store; the
command prints how to resume it.

Every error is one line on stderr. Exit status: 0 done, 1 the run (or reading a snapshot)
failed, 2 a usage error (bad arguments, a target that does not load), 130 interrupted
(Ctrl-C), 141 stdout closed early (`| head`: the run is aborted, nothing is printed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import attrs
import msgspec
import trio

from . import __version__
from ._codec import WorkflowSnapshot, decode_value, resolve_type_path
from ._errors import RunHeld, RunSuspended, SnapshotError, WorkflowError
from ._queue import DEFAULT_LEASE
from ._records import RunStatus
from ._sqlite import SqliteCheckpointStore
from ._stores import FINISHED, CheckpointStore
from ._worker import DEFAULT_DRAIN_TIMEOUT, DEFAULT_POLL_INTERVAL, Worker
from ._workflow import Workflow

try:
    from . import _postgres
except ImportError:  # the postgres extra is not installed: --dsn says so
    _postgres = None  # type: ignore[assignment]  # checked where --dsn is used

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


async def _stream(
    workflow: Workflow,
    value: Any,
    snapshot: WorkflowSnapshot | None,
    run_id: str | None = None,
    fork: bool = False,
) -> Any:
    """Run, printing the stream as JSON lines; Ctrl-C pauses a durable run and keeps it."""
    async with workflow.start(
        None if snapshot else value, resume=snapshot, run_id=run_id, fork=fork
    ) as handler:
        if workflow.checkpoint_store is None:
            await _print_stream(handler)
            return (await handler.result()).result
        with trio.open_signal_receiver(signal.SIGINT) as interrupts:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pause_on_interrupt, interrupts, handler, nursery.cancel_scope)
                nursery.start_soon(_leave_when_waiting, handler, nursery.cancel_scope)
                await _print_stream(handler)
                nursery.cancel_scope.cancel()
        if handler.status is RunStatus.PAUSED:
            raise _Paused(handler.run_id)
        if handler.status is RunStatus.WAITING_FOR_INPUT:  # kept in the store, to answer
            requests = [request.request_id for request in handler.pending_input_requests]
            return _Suspended(handler.run_id, requests)
        return (await handler.result()).result


async def _print_stream(handler: Any) -> None:
    async for event in handler.stream_events():
        print(msgspec.json.encode({type(event).__name__: event}).decode(), flush=True)


async def _pause_on_interrupt(interrupts: Any, handler: Any, printing: trio.CancelScope) -> None:
    async for _ in interrupts:
        await handler.pause()  # the steps running finish and commit; nothing more starts
        printing.cancel()
        return


async def _leave_when_waiting(handler: Any, printing: trio.CancelScope) -> None:
    """A durable run with nothing to do but wait for answers is let go, kept in its store."""
    if await handler.wait_for_status(RunStatus.WAITING_FOR_INPUT) is RunStatus.WAITING_FOR_INPUT:
        printing.cancel()


@attrs.frozen
class _Suspended:
    """A durable run left waiting for answers (printed, exit status 0)."""

    run_id: str
    requests: list[str]


class _Paused(Exception):
    """Ctrl-C paused a durable run, kept in its store (exit status 130)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id


def _postgres_store(dsn: str) -> Any:
    if _postgres is None:
        raise _UsageError(
            "--dsn needs psycopg 3 and psycopg-pool: pip install 'blazen_trio[postgres]'"
        )
    return _postgres.PostgresCheckpointStore(dsn)


def _with_store(args: argparse.Namespace, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """`work(store)` in a Trio run, with the `--store` file (or the `--dsn` database) open."""

    async def main() -> Any:
        if args.dsn is not None:
            opened = _postgres_store(args.dsn)
        else:
            opened = SqliteCheckpointStore(args.store, durability=args.durability)
        async with opened as store:
            return await work(store)

    return trio.run(main)


def _store_hint(args: argparse.Namespace) -> str:
    """The store option to repeat in a suggested command."""
    return f"--dsn '{args.dsn}'" if args.dsn is not None else f"--store {args.store}"


def _command_worker(args: argparse.Namespace) -> int:
    """Claim and drive runs until SIGTERM or Ctrl-C, then pause them and let go (exit 0);
    steps still running after `--drain-timeout` are cancelled, to run again elsewhere."""
    workflows = [_load_workflow(target) for target in args.workflows]
    store = _postgres_store(args.dsn)
    try:  # checked before the server is asked anything
        worker = Worker(
            store,
            workflows,
            concurrency=args.concurrency,
            lease=args.lease,
            poll_interval=args.poll_interval,
            drain_timeout=args.drain_timeout,
        )
    except ValueError as exc:
        raise _UsageError(str(exc)) from None

    async def main() -> None:
        async with store:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    await nursery.start(worker.serve)
                    names = [workflow.name for workflow in workflows]
                    print(json.dumps({"worker": worker.name, "serving": names}), flush=True)
                    async for _ in signals:
                        await worker.shutdown()
                        break
            stats = worker.statistics()
            print(json.dumps({"worker": worker.name, "stopped": True, "claimed": stats.claimed}))

    trio.run(main)
    return 0


def _command_run(args: argparse.Namespace) -> int:
    workflow = _load_workflow(args.workflow)
    snapshot = _read_snapshot(args.resume) if args.resume else None
    if args.store is None and args.dsn is None:
        if args.run_id is not None:
            raise _UsageError("--run-id names a durable run: give --store (or --dsn) too")
        result = trio.run(_stream, workflow, args.input, snapshot)
    else:

        async def durable(store: CheckpointStore) -> Any:
            durable_workflow = workflow.with_checkpoint_store(store)
            return await _stream(durable_workflow, args.input, snapshot, args.run_id)

        return _print_outcome(args, durable)
    print(json.dumps({"result": result}, default=repr))
    return 0


def _info(info: Any) -> dict[str, Any]:
    return {
        "run_id": info.run_id,
        "workflow": info.workflow_name,
        "status": str(info.status),
        "seq": info.seq,
        "created_at": _when(info.created_at),
        "updated_at": _when(info.updated_at),
    }


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


def _command_runs_list(args: argparse.Namespace) -> int:
    async def work(store: CheckpointStore) -> list[Any]:
        return await store.list(workflow=args.workflow, status=args.status)

    for info in _with_store(args, work):
        print(json.dumps(_info(info)))
    return 0


async def _stored(store: CheckpointStore, run_id: str, at: int | None = None) -> Any:
    snapshot = await store.load(run_id, at=at)
    if snapshot is None:
        raise _UsageError(f"no run {run_id!r} in {store!r}")
    return snapshot


def _command_runs_show(args: argparse.Namespace) -> int:
    async def work(store: CheckpointStore) -> WorkflowSnapshot:
        snapshot: WorkflowSnapshot = await _stored(store, args.run_id)
        return snapshot

    snapshot = _with_store(args, work)
    summary = _summary(snapshot)
    summary["journal_seq"] = snapshot.journal_seq
    if snapshot.result is not None:
        summary["result"] = decode_value(snapshot.result.payload.get("result"), key="result")
    if snapshot.error is not None:
        summary["error"] = snapshot.error
    print(json.dumps(summary, indent=2, default=repr))
    return 0


def _command_runs_history(args: argparse.Namespace) -> int:
    async def work(store: CheckpointStore) -> list[Any]:
        await _stored(store, args.run_id)
        return await store.history(args.run_id)

    for checkpoint in _with_store(args, work):
        print(
            json.dumps({"seq": checkpoint.seq, "step": checkpoint.step, "at": _when(checkpoint.at)})
        )
    return 0


def _command_runs_resume(args: argparse.Namespace) -> int:
    """Go on with one stored run: paused, or left running by a crash."""
    workflow = _load_workflow(args.workflow)

    async def work(store: CheckpointStore) -> Any:
        snapshot = await _stored(store, args.run_id)
        if snapshot.status in FINISHED:
            raise _UsageError(f"run {args.run_id!r} already ended ({snapshot.status})")
        return await _stream(workflow.with_checkpoint_store(store), None, snapshot)

    return _print_outcome(args, work)


def _command_runs_fork(args: argparse.Namespace) -> int:
    """Go on from an earlier record of a stored run, under a new run id."""
    workflow = _load_workflow(args.workflow)

    async def work(store: CheckpointStore) -> Any:
        snapshot = await _stored(store, args.run_id, args.at)
        return await _stream(
            workflow.with_checkpoint_store(store), None, snapshot, args.new_run_id, fork=True
        )

    return _print_outcome(args, work)


def _print_outcome(args: argparse.Namespace, work: Callable[[Any], Awaitable[Any]]) -> int:
    try:
        result = _with_store(args, work)
    except _Paused as paused:
        hint = f"blazen-trio runs resume {paused.run_id} {args.workflow} {_store_hint(args)}"
        return _fail(f"paused run {paused.run_id}; go on with: {hint}", EXIT_INTERRUPTED)
    if isinstance(result, _Suspended):
        print(json.dumps({"suspended": result.run_id, "input_requests": result.requests}))
        then = f"blazen-trio runs recover {args.workflow} {_store_hint(args)}"
        answer = f"blazen-trio runs respond {result.run_id} REQUEST_ID --response JSON"
        _say(f"run {result.run_id} waits for input; answer with: {answer}, then: {then}")
        return 0
    print(json.dumps({"result": result}, default=repr))
    return 0


# Outcomes of `runs recover` that are no failure: the run is kept as it is, for later.
_LEFT_AS_IS: dict[type[WorkflowError], str] = {RunSuspended: "suspended", RunHeld: "held"}


def _command_runs_recover(args: argparse.Namespace) -> int:
    """Go on with every unfinished run of a workflow (after a crash); one line per run. Over
    PostgreSQL, runs that workers hold are left to them (`"held"`)."""
    workflow = _load_workflow(args.workflow)

    async def work(store: CheckpointStore) -> dict[str, Any]:
        return await workflow.recover(store)

    status = 0
    for run_id, outcome in _with_store(args, work).items():
        if isinstance(outcome, WorkflowError):
            kind = _LEFT_AS_IS.get(type(outcome), "failed")
            status = status if kind in _LEFT_AS_IS.values() else EXIT_FAILED
            print(json.dumps({"run_id": run_id, kind: str(outcome)}))
        else:
            print(json.dumps({"run_id": run_id, "result": outcome.result}, default=repr))
    return status


def _command_runs_respond(args: argparse.Namespace) -> int:
    async def work(store: CheckpointStore) -> None:
        await _stored(store, args.run_id)
        await store.respond(args.run_id, args.request_id, args.response)

    _with_store(args, work)
    return 0


def _command_runs_prune(args: argparse.Namespace) -> int:
    async def work(store: CheckpointStore) -> int:
        age = datetime.timedelta(days=args.older_than_days)
        return await store.prune(older_than=age, statuses=args.status or FINISHED)

    print(json.dumps({"pruned": _with_store(args, work)}))
    return 0


def _command_graph(args: argparse.Namespace) -> int:
    print(_load_workflow(args.workflow).to_mermaid(), end="")
    return 0


def _command_inspect(args: argparse.Namespace) -> int:
    snapshot = _read_snapshot(args.snapshot)
    snapshot.validate()
    print(json.dumps(_summary(snapshot), indent=2))
    return 0


def _summary(snapshot: WorkflowSnapshot) -> dict[str, Any]:
    """What a snapshot holds, for people: counts and names rather than payloads."""
    pending: dict[str, int] = {}
    for item in snapshot.pending_events:
        pending[item.event.type_id] = pending.get(item.event.type_id, 0) + 1
    return {
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


def _store_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    where = parser.add_mutually_exclusive_group(required=required)
    where.add_argument("--store", type=Path, help="the SQLite checkpoint store (a file)")
    where.add_argument("--dsn", help="a PostgreSQL checkpoint store (needs the postgres extra)")
    parser.add_argument(
        "--durability",
        choices=["full", "normal"],
        default="full",
        help="full survives power loss, normal only crashes of the process",
    )


def _runs_commands(commands: Any) -> None:
    runs = commands.add_parser("runs", help="durable runs kept in a store").add_subparsers(
        dest="runs_command", required=True
    )
    listing = runs.add_parser("list", help="the stored runs, one JSON line each")
    listing.add_argument("--workflow", help="only runs of this workflow (its name)")
    listing.add_argument("--status", type=RunStatus, action="append", help="only these")
    listing.set_defaults(handle=_command_runs_list)
    for name, handle, what in (
        ("show", _command_runs_show, "what a stored run holds"),
        ("history", _command_runs_history, "its journal: one line per committed step"),
    ):
        command = runs.add_parser(name, help=what)
        command.add_argument("run_id")
        command.set_defaults(handle=handle)
        _store_options(command)
    resume = runs.add_parser("resume", help="go on with a paused (or crashed) run")
    resume.add_argument("run_id")
    resume.add_argument("workflow", help="MODULE:ATTRIBUTE of its Workflow")
    resume.set_defaults(handle=_command_runs_resume)
    fork = runs.add_parser("fork", help="go on from an earlier record under a new run id")
    fork.add_argument("run_id")
    fork.add_argument("workflow", help="MODULE:ATTRIBUTE of its Workflow")
    fork.add_argument("--at", type=int, required=True, help="the journal record to go on from")
    fork.add_argument("--new-run-id", help="the fork's run id (default: a fresh one)")
    fork.set_defaults(handle=_command_runs_fork)
    recover = runs.add_parser("recover", help="go on with every unfinished run of a workflow")
    recover.add_argument("workflow", help="MODULE:ATTRIBUTE of a Workflow")
    recover.set_defaults(handle=_command_runs_recover)
    respond = runs.add_parser("respond", help="answer an input request of a stored run")
    respond.add_argument("run_id")
    respond.add_argument("request_id")
    respond.add_argument("--response", type=_json, required=True, help="the answer, as JSON")
    respond.set_defaults(handle=_command_runs_respond)
    prune = runs.add_parser("prune", help="delete finished runs not updated for a while")
    prune.add_argument("--older-than-days", type=float, required=True)
    prune.add_argument("--status", type=RunStatus, action="append", help="default: finished")
    prune.set_defaults(handle=_command_runs_prune)
    for command in (listing, resume, fork, recover, respond, prune):
        _store_options(command)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="blazen-trio", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"blazen-trio {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a workflow, printing its stream as JSON lines")
    run.add_argument("workflow", help="MODULE:ATTRIBUTE of a Workflow")
    start = run.add_mutually_exclusive_group()  # a resumed run goes on from its snapshot
    start.add_argument("--input", type=_json, help="the start value, as JSON")
    start.add_argument("--resume", type=Path, help="resume this snapshot file instead")
    _store_options(run, required=False)
    run.add_argument("--run-id", help="the durable run's id (an existing one is attached to)")
    run.set_defaults(handle=_command_run)
    _runs_commands(commands)
    graph = commands.add_parser("graph", help="print a workflow's graph as Mermaid")
    graph.add_argument("workflow", help="MODULE:ATTRIBUTE of a Workflow")
    graph.set_defaults(handle=_command_graph)
    inspect = commands.add_parser("inspect", help="summarize a snapshot file (JSON or msgpack)")
    inspect.add_argument("snapshot", type=Path)
    inspect.set_defaults(handle=_command_inspect)
    worker = commands.add_parser("worker", help="claim and drive runs from a PostgreSQL store")
    worker.add_argument("workflows", nargs="+", metavar="MODULE:ATTRIBUTE", help="Workflows")
    worker.add_argument("--dsn", required=True, help="the PostgreSQL store (a DSN)")
    worker.add_argument("--concurrency", type=int, default=10, help="runs driven at once")
    worker.add_argument("--lease", type=float, default=DEFAULT_LEASE, help="lease seconds")
    worker.add_argument(
        "--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL, help="poll seconds"
    )
    worker.add_argument(
        "--drain-timeout",
        type=float,
        default=DEFAULT_DRAIN_TIMEOUT,
        help="on SIGTERM, seconds running steps may take to finish before they are cancelled",
    )
    worker.set_defaults(handle=_command_worker)
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
        if _broken_pipe(exc):  # from a task: `worker` printing while it serves
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        if not _interrupted(exc):
            raise
        return _fail("interrupted", EXIT_INTERRUPTED)
    return status


def _fail(message: str, status: int) -> int:
    """Say what went wrong in one line on stderr; returns `status`."""
    _say(message)
    return status


def _say(message: str) -> None:
    """One line for people on stderr (stdout carries JSON for programs)."""
    print(f"blazen-trio: {' '.join(message.split())}", file=sys.stderr)


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C: in the main task, or inside a step (then it leaves the run in a group)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(KeyboardInterrupt) is not None
    return isinstance(exc, KeyboardInterrupt)


def _broken_pipe(exc: BaseException) -> bool:
    """stdout closed early, seen inside a task's exception group."""
    return isinstance(exc, BaseExceptionGroup) and exc.subgroup(BrokenPipeError) is not None


def _silence_stdout() -> None:
    """Point stdout at devnull, so flushing it at exit cannot raise again (Python's docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
