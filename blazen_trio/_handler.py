"""The control surface of a running workflow."""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, final

import attrs

from ._broadcast import DEFAULT_BUFFER, EventStream, StreamStatistics
from ._codec import WorkflowSnapshot
from ._control import Pause, RespondToInput, Resume, TakeSnapshot
from ._events import InputRequestEvent
from ._records import HistoryEntry, RunStatus, Usage, WorkflowResult
from ._run import Run
from ._util import NoPublicConstructor


@final
@attrs.frozen
class RunStatistics:
    """A run's numbers at one moment (`WorkflowHandler.statistics()`)."""

    status: RunStatus
    steps_in_flight: int
    """Step invocations running now."""
    invocations_queued: int
    """Invocations waiting for their step's `max_concurrency`, or for a paused run to resume."""
    input_requests_outstanding: int
    commits: int
    """Step invocations committed so far in this process."""
    active_time: float
    """Seconds counted toward `Workflow(timeout=)`: not paused, not only waiting for input."""


@final
class WorkflowHandler(metaclass=NoPublicConstructor):
    """Handed out by `Workflow.start`; observe and control one run from outside it."""

    __slots__ = ("_run",)

    def __init__(self, run: Run) -> None:
        self._run = run

    def __repr__(self) -> str:
        return f"<WorkflowHandler run_id={self._run.run_id!r} status={self._run.status!r}>"

    @property
    def run_id(self) -> str:
        return self._run.run_id

    @property
    def status(self) -> RunStatus:
        return self._run.status

    @property
    def usage(self) -> Usage:
        """Live token totals; exact whatever stream subscribers do."""
        return self._run.usage

    @property
    def cost_usd(self) -> float:
        return self._run.cost_usd

    @property
    def history(self) -> tuple[HistoryEntry, ...] | None:
        """The run's history so far (None unless `Workflow(history=True)`)."""
        return self._run.history_view

    @property
    def state(self) -> Mapping[str, Any]:
        """A live, read-only view of the run's state, as steps see it.

        It includes the writes of steps still running (they are taken back if those steps do
        not complete); after the run ends it is the final state.
        """
        return types.MappingProxyType(self._run.state.values)

    async def wait_for_status(self, *statuses: RunStatus) -> RunStatus:
        """Wait until the run's status is one of `statuses` (or the run ended); the status.

        `await handler.wait_for_status(RunStatus.WAITING_FOR_INPUT)` wakes once only answers
        can move the run, say.
        """
        wanted = frozenset(RunStatus(status) for status in statuses)
        return await self._run.wait_for_status(wanted)

    def statistics(self) -> RunStatistics:
        """The run's numbers now (in flight, queued, outstanding requests, commits, time)."""
        run = self._run
        return RunStatistics(
            status=run.status,
            steps_in_flight=len(run.in_flight),
            invocations_queued=sum(len(s.waiting()) for s in run.slots),
            input_requests_outstanding=len(run.input_requests),
            commits=run.commits,
            active_time=run.clock.used,
        )

    def stream_events(self, *, buffer: int = DEFAULT_BUFFER, replay: bool = False) -> EventStream:
        """Subscribe to the run's stream now; iterate it (optionally inside `async with`).

        A subscriber more than `buffer` events behind loses the oldest and then gets a
        `StreamLagged(missed=n)`. With `replay=True` it starts from the oldest event the run
        still keeps (`Workflow(stream_replay=N)`). The stream ends after the run ends, with the
        StopEvent last on success.
        """
        return self._run.broadcast.subscribe(buffer, replay)

    def stream_statistics(self) -> StreamStatistics:
        """The stream's numbers for all subscribers (each has its own `statistics()`)."""
        return self._run.broadcast.statistics()

    async def result(self) -> WorkflowResult:
        """Wait for the run to end; return its result or raise its `WorkflowError`.

        Any number of tasks may wait; each gets the same result or error.
        """
        await self._run.wait_exited()
        return self._run.unwrap()

    @property
    def pending_input_requests(self) -> tuple[InputRequestEvent, ...]:
        """Input requests not answered yet, oldest first."""
        requests = (envelope.event for envelope in self._run.input_requests.values())
        return tuple(r for r in requests if isinstance(r, InputRequestEvent))

    async def pause(self, *, cancel_in_flight: bool = False) -> None:
        """Stop dispatching and return once no step is running.

        By default in-flight steps finish and their outputs wait as pending events. With
        `cancel_in_flight=True` they are cancelled, their effects undone, and their input
        events wait to be re-run. Paused time does not count toward the workflow timeout.
        Raises `RunFinished` if the run ends (or is resumed) before it is quiescent.
        """
        await self._run.command(Pause(cancel_in_flight))

    async def resume(self) -> None:
        """Continue a paused run in place; does nothing to a run that is not paused."""
        await self._run.command(Resume())

    async def snapshot(self) -> WorkflowSnapshot:
        """Everything needed to resume the run elsewhere.

        Exact when paused; on a running run steps in flight are recorded as pending work and
        run again on resume (at-least-once). Raises `SnapshotError` (or
        `SessionRefsNotSerializable`) when a value or a live ref cannot be serialized, and
        whatever else taking it raised (a `RuntimeWarning` made an error by `-W error`, say).
        """
        snapshot: WorkflowSnapshot = await self._run.command(TakeSnapshot())
        return snapshot

    async def respond_to_input(self, request_id: str, response: object) -> None:
        """Answer an outstanding input request; its `InputResponseEvent` is routed.

        Raises `UnknownInputRequest` (and changes nothing) for an id that is not outstanding.
        """
        await self._run.command(RespondToInput(request_id, response))

    async def abort(self) -> None:
        """Cancel every task of the run and return once all have exited.

        Raises `RunFinished` if the run had already ended.
        """
        self._run.check_running("abort")
        self._run.abort()
        await self._run.wait_exited()
