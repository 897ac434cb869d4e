"""`WorkflowClient`: submit and control runs that workers drive, from any process."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any, final

import msgspec
import trio

from ._capture import stored_outcome
from ._codec import WorkflowSnapshot, encode_event, known_event_types
from ._errors import CheckpointStoreError, RunFinished
from ._events import Event, StartEvent
from ._queue import SUBMITTED_START_KEY, RunQueue, is_run_queue
from ._records import RunStatus, UsageTotals, WorkflowResult
from ._run import new_run_id
from ._stores import FINISHED, encode_answer
from ._workflow import Workflow


@final
class WorkflowClient:
    """Submits runs for `Worker`s and controls them, from any process on any machine.

    `store` must hand runs out (`blazen_trio.postgres.PostgresCheckpointStore`). The client
    needs no workflow definition; pass `workflows=` to get results typed as their workflows
    define them (custom `StopEvent` subclasses), otherwise they come back as plain values.
    Every method is one short transaction, except `result`, which waits.
    """

    def __init__(self, store: Any, *, workflows: Iterable[Workflow] = ()) -> None:
        if not is_run_queue(store):
            raise TypeError(
                "a WorkflowClient needs a store that hands runs out (PostgresCheckpointStore), "
                f"got {store!r}"
            )
        self._queue: RunQueue = store
        self._store = store
        known = known_event_types(())
        for workflow in workflows:
            known.update(workflow._known())
        self._known = known

    def __repr__(self) -> str:
        return f"<WorkflowClient of {self._store!r}>"

    async def submit(
        self, workflow_name: str, input: Any = None, *, run_id: str | None = None
    ) -> str:
        """Store a new run of `workflow_name` for a worker to claim; returns its run id.

        Idempotent by run id: submitting again an id already submitted with the same workflow
        and input changes nothing (whatever the run has done since), so a retried submit never
        starts a run twice. `CheckpointStoreError` if the id is taken otherwise: by another
        workflow's run, by a run not submitted (started by `wf.run` in some process), or by a
        submission of another input. `input` is the start event if it is an Event, else
        `StartEvent(data=input)`; it is encoded here (`SnapshotError` if it cannot be).
        """
        if not isinstance(workflow_name, str) or not workflow_name:
            raise TypeError(f"workflow_name must be a non-empty str, got {workflow_name!r}")
        if run_id is not None and (not isinstance(run_id, str) or not run_id):
            raise TypeError(f"run_id must be a non-empty str, got {run_id!r}")
        start = input if isinstance(input, Event) else StartEvent(data=input)
        run_id = run_id or new_run_id()
        await self._queue.submit(
            WorkflowSnapshot(
                workflow_name=workflow_name,
                run_id=run_id,
                created_at=datetime.datetime.now(datetime.UTC),
                status=RunStatus.RUNNING,
                state={},
                pending_events=[],
                collect_buffers={},
                input_requests=[],
                usage=UsageTotals(),
                history=[],
                metadata={SUBMITTED_START_KEY: msgspec.to_builtins(encode_event(start))},
                session_refs={},
            )
        )
        return run_id

    async def status(self, run_id: str) -> RunStatus:
        """The run's status as its store has it."""
        return (await self._load(run_id)).status

    async def result(self, run_id: str, *, poll_interval: float = 5.0) -> WorkflowResult:
        """Wait until the run has finished; its result, or `RunFinished` carrying the error of
        a failed or aborted run. Woken by the store's news, and looks every `poll_interval`
        seconds in case news was missed."""
        while True:
            snapshot = await self._load(run_id)
            if snapshot.status in FINISHED:
                return self._outcome(snapshot)
            with trio.move_on_after(poll_interval):
                await self._queue.wait_for_news(run_id)

    async def pause(self, run_id: str) -> None:
        """Pause the run at its next commit (its worker lets go of it); `RunFinished` if over."""
        await self._queue.control(run_id, "pause")

    async def resume(self, run_id: str) -> None:
        """Make a paused run runnable again (any worker goes on with it)."""
        await self._queue.control(run_id, "resume")

    async def abort(self, run_id: str) -> None:
        """Abort the run (its worker cancels it; a run no worker holds is marked aborted)."""
        await self._queue.control(run_id, "abort")

    async def respond(self, run_id: str, request_id: str, response: Any) -> None:
        """Answer an input request; `UnknownInputRequest` if it is not outstanding.

        A run waiting only for input holds no worker: the answer makes it runnable, and
        whichever worker is free goes on with it.
        """
        await self._queue.control(
            run_id, "respond", request_id, encode_answer(request_id, response)
        )

    async def _load(self, run_id: str) -> WorkflowSnapshot:
        snapshot: WorkflowSnapshot | None = await self._store.load(run_id)
        if snapshot is None:
            raise CheckpointStoreError(f"no run {run_id!r} in {self._store!r}")
        return snapshot

    def _outcome(self, snapshot: WorkflowSnapshot) -> WorkflowResult:
        outcome = stored_outcome(snapshot, self._known)
        if isinstance(outcome, RunFinished):
            raise outcome
        return outcome
