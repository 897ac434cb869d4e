"""The public surface: every name exported once, named as users import it, documented."""

from __future__ import annotations

import ast
import inspect
import pathlib
import pickle
from typing import Any

import pytest
import trio

import blazen_trio
import blazen_trio as bz
import blazen_trio.postgres
import blazen_trio.testing

# The names ../shared/DESIGN.md promises (the parts built so far).
CONTRACT_NAMES = {
    "Event",
    "StartEvent",
    "StopEvent",
    "InputRequestEvent",
    "InputResponseEvent",
    "UsageEvent",
    "StepStarted",
    "StepCompleted",
    "StepErrored",
    "StreamLagged",
    "DynamicEvent",
    "step",
    "Workflow",
    "WorkflowResult",
    "WorkflowHandler",
    "WorkflowSnapshot",
    "Context",
    "RetryPolicy",
    "RefLifetime",
    "SessionPausePolicy",
    "SessionRef",
    "WorkflowError",
    "ValidationError",
    "StepFailed",
    "StepTimeout",
    "WorkflowTimeout",
    "NoHandler",
    "WorkflowAborted",
    "SnapshotError",
    "SessionRefError",
    "SessionRefsNotSerializable",
    "UnknownInputRequest",
    "RunFinished",
    "CheckpointStore",
    "MemoryCheckpointStore",
    "SqliteCheckpointStore",
    "CheckpointStoreError",
    "RunInfo",
    "CheckpointInfo",
    "Worker",
    "open_worker",
    "WorkflowClient",
}


def public_names(module: Any = blazen_trio) -> list[str]:
    return [name for name in dir(module) if not name.startswith("_")]


def exported_names(init: pathlib.Path) -> list[str]:
    """Every name an `__init__.py` binds with `from ... import x as x`, repeats included."""
    tree = ast.parse(init.read_text())
    return [
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if not (alias.asname or alias.name).startswith("_")
    ]


@pytest.mark.parametrize("package", [blazen_trio, blazen_trio.testing])
def test_every_public_name_is_exported_once(package: Any) -> None:
    names = exported_names(pathlib.Path(package.__file__))
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_the_contracts_names_are_all_exported() -> None:
    assert CONTRACT_NAMES - set(public_names()) == set()


def test_public_names_say_blazen_trio_not_a_private_module() -> None:
    for name in public_names():
        obj = getattr(blazen_trio, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == "blazen_trio", name
            assert obj.__qualname__ == name, name


def test_errors_pickle_under_their_public_name() -> None:
    data = pickle.dumps(bz.StepFailed("parse"))
    assert b"blazen_trio" in data
    assert b"_errors" not in data
    assert isinstance(pickle.loads(data), bz.StepFailed)


def test_every_public_class_and_function_is_documented() -> None:
    for name in public_names():
        obj = getattr(blazen_trio, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_only_the_public_submodules_are_reachable_by_public_names() -> None:
    modules = [name for name in public_names() if inspect.ismodule(getattr(blazen_trio, name))]
    assert set(modules) <= {"testing", "cli", "postgres"}


# Classes users configure or receive but never subclass.
FINAL_CLASSES = [
    "Workflow",
    "WorkflowHandler",
    "WorkflowResult",
    "WorkflowSnapshot",
    "EventStream",
    "Context",
    "StepRefs",
    "SessionRefRegistry",
    "RetryPolicy",
    "StepSpec",
    "RunStatistics",
    "StreamStatistics",
    "SubscriberStatistics",
    "StepCommit",
    "Usage",
    "UsageTotals",
    "PendingEvent",
    "EncodedEvent",
    "SerializedRef",
    "HistoryEntry",
    "SessionRef",
    "GraphEdge",
    "WorkflowGraph",
    "MemoryCheckpointStore",
    "SqliteCheckpointStore",
    "RunInfo",
    "CheckpointInfo",
    "JournalRecord",
    "Worker",
    "WorkerStatistics",
    "WorkflowClient",
]


def test_the_postgres_store_is_a_public_submodule() -> None:
    """Its driver is an extra, so the store lives in `blazen_trio.postgres`, named so."""
    store = blazen_trio.postgres.PostgresCheckpointStore
    assert store.__module__ == "blazen_trio.postgres"
    assert getattr(store, "__final__", False) is True
    assert inspect.getdoc(store)


@pytest.mark.parametrize("name", FINAL_CLASSES)
def test_public_classes_are_final(name: str) -> None:
    assert getattr(getattr(bz, name), "__final__", False) is True


@pytest.mark.parametrize("name", ["WorkflowHandler", "EventStream", "Context", "StepRefs"])
def test_handles_have_no_public_constructor(name: str) -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        getattr(bz, name)(None)


async def test_the_engine_still_hands_the_handles_out() -> None:
    @bz.step
    async def finish(ctx: bz.Context, ev: bz.StartEvent) -> bz.StopEvent:
        return bz.StopEvent(result=(type(ctx).__name__, type(ctx.refs).__name__))

    async with bz.Workflow("handles", [finish]).start() as handler:
        assert type(handler) is bz.WorkflowHandler
        assert type(handler.stream_events()) is bz.EventStream
        result = await handler.result()
    assert result.result == ("Context", "StepRefs")
    await trio.lowlevel.checkpoint()
