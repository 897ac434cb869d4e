"""The control surface of a running workflow."""

from __future__ import annotations

import attrs

from ._broadcast import DEFAULT_BUFFER, EventStream, StreamStatistics
from ._errors import WorkflowError
from ._history import HistoryEntry
from ._run import Run, RunStatus, Usage, WorkflowResult


@attrs.define(eq=False)
class WorkflowHandler:
    """Returned by `Workflow.start`; observe and control one run from outside it."""

    _run: Run

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

    def stream_events(self, *, buffer: int = DEFAULT_BUFFER, replay: bool = False) -> EventStream:
        """Subscribe to the run's stream now; iterate it (optionally inside `async with`).

        A subscriber more than `buffer` events behind loses the oldest and then gets a
        `StreamLagged(missed=n)`. With `replay=True` it starts from the oldest event the run
        still keeps (`Workflow(stream_replay=N)`). The stream ends after the run ends, with the
        StopEvent last on success.
        """
        return self._run.broadcast.subscribe(buffer, replay)

    def stream_statistics(self) -> StreamStatistics:
        return self._run.broadcast.statistics()

    async def result(self) -> WorkflowResult:
        """Wait for the run to end; return its result or raise its `WorkflowError`.

        Any number of tasks may wait; each gets the same result or error.
        """
        await self._run.finished.wait()
        outcome = self._run.outcome
        if isinstance(outcome, WorkflowError):
            raise outcome.with_traceback(None)
        assert outcome is not None
        return outcome

    async def abort(self) -> None:
        """Cancel every task of the run and return once all have exited.

        Raises `RunFinished` if the run had already ended.
        """
        self._run.check_running("abort")
        self._run.abort()
        await self._run.finished.wait()
