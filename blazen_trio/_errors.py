"""The one error tree: every failure a user can act on is a `WorkflowError`."""

from __future__ import annotations

import copy
import copyreg
from collections.abc import Iterable
from typing import Any, Self


class WorkflowError(Exception):
    """Root of every error blazen_trio raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # The subclasses' __init__ signatures differ from their args: rebuild, don't re-init,
        # so errors copy and pickle faithfully (to another process, too).
        return copyreg.__newobj__, (type(self), *self.args), self.__dict__  # type: ignore[attr-defined]  # in copyreg since 2.3, missing from typeshed

    def fresh(self) -> Self:
        """A copy to raise for one more caller, keeping the cause but no caller's context."""
        clone = copy.copy(self)
        clone.__cause__ = self.__cause__
        clone.__suppress_context__ = True
        return clone


class ValidationError(WorkflowError):
    """A step or workflow definition is wrong; raised by the definer's own code.

    `problems` lists every problem found, so one run of the program shows all of them.
    """

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{len(self.problems)} problem(s):\n{lines}")


class StepFailed(WorkflowError):
    """A step raised (after its retries); the step's exception is the `__cause__`."""

    def __init__(self, step_name: str, message: str | None = None) -> None:
        self.step_name = step_name
        super().__init__(message or f"step {step_name!r} failed")


class StepTimeout(StepFailed):
    """One attempt of a step ran longer than its `timeout`; retryable like any failure."""

    def __init__(self, step_name: str, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(step_name, f"step {step_name!r} timed out after {timeout}s")


class WorkflowTimeout(WorkflowError):
    """The run's active time exceeded `Workflow(timeout=...)`."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(f"workflow timed out after {timeout}s of active time")


class NoHandler(WorkflowError):
    """A step emitted an event that no step of the workflow accepts."""

    def __init__(self, event_type: str, source_step: str | None = None) -> None:
        self.event_type = event_type
        self.source_step = source_step
        origin = f" (emitted by step {source_step!r})" if source_step else ""
        super().__init__(f"no step accepts event type {event_type!r}{origin}")


class WorkflowStalled(WorkflowError):
    """The run went idle: nothing in flight, nothing pending, no input awaited, no StopEvent."""


class WorkflowAborted(WorkflowError):
    """The run was aborted by `handler.abort()` or by leaving `Workflow.start`'s block."""


class SnapshotError(WorkflowError):
    """A snapshot could not be taken, encoded, decoded or resumed."""


class SessionRefError(WorkflowError):
    """A session reference is unknown, dropped, or over the registry's capacity."""


class SessionRefsNotSerializable(SessionRefError):
    """Live session refs cannot go into a snapshot under the workflow's pause policy.

    Serializing them failed, or the policy (`HARD_ERROR`) refused: `keys` names them either way.
    """

    def __init__(self, keys: Iterable[str], message: str | None = None) -> None:
        self.keys: tuple[str, ...] = tuple(keys)
        listed = ", ".join(self.keys)
        super().__init__(
            f"{message}: {listed}" if message else f"session refs cannot be serialized: {listed}"
        )


class UnknownInputRequest(WorkflowError):
    """`respond_to_input` named a request id that is not outstanding."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(f"no outstanding input request with id {request_id!r}")


class InputUnanswerable(WorkflowError):
    """A run started by `Workflow.run()` asked for input that no one can give.

    Without an `input_handler` only a `WorkflowHandler` can answer, and `run()` hands none
    out, so the run fails when the request is made instead of waiting forever.
    """

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(
            f"input request {request_id!r} cannot be answered: the run was started with "
            "wf.run() and the workflow has no input_handler. Start it with "
            "`async with wf.start(...) as handler` and answer with "
            "`await handler.respond_to_input(request_id, response)`, or pass "
            "Workflow(input_handler=...) to answer inline"
        )


class RunFinished(WorkflowError):
    """A control call reached a run that has already finished."""


class CheckpointStoreError(WorkflowError):
    """A checkpoint store cannot be read or written: corrupt, foreign, newer, unreachable."""


class RunSuspended(WorkflowError):
    """This process let go of a durable run that is kept, unfinished, in its store.

    Either it waits only for input (started by `Workflow.run`, nobody here can answer): answer
    with `await store.respond(run_id, request_id, response)` from any process, then
    `await workflow.recover(store)` continues it. Or it was paused when its `Workflow.start`
    block was left: `workflow.run(resume=await store.load(run_id))` goes on with it.
    """

    def __init__(self, run_id: str, request_ids: list[str]) -> None:
        self.run_id = run_id
        self.request_ids = tuple(request_ids)
        if self.request_ids:
            super().__init__(
                f"run {run_id} is suspended, waiting for input request(s) "
                f"{', '.join(map(repr, self.request_ids))}; answer with store.respond(...) "
                "and continue it with workflow.recover(store)"
            )
        else:
            super().__init__(f"run {run_id} is paused in its store; resume it from there")


class RunHeld(WorkflowError):
    """Recovery left this run alone: another process holds it under a live lease.

    Caused by a `Worker` (or another recovery) driving the run right now, over a store that
    hands runs out (PostgreSQL); that holder goes on with it, so nothing is wrong. Recover it
    later if its holder dies: once the lease runs out, a worker or a recovery takes it.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(
            f"run {run_id} was left alone: a worker (or another recovery) holds it under a "
            "live lease and goes on with it"
        )


class RunCrashed(WorkflowError):
    """Something escaped the run's own error handling; the original is the `__cause__`.

    An engine bug, a warning turned into an error by `-W error` inside the engine, or an
    exception raised by an `on_commit` observer: the run fails with this instead of letting a
    bare exception group out of its nursery.
    """
